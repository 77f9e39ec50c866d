// Gather/: struct mmu_gather, and the TLB it flushes.
//
// It follows mm/mmu_gather.c and include/asm-generic/tlb.h, and keeps the
// rule that header opens with: unhook, invalidate, free. A data page or a
// page table is first unlinked from the page tables; then every cached
// translation that could still reach it is invalidated (each CPU's TLB and
// paging-structure caches, and, through the mm's notifiers, an IOMMU bound
// to the mm); only then is it freed. A page table, which lockless walkers
// read holding nothing, also waits out a grace period after the flush
// (MMU_GATHER_RCU_TABLE_FREE), because a flush does not wait for them.
//
// The API, in the kernel's order:
//   tlb_gather_mmu              MMUGather(mm:fullmm:): range reset, tlb_flush_pending++
//   tlb_remove_tlb_entry        clearedPTE(at:), clearedPMD(at:): widen the range
//   __tlb_remove_page           removePage(_:): into the page batches (8 local, then up to
//                               MAX_GATHER_BATCH_COUNT pages of MAX_GATHER_BATCH); true: flush now
//   p{te,md,ud}_free_tlb        freeTable(_:level:address:): cleared_* of the level above,
//                               freed_tables, then tlb_remove_table
//   tlb_remove_table            MMProfile.tableFree's removeTable, else into the open
//                               TableBatch (509 per page); a full batch is flushed at once
//   tlb_remove_table_one        no page for a batch: the policy's freeOne
//   tlb_table_flush             tlb_table_invalidate, then the policy's freeBatch
//   tlb_flush_mmu_tlbonly       flushTLBOnly(): TLBModel.flush and invalidateSecondaryTLBs,
//                               only if something was cleared or freed; range reset
//   tlb_flush_mmu               flushMMU(): the TLB, then tables, then data pages
//   tlb_finish_mmu              finish(): a nested gather (tlb_flush_pending > 1) flushes
//                               everything; batch pages back; tlb_flush_pending--
//
// The rules:
//  - A gather belongs to one thread (the kernel's lives on the stack), whose
//    mmap_lock, read or write, is what made the unlinks legal.
//  - Nothing on the way to a free allocates except the batch pages, each
//    taken like GFP_NOWAIT with a fallback when there is none:
//    tlb_remove_table_one for tables, flush-and-reuse for data pages.
//  - Tables go before data pages, and never before the flush that follows
//    their unlink: the gather records the flush generation each table was
//    unlinked at, and GatherStats.freedBeforeFlush counts any that went
//    early.
//  - An IPI is not a flush. TLBModel keeps a flush generation (caches
//    dropped) apart from an IPI generation (IRQs-off walkers waited out);
//    tlb_remove_table_sync_one is an IPI alone. Whether a flush sends IPIs
//    at all is TLBFlushKind (tlb_flush=ipi, or no-ipi: INVLPGB, paravirt).
//  - A TableFreePolicy may do in its hooks what a freeing path may do: no
//    allocation, no wait for a grace period inside a read section.
//
// Files:
//   MMUGather.swift        struct mmu_gather: range, cleared_*, flush, finish; GatherStats
//   TableBatch.swift       struct mmu_table_batch; tlb_remove_table, tlb_table_flush,
//                          tlb_remove_table_one; the RCU callbacks that free batches
//   TableFreePolicy.swift  the policy protocol; .rcu (with tlb_remove_table_one's
//                          fallbacks), .noRCU, .immediate
//   PageBatches.swift      struct mmu_gather_batch: data pages
//   TLBModel.swift         flush_tlb_mm_range, tlb_remove_table_sync_one; CPU, its PDE cache

internal import CSupport

/// struct mmu_gather (mm/mmu_gather.c, include/asm-generic/tlb.h).
///
/// Collects what an unmap tears down — a range to flush, data pages, page
/// tables — so that one TLB flush covers the lot and nothing is freed before
/// that flush (and, for tables, before a grace period). Used by one thread,
/// like the kernel's on-stack gather.
public final class MMUGather {
    public let mm: MM
    // One thread owns a gather, as the kernel's lives on one task's stack:
    // the run-time exclusivity checks on its fields were the largest part
    // of freeing a table through it (BENCHMARKS.md, steady state), and
    // there is no second accessor for them to catch.
    @exclusivity(unchecked) public private(set) var fullmm: Bool
    @exclusivity(unchecked) public private(set) var start: UInt64 = 0
    @exclusivity(unchecked) public private(set) var end: UInt64 = 0
    @exclusivity(unchecked) public private(set) var needFlushAll = false
    @exclusivity(unchecked) public private(set) var freedTables = false
    @exclusivity(unchecked) public private(set) var clearedPTEs = false
    @exclusivity(unchecked) public private(set) var clearedPMDs = false
    @exclusivity(unchecked) public private(set) var clearedPUDs = false
    @exclusivity(unchecked) public private(set) var clearedP4Ds = false

    @exclusivity(unchecked) var pages: PageBatches
    /// The open table batch (mmu_table_batch), or nil.
    @exclusivity(unchecked) var tableBatch: TableBatch?
    @exclusivity(unchecked) var finished = false
    /// The flush generation the open batch's newest tables were unlinked
    /// at, and the slot where that run of them begins. Generations never
    /// fall along a batch, so the tables no flush has passed yet are this
    /// run at its end: the gather keeps it here rather than a generation in
    /// each table's descriptor, a second cache line per table that the
    /// kernel's path never touches; and as a start, not a count, so that a
    /// table of the same run costs a comparison and no store.
    @exclusivity(unchecked) var batchRunGeneration: UInt64 = 0
    @exclusivity(unchecked) var batchRunStart = 0

    /// Counters for this gather's life.
    @exclusivity(unchecked) public internal(set) var stats = GatherStats()
    /// The profile's policy leaves every table to the batch: removeTable
    /// need not ask it (see TableFreePolicy.batchesEveryTable).
    let batchesEveryTable: Bool
    /// The profile's destructor runs at unlink (before 6.14), read once:
    /// the profile lies in the mm's lines, not the gather's.
    let dtorAtUnlink: Bool

    /// tlb_gather_mmu / tlb_gather_mmu_fullmm.
    public init(mm: MM, fullmm: Bool = false) {
        self.mm = mm
        self.fullmm = fullmm
        self.pages = PageBatches(allocator: mm.allocator)
        self.batchesEveryTable = mm.profile.tableFree.batchesEveryTable
        self.dtorAtUnlink = mm.profile.dtor == .atUnlink
        resetRange()
        mm.tlbFlushPending.add(1, ordering: .acquiringAndReleasing)
    }

    deinit {
        precondition(finished, "mmu_gather dropped without tlbFinishMMU: its pages would leak")
    }

    // MARK: - range (__tlb_reset_range, __tlb_adjust_range)

    func resetRange() {
        if fullmm {
            start = .max
            end = .max
        } else {
            start = mm.taskSize
            end = 0
        }
        freedTables = false
        clearedPTEs = false
        clearedPMDs = false
        clearedPUDs = false
        clearedP4Ds = false
    }

    func adjustRange(_ address: UInt64, _ size: UInt64) {
        start = min(start, address)
        end = max(end, address + size)
    }

    // MARK: - data pages

    /// tlb_remove_tlb_entry: a PTE was cleared at `address`.
    public func clearedPTE(at address: UInt64) {
        adjustRange(address, 4096)
        clearedPTEs = true
    }

    /// tlb_remove_pmd_tlb_entry: a huge PMD was cleared at `address`.
    public func clearedPMD(at address: UInt64) {
        adjustRange(address & ~(MM.pmdSize - 1), MM.pmdSize)
        clearedPMDs = true
    }

    /// __tlb_remove_page: queue a data page for after the flush. True means
    /// the batches are full and the caller must tlbFlushMMU before going on.
    public func removePage(_ page: Page) -> Bool {
        pages.add(page)
    }

    // MARK: - page tables (pte_free_tlb, pmd_free_tlb, pud_free_tlb, p4d_free_tlb)

    /// Free a table of `level` that was unlinked from its parent at `address`.
    /// Sets cleared_* of the level above, as the kernel's *_free_tlb do.
    public func freeTable(_ table: Page, level: Level, address: UInt64) {
        adjustRange(address, 4096)
        switch level {
        case .pte: clearedPMDs = true
        case .pmd: clearedPUDs = true
        case .pud: clearedP4Ds = true
        case .p4d, .pgd: break
        }
        freedTables = true
        // Before 6.14 the destructor ran here, at unlink.
        if dtorAtUnlink { PageTables.dtor(table, allocator: mm.allocator) }
        removeTable(table, unlinkedAt: mm.tlb.currentGeneration)
    }

    // MARK: - flushing

    /// tlb_flush_mmu_tlbonly: flush the range if anything was cleared or
    /// freed, then start a new range.
    public func flushTLBOnly() {
        guard freedTables || clearedPTEs || clearedPMDs || clearedPUDs || clearedP4Ds else { return }
        if !mm.profile.gatherSkipsFlush {
            mm.tlb.flush()
            mm.invalidateSecondaryTLBs(start: start, end: end)
            stats.tlbFlushes += 1
        }
        resetRange()
    }

    /// tlb_flush_mmu: flush, then free tables (to RCU) and data pages.
    public func flushMMU() {
        flushTLBOnly()
        tableFlush()
        stats.pagesFreed += pages.freeAll()
    }

    /// tlb_finish_mmu. A concurrent gather on the same mm (a racing
    /// MADV_DONTNEED, say) may have cleared PTEs this one never saw, so a
    /// nested gather flushes everything.
    public func finish() {
        if mm.tlbFlushPending.load(ordering: .acquiring) > 1 {
            fullmm = true
            resetRange()
            freedTables = true
            stats.nestedFlushes += 1
        }
        flushMMU()
        pages.releaseBatchPages()
        mm.tlbFlushPending.subtract(1, ordering: .acquiringAndReleasing)
        finished = true
    }
}

/// What one gather did.
public struct GatherStats: Sendable, Equatable, Codable {
    public var tlbFlushes = 0
    public var tablesQueued = 0
    public var rcuCallbacks = 0
    public var batchFallbacks = 0
    public var pagesFreed = 0
    public var nestedFlushes = 0
    /// Tables handed to a free path before the flush that follows their unlink.
    public var freedBeforeFlush = 0
}
