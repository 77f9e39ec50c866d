import XCTest
@testable import PageTableLab

final class IOMMUSVAInvalidationTests: XCTestCase {
    func testAddressMaskIsTheSmallestAlignedBlockCoveringTheRange() {
        XCTAssertTrue(IntelIOMMU.addressMask(first: 0x1000, last: 0x1FFF) == (0x1000, 0))
        XCTAssertTrue(IntelIOMMU.addressMask(first: 0x1000, last: 0x2FFF) == (0, 2))
        XCTAssertTrue(IntelIOMMU.addressMask(first: 0x20_0000, last: 0x3F_FFFF) == (0x20_0000, 9))
        // Two pages straddling a 2 MiB boundary need a 4 MiB block.
        XCTAssertTrue(IntelIOMMU.addressMask(first: 0x1F_F000, last: 0x20_0FFF) == (0, 10))
        XCTAssertTrue(IntelIOMMU.addressMask(first: 0, last: .max) == (0, 52))

        var rng = IOMMUDecoderFuzzTests.SplitMix64(state: 7)
        for _ in 0..<2000 {
            let a = rng.next() >> UInt64(rng.upTo(63)), b = rng.next() >> UInt64(rng.upTo(63))
            let (first, last) = (min(a, b), max(a, b))
            let (address, mask) = IntelIOMMU.addressMask(first: first, last: last)
            let block = AddressRange(address: address, addressMask: mask)
            XCTAssertTrue(block.first <= first && last <= block.last, "block covers the range")
            XCTAssertEqual(block.first, address)
            if mask > 0 {
                let smaller = AddressRange(address: first, addressMask: mask - 1)
                XCTAssertFalse(smaller.first <= first && last <= smaller.last, "no smaller block does")
            }
        }
    }

    func testARangeIsOnePASIDIOTLBDescriptorPlusOnePerPresentATSDevice() throws {
        try withIOMMU { allocator, iommu in
            let ats = try iommu.attachDevice(sid: 1, did: 4, ats: true)
            let plain = try iommu.attachDevice(sid: 2, did: 4, ats: false)
            try iommu.bindPASID(9, root: 0, did: 4, devices: [ats, plain])
            try iommu.iommuSVAInvalidateRange(pasid: 9, start: 0x40_3000, end: 0x40_5000, ih: true)

            XCTAssertEqual(readRingSlot(iommu, allocator, 0), .pasidIOTLB(PASIDIOTLBInvalidation(
                did: 4, pasid: 9, granularity: .page(address: 0x40_0000, addressMask: 3, invalidationHint: true))))
            XCTAssertEqual(readRingSlot(iommu, allocator, 1), .pasidDeviceTLB(PASIDDeviceTLBInvalidation(
                sid: 1, pasid: 9, range: DeviceTLBRange(base: 0x40_0000, sizeOrder: 3))))
            if case .wait = readRingSlot(iommu, allocator, 2) {} else { XCTFail("one wait after the two") }
            var s = iommu.counters.snapshot()
            XCTAssertEqual([s.qiSubmissions, s.qiDescriptors, s.iotlbInvalidations], [1, 2, 1])

            // A gone device is not asked (it would only time out).
            ats.markGone()
            try iommu.iommuSVAInvalidateRange(pasid: 9, start: 0x40_3000, end: 0x40_5000)
            s = iommu.counters.snapshot()
            XCTAssertEqual([s.qiSubmissions, s.qiDescriptors], [2, 3])
        }
    }

    func testFullFlushesAndMasksBeyondTheCapabilityArePASIDSelective() throws {
        try withIOMMU { allocator, iommu in
            try iommu.bindPASID(9, root: 0, did: 4)
            let pasidSelective = InvalidationDescriptor.pasidIOTLB(PASIDIOTLBInvalidation(did: 4, pasid: 9, granularity: .pasid))
            // TLB_FLUSH_ALL, as iommu_sva_invalidate_kva_range passes for the kernel half.
            try iommu.iommuSVAInvalidateRange(pasid: 9, start: 0xFFFF_8000_0000_0000, end: .max)
            XCTAssertEqual(readRingSlot(iommu, allocator, 0), pasidSelective)
            // 1 GiB is 2^18 pages, MAMV here: still page-selective; 2 GiB is not.
            try iommu.iommuSVAInvalidateRange(pasid: 9, start: 0x4000_0000, end: 0x8000_0000)
            XCTAssertEqual(readRingSlot(iommu, allocator, 2), .pasidIOTLB(PASIDIOTLBInvalidation(
                did: 4, pasid: 9, granularity: .page(address: 0x4000_0000, addressMask: 18, invalidationHint: false))))
            try iommu.iommuSVAInvalidateRange(pasid: 9, start: 0, end: 0x8000_0000)
            XCTAssertEqual(readRingSlot(iommu, allocator, 4), pasidSelective)
        }
    }

    func testBadRangesAndUnboundPASIDsAreErrors() throws {
        try withIOMMU { _, iommu in
            XCTAssertThrowsError(try iommu.iommuSVAInvalidateRange(pasid: 3, start: 0, end: 4096)) {
                XCTAssertEqual($0 as? IOMMUError, .pasidNotBound(3))
            }
            try iommu.bindPASID(3, root: 0, did: 1)
            XCTAssertThrowsError(try iommu.iommuSVAInvalidateRange(pasid: 3, start: 4096, end: 4096)) {
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
                try iommu.iommuSVAInvalidateRange(pasid: pasid, start: 0, end: .max, into: &batch)
            }
            XCTAssertEqual(batch.count, 4, "16 went out when the batch filled")
            try batch.flush(to: iommu)
            XCTAssertEqual(batch.count, 0)
            try batch.flush(to: iommu)       // empty: nothing submitted
            let s = iommu.counters.snapshot()
            XCTAssertEqual([s.qiSubmissions, s.qiDescriptors, s.executedByType[4], s.executedByType[5]], [2, 20, 2, 20])
        }
    }
}
