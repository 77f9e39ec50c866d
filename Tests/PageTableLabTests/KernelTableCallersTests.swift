import CSupport
import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// The kernel functions that free kernel page tables, called as the kernel
/// calls them: each takes the table out of use, flushes the CPUs' TLBs,
/// and hands it to pagetable_free (kept on the deferred list here: the
/// work is frozen, so what was freed can be looked at).
final class KernelTableCallersTests: XCTestCase {
    private func withKernel(fiveLevel: Bool = false, _ body: (InitMM, PageAllocator) throws -> Void) throws {
        try withLab { allocator in
            let freer = KernelPageTableFree(policy: .deferred, allocator: allocator, invalidateKVA: nil)
            freer.work.freeze()
            let kernel = try InitMM(allocator: allocator, freer: freer, fiveLevel: fiveLevel)
            try body(kernel, allocator)
            freer.shutdown()
            kernel.release()
        }
    }

    private func table(_ kernel: InitMM, _ level: Level, _ address: UInt64) -> Page? {
        kernel.lookup(level, for: address)
    }

    private let v = KernelLayout.fourLevel.vmallocStart

    /// Linux's vunmap frees no page table: the emptied PTE and PMD tables
    /// stay linked until a huge mapping replaces them.
    func testVunmapFreesNoTable() throws {
        try withKernel { kernel, _ in
            try kernel.vmap(address: v, length: 4096)
            let pte = try XCTUnwrap(table(kernel, .pte, v))
            let flushes = kernel.rangeFlushes.load(ordering: .relaxed)
            try kernel.vunmap(address: v, length: 2 * mib)
            XCTAssertEqual(pte.state, PageState.allocated)
            XCTAssertEqual(table(kernel, .pte, v), pte, "still linked")
            XCTAssertEqual(kernel.freer.tablesQueued.load(ordering: .relaxed), 0)
            XCTAssertEqual(kernel.rangeFlushes.load(ordering: .relaxed), flushes + 1, "flush_tlb_kernel_range")
        }
    }

    /// vmap_try_huge_pmd over the emptied range: pmd_free_pte_page clears
    /// the PMD, flushes, then frees the PTE table.
    func testAHugeIoremapFreesTheEmptiedPTETable() throws {
        try withKernel { kernel, _ in
            try kernel.vmap(address: v, length: 3 * 4096)
            let pte = try XCTUnwrap(table(kernel, .pte, v))
            XCTAssertThrowsError(try kernel.ioremapHuge(address: v, level: .pmd), "a live mapping is in the way") {
                XCTAssertEqual($0 as? MMError, .mappingExists(address: v, length: 2 * mib))
            }
            try kernel.vunmap(address: v, length: 2 * mib)
            XCTAssertTrue(try kernel.ioremapHuge(address: v, level: .pmd))
            XCTAssertEqual(pte.state, PageState.deferred, "handed to pagetable_free")
            XCTAssertEqual(kernel.tablesFreedBy[.pmdFreePTEPage], 1)
            XCTAssertEqual(kernel.unflushedFreesBy[.pmdFreePTEPage], 0, "flushed before the free")
            XCTAssertNil(table(kernel, .pte, v), "a huge PMD in its place")
            try kernel.vunmap(address: v, length: 2 * mib)
        }
    }

    /// vmap_try_huge_pud: pud_free_pmd_page frees the PMD table and every
    /// PTE table under it, after clearing them and flushing.
    func testAHugePUDIoremapFreesThePMDTableAndItsPTETables() throws {
        try withKernel { kernel, _ in
            let g = v + gib
            try kernel.vmap(address: g, length: 4096)
            try kernel.vmap(address: g + 6 * mib, length: 4096)
            let pmd = try XCTUnwrap(table(kernel, .pmd, g))
            let ptes = try [g, g + 6 * mib].map { try XCTUnwrap(table(kernel, .pte, $0)) }
            try kernel.vunmap(address: g, length: gib)
            XCTAssertTrue(try kernel.ioremapHuge(address: g, level: .pud))
            XCTAssertEqual(([pmd] + ptes).map(\.state), Array(repeating: PageState.deferred, count: 3))
            XCTAssertEqual(kernel.tablesFreedBy[.pudFreePMDPage], 3)
            XCTAssertEqual(kernel.unflushedFreesBy[.pudFreePMDPage], 0)
            try kernel.vunmap(address: g, length: gib)
        }
    }

    /// CPA: set_memory_ro on one page splits the block's huge mapping into
    /// a PTE table; set_memory_rw with CPA_COLLAPSE puts the 512 agreeing
    /// PTEs back under one huge PMD and frees the table after a full flush.
    /// A range whose PTEs disagree is not collapsed.
    func testCPASplitsAndCollapsesALargePage() throws {
        try withKernel { kernel, _ in
            let block = try kernel.memoryHotAdd()
            XCTAssertNil(table(kernel, .pte, block.address), "hot-added as one huge PMD")
            try kernel.changePageAttr(address: block.address + 4096, pages: 1, readOnly: true, collapse: false)
            let pte = try XCTUnwrap(table(kernel, .pte, block.address), "split")
            XCTAssertEqual(try kernel.changePageAttr(address: block.address + 8192, pages: 1, readOnly: true, collapse: true), 0,
                           "two pages read-only: the PTEs disagree")
            let full = kernel.fullFlushes.load(ordering: .relaxed)
            XCTAssertEqual(try kernel.changePageAttr(address: block.address, pages: 512, readOnly: false, collapse: true), 1)
            XCTAssertEqual(kernel.fullFlushes.load(ordering: .relaxed), full + 1, "flush_tlb_all before the free")
            XCTAssertEqual(pte.state, PageState.deferred)
            XCTAssertNil(table(kernel, .pte, block.address), "huge again")
            XCTAssertEqual(kernel.tablesFreedBy[.cpaCollapse], 1)
            XCTAssertEqual(kernel.unflushedFreesBy[.cpaCollapse], 0)
            try kernel.memoryHotRemove(block)
        }
    }

    /// Memory hot-remove of a split block: remove_pte_table clears the
    /// PTEs and flushes, free_pte_table frees the PTE table and then clears
    /// the PMD, and the PMD table, now empty, goes too — before the closing
    /// flush_tlb_all, in Linux's order.
    func testHotRemoveFreesThePTETableAfterAFlushAndThePMDTableBeforeOne() throws {
        try withKernel { kernel, _ in
            let block = try kernel.memoryHotAdd()
            try kernel.changePageAttr(address: block.address, pages: 1, readOnly: true, collapse: false)
            let pte = try XCTUnwrap(table(kernel, .pte, block.address))
            let pmd = try XCTUnwrap(table(kernel, .pmd, block.address))
            try kernel.memoryHotRemove(block)
            XCTAssertEqual([pte.state, pmd.state], [PageState.deferred, PageState.deferred])
            XCTAssertEqual(kernel.tablesFreedBy[.freePagetable], 2)
            XCTAssertEqual(kernel.unflushedFreesBy[.freePagetable], 1, "the PMD table, queued before remove_pagetable's flush")
            XCTAssertNil(table(kernel, .pmd, block.address))
            XCTAssertNotNil(table(kernel, .pud, block.address), "a 4-level PUD table is preallocated and stays")
        }
    }

    /// 5-level paging: init_mm's root is a PML5 whose kernel half points at
    /// P4D tables, so a 5-level mm that copies it, and an IOMMU walking that
    /// mm, reach kernel mappings through tables of the levels they expect.
    func testFiveLevelKernelHalfIsWalkedThroughP4DTables() throws {
        try withLab { allocator in
            let iommu = try IntelIOMMU(allocator: allocator)
            defer { iommu.shutdown() }
            let sva = SVA(iommu: iommu)
            let freer = KernelPageTableFree(policy: .deferred, allocator: allocator) {
                sva.invalidateKVARange(start: KernelLayout.fiveLevel.pageOffset)
            }
            let kernel = try InitMM(allocator: allocator, freer: freer, fiveLevel: true)
            var profile = MMProfile()
            XCTAssertThrowsError(try MM(allocator: allocator, profile: profile, kernel: kernel)) {
                XCTAssertEqual($0 as? MMError, .pagingModeMismatch(mmFiveLevel: false))
            }
            profile.fiveLevel = true
            let mm = try MM(allocator: allocator, profile: profile, kernel: kernel)
            let bond = try sva.bind(mm, pasid: 1, did: 1)
            let address = KernelLayout.fiveLevel.vmallocStart + 4096
            try kernel.vmap(address: address, length: 4096)
            let p4d = try XCTUnwrap(kernel.lookup(.p4d, for: address))
            XCTAssertEqual(ptlab_page_level(p4d.desc), UInt32(Level.p4d.rawValue))
            guard case .translated(_, let level) = iommu.translate(DMARequest(pasid: 1, address: address)) else {
                return XCTFail("a kernel vmalloc address not translated through the 5-level mm")
            }
            XCTAssertEqual(level, .pte)
            XCTAssertEqual(iommu.counters.snapshot().useAfterFree, 0)
            try kernel.vunmap(address: address, length: 4096)
            freer.shutdown()
            try sva.unbind(bond)
            mm.exit()
            kernel.release()
        }
    }
}
