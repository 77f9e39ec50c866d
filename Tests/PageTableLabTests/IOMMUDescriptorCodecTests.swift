import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

final class IOMMUDescriptorCodecTests: XCTestCase {
    /// One descriptor of every type and granularity, with fields that use
    /// every bit of their width.
    static let samples: [InvalidationDescriptor] = [
        .contextCache(.global),
        .contextCache(.domain(did: 0xFFFF)),
        .contextCache(.device(did: 7, sid: 0xABCD, functionMask: 3)),
        .iotlb(IOTLBInvalidation(.global)),
        .iotlb(IOTLBInvalidation(.domain(did: 42), drainReads: true, drainWrites: true)),
        .iotlb(IOTLBInvalidation(.page(did: 3, address: 0xFFFF_FFFF_FFFF_F000, addressMask: 18, invalidationHint: true))),
        .deviceTLB(DeviceTLBInvalidation(sid: 0x1234, pfsid: 0xFFFF, maxInvalidationsPending: 31,
                                         range: DeviceTLBRange(base: 0x20_0000, sizeOrder: 9))),
        .deviceTLB(DeviceTLBInvalidation(sid: 1, range: DeviceTLBRange(address: 0x5000, sizeBit: false))),
        .interruptEntryCache(.global),
        .interruptEntryCache(.selective(index: 0xFFFF, indexMask: 31)),
        .wait(InvalidationWait()),
        .wait(InvalidationWait(statusWrite: .init(address: 0xDEAD_BEEC, data: 0xFFFF_FFFF), interrupt: true, fence: true)),
        .pasidIOTLB(PASIDIOTLBInvalidation(did: 9, pasid: 0xF_FFFF, granularity: .pasid)),
        .pasidIOTLB(PASIDIOTLBInvalidation(did: 9, pasid: 5, granularity: .page(
            address: 0xFFFF_8000_0000_0000, addressMask: 0, invalidationHint: false))),
        .pasidCache(.domain(did: 11)),
        .pasidCache(.pasid(did: 11, pasid: 0xF_FFFF)),
        .pasidCache(.global),
        .pasidDeviceTLB(PASIDDeviceTLBInvalidation(sid: 0xFFFF, pfsid: 0xFFFF, pasid: 0xF_FFFF, maxInvalidationsPending: 31,
                                                   allPASIDs: true, range: DeviceTLBRange(base: 0, sizeOrder: 52))),
    ]

    func testEveryTypeRoundTripsThroughTheEncoding() {
        for d in Self.samples {
            let raw = d.encode()
            XCTAssertEqual(raw.type, d.typeCode, "\(d)")
            XCTAssertEqual(raw.qw2 | raw.qw3, 0, "\(d)")
            XCTAssertEqual(InvalidationDescriptor.decode(raw, width: .bits256), .success(d), "\(d)")
        }
        XCTAssertEqual(Set(Self.samples.map(\.typeCode)), Set(1...8))
    }

    func testDeviceTLBSizeEncodingDecodesToTheRangeItEncodes() {
        for order in 0...52 {
            let base: UInt64 = order >= 52 ? 0 : UInt64(0xABCD_E000_0000_0000) & ~((4096 << UInt64(order)) - 1)
            let span = DeviceTLBRange(base: base, sizeOrder: order).span
            XCTAssertEqual(span.base, base, "order \(order)")
            XCTAssertEqual(span.bytes, order >= 52 ? nil : 4096 << UInt64(order), "order \(order)")
        }
    }

    func testEachReservedBitIsRefused() {
        for d in Self.samples {
            let raw = d.encode()
            let (r0, r1) = InvalidationDescriptor.reservedBits[Int(d.typeCode)]
            for bit in 0..<64 {
                for (q, mask) in [(0, r0), (1, r1)] where mask >> UInt64(bit) & 1 == 1 {
                    var bad = raw
                    if q == 0 { bad.qw0 |= 1 << UInt64(bit) } else { bad.qw1 |= 1 << UInt64(bit) }
                    guard case .failure(let e) = InvalidationDescriptor.decode(bad, width: .bits256) else {
                        XCTFail("\(d): reserved bit \(bit) of qw\(q) accepted")
                        continue
                    }
                    XCTAssertEqual(e.reason, .reservedField)
                    XCTAssertEqual(e.quadword, q)
                    XCTAssertEqual(e.bits, 1 << UInt64(bit))
                }
            }
            var high = raw
            high.qw3 = 1
            XCTAssertEqual(try? InvalidationDescriptor.decode(high, width: .bits256).failureReason, .reservedField)
            // In a 128-bit queue qw2/qw3 are not part of the descriptor.
            if !InvalidationDescriptor.needs256Bit(typeCode: d.typeCode) {
                XCTAssertEqual(InvalidationDescriptor.decode(high, width: .bits128), .success(d))
            }
        }
    }

    func testReservedGranularitiesAndOversizedMasksAreRefused() {
        let cases: [RawDescriptor] = [
            RawDescriptor(qw0: 1),                         // context-cache G=0
            RawDescriptor(qw0: 2),                         // IOTLB G=0
            RawDescriptor(qw0: 6 | 1 << 4),                // PASID-IOTLB G=1
            RawDescriptor(qw0: 7 | 2 << 4),                // PASID-cache G=2
        ]
        for raw in cases {
            XCTAssertEqual(try? InvalidationDescriptor.decode(raw, width: .bits256).failureReason, .reservedField, "\(raw)")
        }
        let wideMask = RawDescriptor(qw0: 2 | 3 << 4, qw1: 19)
        XCTAssertEqual(try? InvalidationDescriptor.decode(wideMask, width: .bits256, maxAddressMask: 18).failureReason,
                       .reservedField)
        XCTAssertNotNil(try? InvalidationDescriptor.decode(wideMask, width: .bits256, maxAddressMask: 19).get())
    }

    func testUnknownTypesAreRefused() {
        for type: UInt64 in [0, 9, 10, 15] {
            XCTAssertEqual(try? InvalidationDescriptor.decode(RawDescriptor(qw0: type), width: .bits256).failureReason,
                           .invalidType, "type \(type)")
        }
        // type[6:4] lives in bits 11:9: a PASID-IOTLB with bit 9 set is type 0x16.
        let high = RawDescriptor(qw0: 6 | 2 << 4 | 1 << 9)
        XCTAssertEqual(high.type, 0x16)
        XCTAssertEqual(try? InvalidationDescriptor.decode(high, width: .bits256).failureReason, .invalidType)
    }

    func testScalableModeTypesNeedA256BitQueue() {
        for d in Self.samples {
            let result = InvalidationDescriptor.decode(d.encode(), width: .bits128)
            if (6...8).contains(d.typeCode) {
                XCTAssertEqual(try? result.failureReason, .invalidType, "\(d)")
            } else {
                XCTAssertEqual(result, .success(d), "\(d)")
            }
        }
    }

    func testDecodingBytesIsLittleEndianAndShortInputIsAnError() {
        let raw = Self.samples[5].encode()
        var bytes: [UInt8] = []
        for q in [raw.qw0, raw.qw1, raw.qw2, raw.qw3] {
            for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: q >> UInt64(i * 8))) }
        }
        XCTAssertEqual(InvalidationDescriptor.decode(bytes: bytes, width: .bits256), .success(Self.samples[5]))
        XCTAssertEqual(InvalidationDescriptor.decode(bytes: bytes[0..<16], width: .bits128), .success(Self.samples[5]))
        XCTAssertEqual(try? InvalidationDescriptor.decode(bytes: bytes[0..<31], width: .bits256).failureReason,
                       .fetchError)
        XCTAssertEqual(try? InvalidationDescriptor.decode(bytes: [], width: .bits128).failureReason, .fetchError)
    }
}

extension Result where Failure == DescriptorDecodeError {
    /// The IQE reason of a refused descriptor; throws if it was accepted.
    var failureReason: IQEReason {
        get throws {
            switch self {
            case .success(let v): throw NSError(domain: "accepted: \(v)", code: 0)
            case .failure(let e): return e.reason
            }
        }
    }
}
