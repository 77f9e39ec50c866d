import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

final class IOMMUQueueErrorTests: XCTestCase {
    typealias R = DMARRegister
    static let good = InvalidationDescriptor.pasidCache(.global).encode()
    static var bad: RawDescriptor {
        var d = good
        d.qw0 |= 1 << 8        // reserved in a PASID-cache descriptor
        return d
    }

    func testHardwareStopsOnARefusedDescriptorUntilSoftwareReplacesItAndClearsIQE() throws {
        try withIOMMU { allocator, iommu in
            writeRingSlot(iommu, allocator, 0, Self.good)
            writeRingSlot(iommu, allocator, 1, Self.bad)
            writeRingSlot(iommu, allocator, 2, Self.good)
            try iommu.write(.iqt, 3 << 5)
            iommu.hardware.progress.wait { iommu.read(.fsts) & R.invalidationQueueError != 0 }
            XCTAssertEqual(iommu.read(.iqh), 1 << 5, "IQH stops on the refused descriptor")
            XCTAssertEqual(iommu.read(.iqercd) & 0xF, UInt64(IQEReason.reservedField.rawValue))
            XCTAssertEqual(iommu.errorRecord.iqeIndex, 1)
            XCTAssertEqual(iommu.errorRecord.iqeDecodeError?.bits, 1 << 8)
            XCTAssertEqual(iommu.counters.snapshot().executedByType[6], 1)

            writeRingSlot(iommu, allocator, 1, Self.good)
            try iommu.write(.fsts, R.invalidationQueueError)
            iommu.hardware.progress.wait { iommu.read(.iqh) == iommu.read(.iqt) }
            XCTAssertEqual(iommu.read(.fsts), 0)
            XCTAssertEqual(iommu.counters.snapshot().executedByType[6], 3, "resumed at the replaced descriptor")
            // Hand-driving bypassed the driver's bookkeeping: restart the queue.
            iommu.disableQueuedInvalidation()
            iommu.enableQueuedInvalidation()
            try iommu.qiSubmitSync([Self.good])
        }
    }

    func testDriverReplacesItsRefusedDescriptorAndNamesIt() throws {
        try withIOMMU { _, iommu in
            XCTAssertThrowsError(try iommu.qiSubmitSync([Self.good, Self.bad, Self.good])) {
                guard case .invalidDescriptor(let position, let ring, let reason, let injected, let detail) = $0 as? QIError else {
                    return XCTFail("\($0)")
                }
                XCTAssertEqual(position, 1)
                XCTAssertEqual(ring, 1)
                XCTAssertEqual(reason, .reservedField)
                XCTAssertFalse(injected)
                XCTAssertEqual(detail?.quadword, 0)
                XCTAssertEqual(detail?.bits, 1 << 8)
            }
            let stats = iommu.counters.snapshot()
            XCTAssertEqual(stats.executedByType[6], 2, "the rest of the batch ran")
            XCTAssertEqual(stats.iqeRaised, 1)
            XCTAssertEqual(stats.iqeHandled, 1)
            XCTAssertEqual(iommu.read(.fsts), 0)
            XCTAssertEqual(iommu.read(.iqh), iommu.read(.iqt))
            XCTAssertEqual(iommu.freeSlots, iommu.queueLength)
            try iommu.qiSubmitSync([Self.good])
        }
    }

    func testUnknownTypesAreRefused() throws {
        try withIOMMU { _, iommu in
            for type: UInt64 in [0, 9, 15] {
                XCTAssertThrowsError(try iommu.qiSubmitSync([RawDescriptor(qw0: type)])) {
                    guard case .invalidDescriptor(0, _, .invalidType, false, _) = $0 as? QIError else { return XCTFail("\($0)") }
                }
            }
            XCTAssertEqual(iommu.counters.snapshot().iqeHandled, 3)
            try iommu.qiSubmitSync([Self.good])
        }
    }

    func testScalableModeDescriptorInA128BitQueueIsRefused() throws {
        var p = IntelIOMMU.Parameters()
        p.descriptorWidth = .bits128
        try withIOMMU(p) { _, iommu in
            let piotlb = InvalidationDescriptor.pasidIOTLB(PASIDIOTLBInvalidation(did: 1, pasid: 1, granularity: .pasid))
            XCTAssertThrowsError(try iommu.qiSubmitSync([piotlb])) {
                guard case .invalidDescriptor(0, _, .invalidType, false, _) = $0 as? QIError else { return XCTFail("\($0)") }
            }
            XCTAssertEqual(iommu.read(.iqercd) & 0xF, 3, "IQEI 3: not a type of a legacy-mode queue")
            try iommu.qiSubmitSync([.iotlb(IOTLBInvalidation(.global))])
        }
    }

    func testATailBeyondTheQueueOrMisalignedIsAnIQEUntilSoftwareFixesIt() throws {
        try withIOMMU { _, iommu in
            try iommu.write(.iqt, UInt64(iommu.queueLength) << 5)
            iommu.hardware.progress.wait { iommu.read(.fsts) & R.invalidationQueueError != 0 }
            XCTAssertEqual(iommu.errorRecord.iqeReason, .invalidTail)
            XCTAssertEqual(iommu.read(.iqh), 0)
            try iommu.write(.iqt, 0)
            try iommu.write(.fsts, R.invalidationQueueError)
            try iommu.qiSubmitSync([Self.good])

            let tail = iommu.read(.iqt)
            try iommu.write(.iqt, tail | 0x10)        // half a 256-bit slot
            iommu.hardware.progress.wait { iommu.read(.fsts) & R.invalidationQueueError != 0 }
            XCTAssertEqual(iommu.errorRecord.iqeReason, .tailMisaligned)
            try iommu.write(.iqt, tail)
            try iommu.write(.fsts, R.invalidationQueueError)
            try iommu.qiSubmitSync([Self.good])
            XCTAssertEqual(iommu.counters.snapshot().iqeRaised, 2)
        }
    }

    func testInjectedIQEHitsTheChosenDescriptor() throws {
        try withIOMMU { _, iommu in
            iommu.faultInjection.injectIQE(skipping: 1)
            XCTAssertThrowsError(try iommu.qiSubmitSync([Self.good, Self.good, Self.good])) {
                guard case .invalidDescriptor(1, _, .reservedField, true, nil) = $0 as? QIError else { return XCTFail("\($0)") }
            }
            XCTAssertEqual(iommu.counters.snapshot().executedByType[6], 2)
            XCTAssertEqual(iommu.faultInjection.injected.iqe, 1)
            try iommu.qiSubmitSync([Self.good])
        }
    }

    static func deviceTLB(_ sid: UInt16) -> InvalidationDescriptor {
        .pasidDeviceTLB(PASIDDeviceTLBInvalidation(sid: sid, pasid: 1, range: DeviceTLBRange(base: 0, sizeOrder: 52)))
    }

    func testTimeOutAbortsThePendingWaitAndTheDriverResubmits() throws {
        try withIOMMU { _, iommu in
            _ = try iommu.attachDevice(sid: 0x20, did: 1, ats: true)
            iommu.faultInjection.injectITE()
            try iommu.qiSubmitSync([Self.deviceTLB(0x20), .pasidCache(.global)])
            let stats = iommu.counters.snapshot()
            XCTAssertEqual(stats.iteRaised, 1)
            XCTAssertEqual(stats.waitsAborted, 1)
            XCTAssertEqual(stats.iteHandled, 1)
            XCTAssertEqual(stats.qiRetries, 1)
            XCTAssertEqual(stats.qiSubmissions, 2)
            XCTAssertEqual(stats.statusWrites, 1, "the aborted wait wrote no status")
            XCTAssertEqual(stats.executedByType[6], 2, "descriptors after the timed-out one still ran")
            XCTAssertEqual(iommu.errorRecord.iteSID, 0x20)
            XCTAssertEqual(iommu.errorRecord.iteIndex, 0)
            XCTAssertEqual(iommu.read(.fsts), 0)
            XCTAssertEqual(iommu.freeSlots, iommu.queueLength)
        }
    }

    func testAGoneDeviceIsATimeOutWithoutResubmission() throws {
        try withIOMMU { _, iommu in
            let device = try iommu.attachDevice(sid: 0x20, did: 1, ats: true)
            device.markGone()
            XCTAssertThrowsError(try iommu.qiSubmitSync([Self.deviceTLB(0x20)])) {
                XCTAssertEqual($0 as? QIError, .deviceTLBTimeout(sid: 0x20, attempts: 0))
            }
            // No device at all behind that source ID: the same.
            XCTAssertThrowsError(try iommu.qiSubmitSync([Self.deviceTLB(0x31)])) {
                XCTAssertEqual($0 as? QIError, .deviceTLBTimeout(sid: 0x31, attempts: 0))
            }
            let stats = iommu.counters.snapshot()
            XCTAssertEqual(stats.qiRetries, 0)
            XCTAssertEqual(stats.qiTimeouts, 2)
            XCTAssertEqual(iommu.read(.fsts), 0)
            try iommu.qiSubmitSync([Self.good])
        }
    }

    func testCompletionErrorIsReportedToItsSubmitterAfterTheWait() throws {
        try withIOMMU { _, iommu in
            _ = try iommu.attachDevice(sid: 0x20, did: 1, ats: true)
            iommu.faultInjection.injectICE()
            XCTAssertThrowsError(try iommu.qiSubmitSync([.pasidCache(.global), Self.deviceTLB(0x20)])) {
                XCTAssertEqual($0 as? QIError, .completionError(sid: 0x20))
            }
            let stats = iommu.counters.snapshot()
            XCTAssertEqual(stats.iceRaised, 1)
            XCTAssertEqual(stats.iceHandled, 1)
            XCTAssertEqual(stats.statusWrites, 1, "ICE does not abort the wait")
            XCTAssertEqual(iommu.errorRecord.iceIndex, 1)
            XCTAssertEqual(iommu.read(.fsts), 0)
            try iommu.qiSubmitSync([Self.deviceTLB(0x20)])
        }
    }

    /// armed counts what the hardware has yet to act on: a stress run
    /// flushes until it is 0 before its teardown's unbinds.
    func testArmedCountsFaultsUntilTheHardwareActsOnThem() throws {
        try withIOMMU { _, iommu in
            _ = try iommu.attachDevice(sid: 0x20, did: 1, ats: true)
            iommu.faultInjection.injectIQE(skipping: 1)
            iommu.faultInjection.injectITE()
            iommu.faultInjection.injectICE(count: 2)
            XCTAssertEqual(iommu.faultInjection.armed, 4)
            try iommu.qiSubmitSync([Self.good])
            XCTAssertEqual(iommu.faultInjection.armed, 4, "one descriptor skipped, none refused")
            XCTAssertThrowsError(try iommu.qiSubmitSync([Self.good])) {
                guard case .invalidDescriptor(0, _, _, true, _) = $0 as? QIError else { return XCTFail("\($0)") }
            }
            XCTAssertEqual(iommu.faultInjection.armed, 3)
            // The ITE, then an ICE on the driver's resubmission; then the other ICE.
            for left in [1, 0] {
                XCTAssertThrowsError(try iommu.qiSubmitSync([Self.deviceTLB(0x20)])) {
                    XCTAssertEqual($0 as? QIError, .completionError(sid: 0x20))
                }
                XCTAssertEqual(iommu.faultInjection.armed, left)
            }
            XCTAssertEqual(iommu.counters.snapshot().qiRetries, 1)
        }
    }

    func testOversizedSubmissionIsRefusedBeforeTouchingTheQueue() throws {
        try withIOMMU { _, iommu in
            let many = [RawDescriptor](repeating: Self.good, count: iommu.queueLength - 1)
            XCTAssertThrowsError(try iommu.qiSubmitSync(many)) {
                XCTAssertEqual($0 as? QIError, .tooManyDescriptors(count: iommu.queueLength - 1, max: iommu.queueLength - 2))
            }
            try iommu.qiSubmitSync(Array(many.dropFirst()))
        }
    }
}
