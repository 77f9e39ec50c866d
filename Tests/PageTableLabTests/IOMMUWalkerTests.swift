import CSupport
import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

final class IOMMUWalkerTests: XCTestCase {
    let va: UInt64 = 0x7F12_3456_7000

    func testWalkTranslatesSetsAccessedAndDirtyAndCaches() throws {
        try withIOMMU { allocator, iommu in
            let tables = try HandTables(allocator: allocator)
            let data = try allocator.alloc(zero: true)
            let path = try tables.map(va, to: data.pfn)
            try iommu.bindPASID(1, root: UInt64(tables.pgd.pfn), did: 1)

            XCTAssertEqual(iommu.translate(DMARequest(pasid: 1, address: va + 0x123)),
                           .translated(physical: UInt64(data.pfn) << 12 | 0x123, level: .pte))
            for (level, table) in path {
                let e = tables.entry(in: table, level: level, address: va)
                XCTAssertTrue(e.has(Entry.accessed), "A set in the \(level.name) entry")
                XCTAssertFalse(e.has(Entry.dirty), "no D for a read")
            }
            var s = iommu.counters.snapshot()
            XCTAssertEqual([s.walks, s.iotlbMisses, s.pasidCacheMisses, s.accessedBitsSet, s.pscHits], [1, 1, 1, 4, 0])
            XCTAssertEqual(iommu.cachedEntries.pagingStructures, 3, "PML4E, PDPTE and PDE cached")

            _ = iommu.translate(DMARequest(pasid: 1, address: va))
            XCTAssertEqual(iommu.counters.snapshot().iotlbHits, 1)
            // A write through a clean cached translation walks again to set D,
            // starting from the paging-structure cache.
            _ = iommu.translate(DMARequest(pasid: 1, address: va, write: true))
            XCTAssertTrue(tables.entry(in: path[.pte]!, level: .pte, address: va).has(Entry.dirty))
            _ = iommu.translate(DMARequest(pasid: 1, address: va, write: true))
            s = iommu.counters.snapshot()
            XCTAssertEqual([s.walks, s.pscHits, s.dirtyBitsSet, s.iotlbHits], [2, 1, 1, 2])
            XCTAssertEqual(s.useAfterFree, 0)

            try allocator.free(data)
            try tables.freeAll()
        }
    }

    func testFaultsAndHugeLeaves() throws {
        try withIOMMU { allocator, iommu in
            let tables = try HandTables(allocator: allocator)
            let path = try tables.map(va, to: 77, writable: false)
            try iommu.bindPASID(1, root: UInt64(tables.pgd.pfn), did: 1)
            XCTAssertEqual(iommu.translate(DMARequest(pasid: 1, address: va, write: true)), .fault(.writeProtected(level: .pte)))
            XCTAssertEqual(iommu.translate(DMARequest(pasid: 1, address: va + 4096)), .fault(.notPresent(level: .pte)))
            XCTAssertEqual(iommu.translate(DMARequest(pasid: 1, address: 0x1000)), .fault(.notPresent(level: .pgd)))
            XCTAssertEqual(iommu.translate(DMARequest(pasid: 2, address: va)), .fault(.pasidNotBound(2)))
            XCTAssertEqual(iommu.translate(DMARequest(pasid: 1, address: 0x8000_0000_0000)), .fault(.nonCanonical(0x8000_0000_0000)))
            // A 2 MiB leaf in the PMD next to the PTE table.
            let hugeVA = (va & ~0x1F_FFFF) + 0x20_0000
            ptlab_pte_write(tables.slot(path[.pmd]!, hugeVA, shift: 21),
                            Entry(pfn: 512 * 3, flags: [.present, .writable, .huge]).rawValue)
            XCTAssertEqual(iommu.translate(DMARequest(pasid: 1, address: hugeVA + 0x12345)),
                           .translated(physical: UInt64(512 * 3) << 12 | 0x12345, level: .pmd))
            XCTAssertEqual(iommu.translate(DMARequest(pasid: 1, address: hugeVA + 0x1F_F000)).physicalAddress,
                           UInt64(512 * 3) << 12 | 0x1F_F000, "one IOTLB entry covers the 2 MiB")
            XCTAssertEqual(iommu.counters.snapshot().faults, 5)
            XCTAssertEqual(iommu.counters.snapshot().iotlbHits, 1)
            try tables.freeAll()
        }
    }

    /// The seed-000 bug in miniature: a PTE table is freed and its page
    /// reused, the IOMMU is told only that leaves changed (IH = 1), and its
    /// cached PDE leads the next walk into the reused page.
    func testInvalidationWithLeafHintLeavesAStaleWalkCacheThatTheWalkerTripsOver() throws {
        try withIOMMU { allocator, iommu in
            let (tables, data, pte, reused) = try freeAndReuseAPTETable(allocator, iommu)
            try iommu.invalidateSecondaryTLBs(pasid: 1, start: va, end: va + 4096, ih: true)
            XCTAssertEqual(iommu.cachedEntries.pagingStructures, 3, "IH = 1 kept the paging-structure entries")

            let result = iommu.translate(DMARequest(pasid: 1, address: va))
            XCTAssertEqual(result, .useAfterFree(DMAUseAfterFree(
                pfn: UInt64(pte), expected: .pte, source: .pagingStructureCache, wroteAccessedDirty: true)))
            let s = iommu.counters.snapshot()
            XCTAssertEqual([s.useAfterFree, s.useAfterFreeFromCache, s.writeAfterFree], [1, 1, 1])
            // The accessed bit really landed in the page's new life.
            XCTAssertTrue(tables.entry(in: reused, level: .pte, address: va).has(Entry.accessed))
            try allocator.free(reused)
            try allocator.free(data)
            try tables.freeAll()
        }
    }

    /// Reused as a PTE table again (of another mm, say): level and flags
    /// match, only the generation tells the IOMMU's pointer is stale.
    func testReuseAsATableOfTheSameLevelIsStillAUseAfterFree() throws {
        try withIOMMU { allocator, iommu in
            let (tables, data, pte, reused) = try freeAndReuseAPTETable(allocator, iommu, asTable: true)
            try iommu.invalidateSecondaryTLBs(pasid: 1, start: va, end: va + 4096, ih: true)
            guard case .useAfterFree(let uaf) = iommu.translate(DMARequest(pasid: 1, address: va)) else {
                return XCTFail("a stale PDE into a reused PTE table went undetected")
            }
            XCTAssertEqual(uaf.pfn, UInt64(pte))
            XCTAssertEqual(uaf.source, .pagingStructureCache)
            try allocator.free(reused)
            try allocator.free(data)
            try tables.freeAll()
        }
    }

    func testInvalidationWithoutTheHintDropsTheWalkCacheAndTheWalkFaultsCleanly() throws {
        try withIOMMU { allocator, iommu in
            let (tables, data, _, reused) = try freeAndReuseAPTETable(allocator, iommu)
            let before = tables.entry(in: reused, level: .pte, address: va)
            try iommu.invalidateSecondaryTLBs(pasid: 1, start: va, end: va + 4096, ih: false)
            XCTAssertEqual(iommu.cachedEntries.pagingStructures, 0, "IH = 0 dropped every entry covering the page")

            XCTAssertEqual(iommu.translate(DMARequest(pasid: 1, address: va)), .fault(.notPresent(level: .pmd)))
            let s = iommu.counters.snapshot()
            XCTAssertEqual([s.useAfterFree, s.writeAfterFree], [0, 0])
            XCTAssertEqual(tables.entry(in: reused, level: .pte, address: va), before, "the reused page was not touched")
            try allocator.free(reused)
            try allocator.free(data)
            try tables.freeAll()
        }
    }

    func testAFreedTableStillPoisonedIsDetectedWithoutAWrite() throws {
        try withIOMMU(poison: true) { allocator, iommu in
            let tables = try HandTables(allocator: allocator)
            let data = try allocator.alloc(zero: true)
            let path = try tables.map(va, to: data.pfn)
            try iommu.bindPASID(1, root: UInt64(tables.pgd.pfn), did: 1)
            _ = iommu.translate(DMARequest(pasid: 1, address: va))
            try tables.unlinkAndFree(path[.pte]!, from: path[.pmd]!, parentLevel: .pmd, address: va)
            try iommu.invalidateSecondaryTLBs(pasid: 1, start: va, end: va + 4096, ih: true)

            // Poison (0x6b…) reads as present with A and D already set.
            guard case .useAfterFree(let uaf) = iommu.translate(DMARequest(pasid: 1, address: va, write: true)) else {
                return XCTFail("stale PDE into a freed table went undetected")
            }
            XCTAssertEqual(uaf.source, .pagingStructureCache)
            XCTAssertFalse(uaf.wroteAccessedDirty)
            XCTAssertEqual(iommu.counters.snapshot().writeAfterFree, 0)
            try allocator.free(data)
            try tables.freeAll()
        }
    }

    func testKernelHalfTablesMustCarryTheKernelFlag() throws {
        try withIOMMU { allocator, iommu in
            let kva: UInt64 = 0xFFFF_8880_0012_3000
            let tables = try HandTables(allocator: allocator)
            let path = try tables.map(kva, to: 99)
            try iommu.bindPASID(1, root: UInt64(tables.pgd.pfn), did: 1)
            XCTAssertEqual(iommu.translate(DMARequest(pasid: 1, address: kva)).physicalAddress, 99 << 12)
            // A user table linked into the kernel half is not the table the walk may enter.
            ptlab_page_clear_flags(path[.pmd]!.desc, PTLAB_PT_KERNEL)
            try iommu.invalidateSecondaryTLBs(pasid: 1, start: 0, end: .max, ih: false)
            guard case .useAfterFree(let uaf) = iommu.translate(DMARequest(pasid: 1, address: kva)) else {
                return XCTFail("walk entered a non-kernel table in the kernel half")
            }
            XCTAssertEqual(uaf.pfn, UInt64(path[.pmd]!.pfn))
            XCTAssertEqual(uaf.source, .walk)
            try tables.freeAll()
        }
    }

    func testAPASIDCacheEntryOutlivingItsPGDIsAUseAfterFree() throws {
        try withIOMMU { allocator, iommu in
            let tables = try HandTables(allocator: allocator)
            try tables.map(va, to: 5)
            try iommu.bindPASID(1, root: UInt64(tables.pgd.pfn), did: 1)
            _ = iommu.translate(DMARequest(pasid: 1, address: va))
            // The mm's PGD is freed; IOTLB and walk caches are flushed, the PASID cache is not.
            try tables.free(tables.pgd)
            try iommu.qiSubmitSync([.pasidIOTLB(PASIDIOTLBInvalidation(did: 1, pasid: 1, granularity: .pasid))])
            guard case .useAfterFree(let uaf) = iommu.translate(DMARequest(pasid: 1, address: va)) else {
                return XCTFail("stale PASID-cache root went undetected")
            }
            XCTAssertEqual(uaf.source, .pasidCache)
            XCTAssertEqual(uaf.expected, .pgd)
            try iommu.unbindPASID(1)
            XCTAssertEqual(iommu.translate(DMARequest(pasid: 1, address: va)), .fault(.pasidNotBound(1)))
            try tables.freeAll()
        }
    }

    func testUnbindFlushesEverythingThePASIDCached() throws {
        try withIOMMU { allocator, iommu in
            let tables = try HandTables(allocator: allocator)
            try tables.map(va, to: 5)
            let device = try iommu.attachDevice(sid: 3, did: 1, ats: true)
            try iommu.bindPASID(1, root: UInt64(tables.pgd.pfn), did: 1, devices: [device])
            try iommu.bindPASID(2, root: UInt64(tables.pgd.pfn), did: 2)
            _ = iommu.translate(DMARequest(pasid: 1, address: va), device: device)
            _ = iommu.translate(DMARequest(pasid: 2, address: va))
            XCTAssertThrowsError(try iommu.bindPASID(2, root: 0, did: 2)) {
                XCTAssertEqual($0 as? IOMMUError, .pasidAlreadyBound(2))
            }
            try iommu.unbindPASID(1)
            let c = iommu.cachedEntries
            XCTAssertEqual([c.iotlb, c.pagingStructures, c.pasids, device.deviceTLBEntries], [1, 3, 1, 0],
                           "only PASID 2's entries are left")
            XCTAssertThrowsError(try iommu.unbindPASID(1)) { XCTAssertEqual($0 as? IOMMUError, .pasidNotBound(1)) }
            XCTAssertThrowsError(try iommu.bindPASID(0, root: 0, did: 1)) { XCTAssertEqual($0 as? IOMMUError, .invalidPASID(0)) }
            let stranger = DMADevice(sid: 9, did: 1, ats: true)
            XCTAssertThrowsError(try iommu.bindPASID(5, root: 0, did: 1, devices: [stranger])) {
                XCTAssertEqual($0 as? IOMMUError, .deviceNotAttached(sid: 9))
            }
            try iommu.unbindPASID(2)
            try iommu.detachDevice(device)
            XCTAssertEqual(iommu.cachedEntries.contexts, 0)
            try tables.freeAll()
        }
    }

    /// Map `va`, bind PASID 1, walk it once (filling the walk caches), then
    /// unlink and free its PTE table and take the page back for something
    /// else: a page whose word at `va`'s index looks like a present PTE
    /// with A clear.
    private func freeAndReuseAPTETable(_ allocator: PageAllocator, _ iommu: IntelIOMMU, asTable: Bool = false) throws
        -> (HandTables, Page, UInt32, Page) {
        let tables = try HandTables(allocator: allocator)
        let data = try allocator.alloc(zero: true)
        let path = try tables.map(va, to: data.pfn)
        try iommu.bindPASID(1, root: UInt64(tables.pgd.pfn), did: 1)
        XCTAssertNotNil(iommu.translate(DMARequest(pasid: 1, address: va)).physicalAddress)
        XCTAssertEqual(iommu.cachedEntries.pagingStructures, 3)

        let pte = path[.pte]!
        try tables.unlinkAndFree(pte, from: path[.pmd]!, parentLevel: .pmd, address: va)
        let reused = asTable ? try HandTables.makeTable(allocator, level: .pte, kernel: false) : try allocator.alloc(zero: true)
        XCTAssertEqual(reused.pfn, pte.pfn, "the per-thread cache hands the freed page straight back")
        ptlab_pte_write(tables.slot(reused, va, shift: 12), Entry(pfn: data.pfn, flags: [.present, .writable]).rawValue)
        return (tables, data, pte.pfn, reused)
    }
}
