import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

final class IOMMUSVAInvalidationTests: XCTestCase {
    func testCalculatePSIAlignedAddressIsTheSmallestAlignedBlockCoveringTheRange() {
        func psi(_ start: UInt64, _ last: UInt64) -> (UInt64, UInt8) {
            let r = IntelIOMMU.calculatePSIAlignedAddress(start: start, last: last)
            XCTAssertEqual(r.pages, 1 << UInt64(r.mask))
            return (r.address, r.mask)
        }
        XCTAssertTrue(psi(0x1000, 0x1FFF) == (0x1000, 0))
        XCTAssertTrue(psi(0x1000, 0x2FFF) == (0, 2))
        XCTAssertTrue(psi(0x20_0000, 0x3F_FFFF) == (0x20_0000, 9))
        // Two pages straddling a 2 MiB boundary need a 4 MiB block.
        XCTAssertTrue(psi(0x1F_F000, 0x20_0FFF) == (0, 10))
        XCTAssertTrue(psi(0, .max) == (0, 52))
        // The kernel half from PAGE_OFFSET, as the 6.19 KVA flush asks:
        // 4-level, the upper 2^47 bytes; 5-level, the upper 2^56.
        XCTAssertTrue(psi(KernelLayout.fourLevel.pageOffset, .max - 1) == (0xFFFF_8000_0000_0000, 35))
        XCTAssertTrue(psi(KernelLayout.fiveLevel.pageOffset, .max - 1) == (0xFF00_0000_0000_0000, 44))

        var rng = IOMMUDecoderFuzzTests.SplitMix64(state: 7)
        for _ in 0..<2000 {
            let a = rng.next() >> UInt64(rng.upTo(63)), b = rng.next() >> UInt64(rng.upTo(63))
            let (first, last) = (min(a, b), max(a, b))
            let (address, mask) = psi(first, last)
            let block = AddressRange(address: address, addressMask: mask)
            XCTAssertTrue(block.first <= first && last <= block.last, "block covers the range")
            XCTAssertEqual(block.first, address)
            if mask > 0 {
                let smaller = AddressRange(address: first, addressMask: mask - 1)
                XCTAssertFalse(smaller.first <= first && last <= smaller.last, "no smaller block does")
            }
        }
    }

    /// cache_tag_flush_range: one PASID-IOTLB descriptor and one PASID
    /// device-TLB descriptor per ATS device, whether or not the device is
    /// still there (a cache tag lives until detach); a gone device's
    /// invalidation times out, and that is -ETIMEDOUT after the IOMMU's own
    /// flush ran.
    func testARangeIsOnePASIDIOTLBDescriptorPlusOnePerATSDevice() throws {
        try withIOMMU { allocator, iommu in
            let ats = try iommu.attachDevice(sid: 1, did: 4, ats: true)
            let plain = try iommu.attachDevice(sid: 2, did: 4, ats: false)
            try iommu.bindPASID(9, root: 0, did: 4, devices: [ats, plain])
            try iommu.invalidateSecondaryTLBs(pasid: 9, start: 0x40_3000, end: 0x40_5000, ih: true)

            XCTAssertEqual(readRingSlot(iommu, allocator, 0), .pasidIOTLB(PASIDIOTLBInvalidation(
                did: 4, pasid: 9, granularity: .page(address: 0x40_0000, addressMask: 3, invalidationHint: true))))
            XCTAssertEqual(readRingSlot(iommu, allocator, 1), .pasidDeviceTLB(PASIDDeviceTLBInvalidation(
                sid: 1, pasid: 9, range: DeviceTLBRange(base: 0x40_0000, sizeOrder: 3))))
            if case .wait = readRingSlot(iommu, allocator, 2) {} else { XCTFail("one wait after the two") }
            var s = iommu.counters.snapshot()
            XCTAssertEqual([s.qiSubmissions, s.qiDescriptors, s.iotlbInvalidations], [1, 2, 1])

            ats.markGone()
            XCTAssertThrowsError(try iommu.invalidateSecondaryTLBs(pasid: 9, start: 0x40_3000, end: 0x40_5000, ih: false)) {
                XCTAssertEqual($0 as? IOMMUError, .queue(.deviceTLBTimeout(sid: 1, attempts: 0)))
            }
            s = iommu.counters.snapshot()
            XCTAssertEqual([s.qiSubmissions, s.qiDescriptors, s.iotlbInvalidations], [2, 4, 2])
        }
    }

    /// First-stage flushes know no MAMV: any range is one page-selective
    /// flush with the mask it needs; only [0, max] is PASID-selective.
    func testOnlyTheWholeSpaceIsPASIDSelective() throws {
        var p = IntelIOMMU.Parameters()
        p.maxAddressMask = 18
        try withIOMMU(p) { allocator, iommu in
            try iommu.bindPASID(9, root: 0, did: 4)
            try iommu.invalidateSecondaryTLBs(pasid: 9, start: 0xFFFF_8000_0000_0000, end: .max, ih: false)
            XCTAssertEqual(readRingSlot(iommu, allocator, 0), .pasidIOTLB(PASIDIOTLBInvalidation(
                did: 4, pasid: 9, granularity: .page(address: 0xFFFF_8000_0000_0000, addressMask: 35, invalidationHint: false))))
            try iommu.invalidateSecondaryTLBs(pasid: 9, start: 0, end: 0x8000_0000, ih: false)
            XCTAssertEqual(readRingSlot(iommu, allocator, 2), .pasidIOTLB(PASIDIOTLBInvalidation(
                did: 4, pasid: 9, granularity: .page(address: 0, addressMask: 19, invalidationHint: false))))
            try iommu.invalidateSecondaryTLBs(pasid: 9, start: 0, end: .max, ih: false)
            XCTAssertEqual(readRingSlot(iommu, allocator, 4),
                           .pasidIOTLB(PASIDIOTLBInvalidation(did: 4, pasid: 9, granularity: .pasid)))
        }
    }

    func testBadRangesAndUnboundPASIDsAreErrors() throws {
        try withIOMMU { _, iommu in
            XCTAssertThrowsError(try iommu.invalidateSecondaryTLBs(pasid: 3, start: 0, end: 4096, ih: false)) {
                XCTAssertEqual($0 as? IOMMUError, .pasidNotBound(3))
            }
            try iommu.bindPASID(3, root: 0, did: 1)
            XCTAssertThrowsError(try iommu.invalidateSecondaryTLBs(pasid: 3, start: 4096, end: 4096, ih: false)) {
                XCTAssertEqual($0 as? IOMMUError, .emptyRange(start: 4096, end: 4096))
            }
            XCTAssertEqual(iommu.counters.snapshot().qiSubmissions, 0)
        }
    }

    func testABatchSharesOneWaitBetweenSixteenDescriptors() throws {
        try withIOMMU { _, iommu in
            for pasid in 1...20 { try iommu.bindPASID(UInt32(pasid), root: 0, did: 1) }
            var batch = QIBatch()
            for pasid in iommu.boundPASIDs {
                try iommu.cacheTagFlushRange(pasid: pasid, start: 0, last: .max, ih: false, into: &batch)
            }
            XCTAssertEqual(batch.count, 4, "16 went out when the batch filled")
            try batch.flush(to: iommu)
            XCTAssertEqual(batch.count, 0)
            try batch.flush(to: iommu)       // empty: nothing submitted
            let s = iommu.counters.snapshot()
            XCTAssertEqual([s.qiSubmissions, s.qiDescriptors, s.executedByType[4], s.executedByType[5]], [2, 20, 2, 20])
        }
    }

    /// sva_notifier_ih=leaf-only: the notifier's flushes carry IH=1 (the
    /// unsafe switch another test relies on to make an SVA test fail).
    func testTheLeafOnlySwitchSetsTheHint() throws {
        var p = IntelIOMMU.Parameters()
        p.notifierHint = .leafOnly
        try withLab { allocator in
            let iommu = try IntelIOMMU(allocator: allocator, parameters: p)
            defer { iommu.shutdown() }
            let sva = SVA(iommu: iommu)
            let mm = try MM(allocator: allocator)
            let bond = try sva.bind(mm, pasid: 4, did: 1)
            bond.invalidateSecondaryTLBs(mm: mm, start: 0x1000, end: 0x2000)
            guard case .pasidIOTLB(let inv) = readRingSlot(iommu, allocator, 0),
                  case .page(_, _, let ih) = inv.granularity else { return XCTFail("no page-selective flush") }
            XCTAssertTrue(ih)
            try sva.unbind(bond)
            mm.exit()
        }
    }
}
