import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// The places where the lab's VT-d unit and its default driver disagreed
/// with the VT-d specification or with Linux (issue 16), one test each.
final class IOMMUSpecConformanceTests: XCTestCase {
    static let good = InvalidationDescriptor.pasidCache(.global).encode()

    /// Context-cache, device-selective: FM masks the function number from
    /// its top bit down (FM=1: bit 2; FM=2: bits 2:1; FM=3: bits 2:0).
    func testContextCacheFunctionMaskMasksFunctionBitsFromTheTop() throws {
        try withIOMMU { _, iommu in
            let sids: [UInt16] = [0x10, 0x11, 0x12, 0x14, 0x17, 0x18]
            let devices = try sids.map { try iommu.attachDevice(sid: $0, did: 5, ats: false) }
            func cached() -> Set<UInt16> { iommu.remapping.caches.withLock { Set($0.contexts.keys) } }
            let expected: [UInt8: Set<UInt16>] = [
                0: [0x10], 1: [0x10, 0x14], 2: [0x10, 0x12, 0x14], 3: [0x10, 0x11, 0x12, 0x14, 0x17],
            ]
            for fm in UInt8(0)...3 {
                for d in devices { _ = iommu.translate(DMARequest(pasid: 1, address: 0), device: d) }
                XCTAssertEqual(cached(), Set(sids))
                try iommu.qiSubmitSync([.contextCache(.device(did: 5, sid: 0x10, functionMask: fm))])
                XCTAssertEqual(Set(sids).subtracting(cached()), expected[fm], "FM=\(fm)")
            }
        }
    }

    /// Page-selective-within-PASID PASID-IOTLB: MAMV bounds type 2 only.
    func testPageSelectivePASIDIOTLBTakesAnyAddressMask() throws {
        var p = IntelIOMMU.Parameters()
        p.maxAddressMask = 18
        try withIOMMU(p) { _, iommu in
            let wide = RawDescriptor(qw0: 6 | 3 << 4 | 7 << 16 | 1 << 32, qw1: 0xFF80_0000_0000_0000 | 47)
            guard case .success(.pasidIOTLB(let d)) = InvalidationDescriptor.decode(wide, width: .bits256, maxAddressMask: 18) else {
                return XCTFail("AM=47 refused")
            }
            XCTAssertEqual(d.granularity, .page(address: 0xFF80_0000_0000_0000, addressMask: 47, invalidationHint: false))
            try iommu.qiSubmitSync([wide])
            // Type 2 keeps its bound.
            let iotlb = RawDescriptor(qw0: 2 | 3 << 4 | 7 << 16, qw1: 19)
            XCTAssertThrowsError(try iommu.qiSubmitSync([iotlb]))
        }
    }

    /// The wait qi_submit_sync appends: status write of QI_DONE, no FN, no IF.
    func testTheAppendedWaitIsLinuxsWithoutFence() throws {
        try withIOMMU { allocator, iommu in
            try iommu.qiSubmitSync([Self.good])
            guard case .wait(let wait) = readRingSlot(iommu, allocator, 1) else { return XCTFail("no wait after the descriptor") }
            XCTAssertFalse(wait.fence)
            XCTAssertFalse(wait.interrupt)
            XCTAssertEqual(wait.statusWrite?.data, 2, "QI_DONE")
        }
    }

    /// A refused descriptor is replaced with a copy of the submission's own
    /// wait (SW=1), as Linux's qi_check_fault does: a wait with neither SW
    /// nor IF is itself refused by QEMU.
    func testARefusedDescriptorIsReplacedWithTheSubmissionsWait() throws {
        var bad = Self.good
        bad.qw0 |= 1 << 8
        try withIOMMU { allocator, iommu in
            XCTAssertThrowsError(try iommu.qiSubmitSync([Self.good, bad, Self.good]))
            let wait = readRingSlot(iommu, allocator, 3)
            guard case .wait(let w) = wait else { return XCTFail("slot 3 is not the wait") }
            XCTAssertNotNil(w.statusWrite)
            XCTAssertEqual(readRingSlot(iommu, allocator, 1), wait, "the refused slot holds a copy of the wait")
            try iommu.qiSubmitSync([Self.good])
            XCTAssertEqual(iommu.freeSlots, iommu.queueLength)
        }
    }

    /// IQH is reset when QIES clears (queued invalidation disabled), not
    /// when it is enabled again.
    func testDisablingTheQueueResetsTheHead() throws {
        try withIOMMU { _, iommu in
            for _ in 0..<3 { try iommu.qiSubmitSync([Self.good]) }
            XCTAssertEqual(iommu.read(.iqh), 6 << 5)
            iommu.disableQueuedInvalidation()
            XCTAssertEqual(iommu.read(.gsts) & DMARRegister.queuedInvalidationEnable, 0)
            XCTAssertEqual(iommu.read(.iqh), 0)
            iommu.enableQueuedInvalidation()
            try iommu.qiSubmitSync([Self.good])
        }
    }

    /// IQEI as the specification numbers it: a wait whose status address
    /// lies outside the unit's memory is a reserved-field violation (4);
    /// code 2 is kept for a descriptor the unit could not fetch. (A
    /// scalable-mode type in a 128-bit queue, an invalid type (3): see
    /// IOMMUQueueErrorTests.)
    func testIQEReasonCodesFollowTheSpecification() throws {
        try withIOMMU { allocator, iommu in
            let nowhere = UInt64(allocator.frameCount) << 12
            XCTAssertThrowsError(try iommu.qiSubmitSync([.wait(InvalidationWait(statusWrite: .init(address: nowhere, data: 1)))])) {
                guard case .invalidDescriptor(0, _, .reservedField, false, _) = $0 as? QIError else { return XCTFail("\($0)") }
            }
            XCTAssertEqual(iommu.read(.iqercd) & 0xF, 4)

            // A ring the unit cannot read: IQEI 2.
            iommu.disableQueuedInvalidation()
            let iqa = iommu.read(.iqa)
            try iommu.write(.iqa, nowhere | DMARRegister.iqaDescriptorWidth | 1)
            try iommu.write(.gcmd, iommu.read(.gcmd) | DMARRegister.queuedInvalidationEnable)
            iommu.hardware.progress.wait { iommu.read(.gsts) & DMARRegister.queuedInvalidationEnable != 0 }
            try iommu.write(.iqt, 1 << 5)
            iommu.hardware.progress.wait { iommu.read(.fsts) & DMARRegister.invalidationQueueError != 0 }
            XCTAssertEqual(iommu.read(.iqercd) & 0xF, 2)
            try iommu.write(.iqt, 0)
            try iommu.write(.fsts, DMARRegister.invalidationQueueError)
            try iommu.write(.gcmd, iommu.read(.gcmd) & ~DMARRegister.queuedInvalidationEnable)
            iommu.hardware.progress.wait { iommu.read(.gsts) & DMARRegister.queuedInvalidationEnable == 0 }
            try iommu.write(.iqa, iqa)
            iommu.enableQueuedInvalidation()
            try iommu.qiSubmitSync([Self.good])
        }
    }

    /// -EAGAIN is retried for as long as the device keeps timing out, as
    /// Linux does: only a device that is gone ends it (-ETIMEDOUT).
    func testTimeOutsAreResubmittedWithoutALimit() throws {
        try withIOMMU { _, iommu in
            _ = try iommu.attachDevice(sid: 0x20, did: 1, ats: true)
            iommu.faultInjection.injectITE(count: 40)
            try iommu.qiSubmitSync([IOMMUQueueErrorTests.deviceTLB(0x20)])
            let stats = iommu.counters.snapshot()
            XCTAssertEqual(stats.qiRetries, 40)
            XCTAssertEqual(stats.qiSubmissions, 41)
            XCTAssertEqual(stats.qiTimeouts, 0)
        }
    }

    /// iommu_sva_invalidate_kva_range(PAGE_OFFSET, TLB_FLUSH_ALL) reaches
    /// each bound mm's notifier, which flushes [PAGE_OFFSET, ULONG_MAX - 1]
    /// as cache_tag_flush_range does: page-selective with IH=0 and the mask
    /// calculate_psi_aligned_address gives (35: the whole upper half of a
    /// 48-bit space), plus the PASID device-TLB descriptor for the same range.
    func testTheKernelRangeFlushIsLinuxsPageSelectiveFlush() throws {
        try withLab { allocator in
            let iommu = try IntelIOMMU(allocator: allocator)
            defer { iommu.shutdown() }
            let sva = SVA(iommu: iommu)
            let device = try iommu.attachDevice(sid: 3, did: 1, ats: true)
            let mm = try MM(allocator: allocator)
            let bond = try sva.bind(mm, pasid: 4, did: 1, devices: [device])
            sva.invalidateKVARange()
            XCTAssertEqual(readRingSlot(iommu, allocator, 0), .pasidIOTLB(PASIDIOTLBInvalidation(
                did: 1, pasid: 4, granularity: .page(address: 0xFFFF_8000_0000_0000, addressMask: 35, invalidationHint: false))))
            XCTAssertEqual(readRingSlot(iommu, allocator, 1), .pasidDeviceTLB(PASIDDeviceTLBInvalidation(
                sid: 3, pasid: 4, range: DeviceTLBRange(base: 0xFFFF_8000_0000_0000, sizeOrder: 35))))
            try sva.unbind(bond)
            mm.exit()
        }
    }

    /// The mm notifier sends IH=0 whether or not tables were freed, as
    /// intel_arch_invalidate_secondary_tlbs does.
    func testTheNotifierNeverSetsTheInvalidationHint() throws {
        try withLab { allocator in
            let iommu = try IntelIOMMU(allocator: allocator)
            defer { iommu.shutdown() }
            let sva = SVA(iommu: iommu)
            let mm = try MM(allocator: allocator)
            let bond = try sva.bind(mm, pasid: 4, did: 1)
            let base: UInt64 = 0x7F00_0000_0000
            try mm.mmap(address: base, length: 4 * mib)
            try mm.touch(address: base, length: 4 * mib, stride: 64 << 10)
            let before = iommu.counters.snapshot().qiSubmissions
            try mm.madviseDontneed(address: base, length: 64 << 10)      // frees no table
            XCTAssertGreaterThan(iommu.counters.snapshot().qiSubmissions, before)
            guard case .pasidIOTLB(let inv) = readRingSlot(iommu, allocator, Int(before) * 2),
                  case .page(_, _, let ih) = inv.granularity else { return XCTFail("no page-selective flush") }
            XCTAssertFalse(ih)
            try sva.unbind(bond)
            mm.exit()
        }
    }
}
