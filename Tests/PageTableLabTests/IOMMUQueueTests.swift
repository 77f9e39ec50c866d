#if canImport(Glibc)
import Glibc
#endif
import CSupport
import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

final class IOMMUQueueTests: XCTestCase {
    typealias R = DMARRegister

    func testBringUpProgramsIQAAndOffsetsAreIndexShiftedByWidth() throws {
        for width in DescriptorWidth.allCases {
            var p = IntelIOMMU.Parameters()
            p.descriptorWidth = width
            try withIOMMU(p) { _, iommu in
                let iqa = iommu.read(.iqa)
                XCTAssertEqual(iqa & ~0xFFF, iommu.slotAddress(0))
                XCTAssertEqual(iqa & R.iqaDescriptorWidth != 0, width == .bits256)
                XCTAssertEqual(iqa & R.iqaQueueSizeMask, UInt64(width.rawValue), "QS: 256 slots either way")
                XCTAssertEqual(iommu.queueLength, 256)
                XCTAssertNotEqual(iommu.read(.gsts) & R.queuedInvalidationEnable, 0)
                XCTAssertEqual(iommu.read(.iqh), 0)
                XCTAssertEqual(iommu.read(.iqt), 0)
                XCTAssertEqual(iommu.slotAddress(3) - iommu.slotAddress(0), UInt64(3 << width.shift))

                try iommu.qiSubmitSync([.interruptEntryCache(.global), .interruptEntryCache(.global)])
                // Two descriptors and the wait: the tail moved three slots.
                XCTAssertEqual(iommu.read(.iqt), UInt64(3 << width.shift))
                XCTAssertEqual(iommu.read(.iqh), iommu.read(.iqt))
                XCTAssertEqual(iommu.freeSlots, 256)
            }
        }
    }

    func testEnablingResetsTheHeadAndADisabledQueueRefusesSubmissions() throws {
        try withIOMMU { _, iommu in
            for _ in 0..<3 { try iommu.qiSubmitSync([.pasidCache(.global)]) }
            XCTAssertEqual(iommu.read(.iqh), 6 << 5)
            XCTAssertEqual(iommu.disableQueuedInvalidation(), 0)
            XCTAssertEqual(iommu.read(.gsts) & R.queuedInvalidationEnable, 0)
            XCTAssertThrowsError(try iommu.qiSubmitSync([.pasidCache(.global)])) {
                XCTAssertEqual($0 as? QIError, .queueDisabled)
            }
            XCTAssertThrowsError(try iommu.write(.iqh, 0)) { XCTAssertEqual($0 as? DMARRegisterError, .readOnly(.iqh)) }
            XCTAssertEqual(iommu.read(.iqh), 0, "IQH reads 0 while the queue is off")
            iommu.enableQueuedInvalidation()
            XCTAssertNotEqual(iommu.read(.gsts) & R.queuedInvalidationEnable, 0)
            XCTAssertEqual(iommu.read(.iqh), 0)
            XCTAssertEqual(iommu.read(.iqt), 0)
            XCTAssertThrowsError(try iommu.write(.iqa, 0)) { XCTAssertEqual($0 as? DMARRegisterError, .iqaWhileEnabled) }
            try iommu.qiSubmitSync([.pasidCache(.global)])
            XCTAssertEqual(iommu.read(.iqh), 2 << 5)
        }
    }

    func testDisableWaitsUntilTheHardwareHasFetchedEverything() throws {
        try withIOMMU { allocator, iommu in
            iommu.faultInjection.stallFetching()
            for i in 0..<5 { writeRingSlot(iommu, allocator, i, InvalidationDescriptor.pasidCache(.global).encode()) }
            try iommu.write(.iqt, 5 << 5)
            let left = CallCounter()
            let disabler = RCUThread { for _ in 0..<iommu.disableQueuedInvalidation() { left.bump() } }
            iommu.faultInjection.resumeFetching()
            disabler.join()
            XCTAssertEqual(left.count, 0, "disable turned the queue off with descriptors still in it")
            XCTAssertEqual(iommu.read(.iqh), 0, "off: IQH reset")
            XCTAssertEqual(iommu.counters.snapshot().executedByType[6], 5)
            iommu.enableQueuedInvalidation()
        }
    }

    func testWaitWritesItsStatusAndRaisesTheCompletionInterrupt() throws {
        let interrupts = CallCounter()
        try withIOMMU(interruptHandler: { interrupts.bump() }) { allocator, iommu in
            let page = try allocator.alloc(zero: true)
            defer { try? allocator.free(page) }
            let address = UInt64(page.pfn) << 12 + 64
            try iommu.qiSubmitSync([.wait(InvalidationWait(statusWrite: .init(address: address, data: 0xC0FFEE), interrupt: true))])
            let word = (allocator.address(of: page) + 64).assumingMemoryBound(to: UInt32.self)
            XCTAssertEqual(ptlab_u32_load_acquire(word), 0xC0FFEE)
            XCTAssertEqual(interrupts.count, 1)
            XCTAssertEqual(iommu.read(.ics), R.invalidationWaitComplete)
            try iommu.write(.ics, R.invalidationWaitComplete)
            XCTAssertEqual(iommu.read(.ics), 0, "ICS.IWC is write-1-to-clear")

            // A status address outside memory: the hardware refuses the wait.
            let nowhere = UInt64(allocator.frameCount) << 12
            XCTAssertThrowsError(try iommu.qiSubmitSync([.wait(InvalidationWait(statusWrite: .init(address: nowhere, data: 1)))])) {
                guard case .invalidDescriptor(let position, _, let reason, false, _) = $0 as? QIError else {
                    return XCTFail("\($0)")
                }
                XCTAssertEqual(position, 0)
                XCTAssertEqual(reason, .reservedField)
            }
            XCTAssertEqual(interrupts.count, 1)
        }
    }

    func testEveryDescriptorTypeActsOnWhatItNames() throws {
        try withIOMMU { allocator, iommu in
            let tables = try HandTables(allocator: allocator)
            let data = try allocator.alloc(zero: true)
            let va: UInt64 = 0x7F00_0040_0000
            try tables.map(va, to: data.pfn)
            let device = try iommu.attachDevice(sid: 0x10, did: 5, ats: true)
            try iommu.bindPASID(1, root: UInt64(tables.pgd.pfn), did: 5, devices: [device])
            try iommu.bindPASID(2, root: UInt64(tables.pgd.pfn), did: 6)
            func fill() {
                XCTAssertEqual(iommu.translate(DMARequest(pasid: 1, address: va), device: device).physicalAddress,
                               UInt64(data.pfn) << 12)
                XCTAssertNotNil(iommu.translate(DMARequest(pasid: 1, address: va)).physicalAddress)
                XCTAssertNotNil(iommu.translate(DMARequest(pasid: 2, address: va)).physicalAddress)
            }
            func cached() -> [Int] {
                let c = iommu.cachedEntries
                return [c.iotlb, c.pagingStructures, c.pasids, c.contexts, device.deviceTLBEntries]
            }
            fill()
            XCTAssertEqual(cached(), [2, 6, 2, 1, 1])

            // 4: interrupt entry cache: nothing of the translation caches.
            try iommu.qiSubmitSync([.interruptEntryCache(.selective(index: 3, indexMask: 1))])
            XCTAssertEqual(cached(), [2, 6, 2, 1, 1])
            // 1: context cache, domain-selective for another domain, then the device.
            try iommu.qiSubmitSync([.contextCache(.domain(did: 6))])
            XCTAssertEqual(cached()[3], 1)
            try iommu.qiSubmitSync([.contextCache(.device(did: 5, sid: 0x10, functionMask: 0))])
            XCTAssertEqual(cached()[3], 0)
            // 3: device-TLB (no PASID) for the page.
            try iommu.qiSubmitSync([.deviceTLB(DeviceTLBInvalidation(sid: 0x10, range: DeviceTLBRange(address: va, sizeBit: false)))])
            XCTAssertEqual(device.deviceTLBEntries, 0)
            fill()
            // 8: PASID device-TLB: another PASID leaves it, its own drops it.
            try iommu.qiSubmitSync([.pasidDeviceTLB(PASIDDeviceTLBInvalidation(sid: 0x10, pasid: 2, range: DeviceTLBRange(base: 0, sizeOrder: 52)))])
            XCTAssertEqual(device.deviceTLBEntries, 1)
            try iommu.qiSubmitSync([.pasidDeviceTLB(PASIDDeviceTLBInvalidation(sid: 0x10, pasid: 1, range: DeviceTLBRange(base: va, sizeOrder: 0)))])
            XCTAssertEqual(device.deviceTLBEntries, 0)
            // 2: IOTLB page-selective with IH=1 for domain 5: the leaf of PASID 1 goes, paging structures stay.
            try iommu.qiSubmitSync([.iotlb(IOTLBInvalidation(.page(did: 5, address: va, addressMask: 0, invalidationHint: true)))])
            XCTAssertEqual(cached()[0...1], [1, 6])
            // 2: domain-selective: everything of domain 6 (PASID 2).
            try iommu.qiSubmitSync([.iotlb(IOTLBInvalidation(.domain(did: 6)))])
            XCTAssertEqual(cached()[0...1], [0, 3])
            try iommu.qiSubmitSync([.iotlb(IOTLBInvalidation(.global))])
            XCTAssertEqual(cached()[0...1], [0, 0])
            fill()
            // 6: PASID-selective PASID-IOTLB: PASID 1's leaves and paging structures only.
            try iommu.qiSubmitSync([.pasidIOTLB(PASIDIOTLBInvalidation(did: 5, pasid: 1, granularity: .pasid))])
            XCTAssertEqual(cached()[0...1], [1, 3])
            // 7: PASID cache, PASID-selective then global.
            try iommu.qiSubmitSync([.pasidCache(.pasid(did: 5, pasid: 1))])
            XCTAssertEqual(cached()[2], 1)
            try iommu.qiSubmitSync([.pasidCache(.global)])
            XCTAssertEqual(cached()[2], 0)

            let stats = iommu.counters.snapshot()
            XCTAssertEqual(stats.executedByType, [2, 3, 1, 1, 12, 1, 2, 2])
            XCTAssertEqual(stats.iotlbInvalidations, 4)
            XCTAssertEqual(stats.qiDescriptors, 12)
            XCTAssertEqual(stats.contextCacheMisses, 2)
            try allocator.free(data)
            try tables.freeAll()
        }
    }
}
