// Reclaim/: the deferred frees that run outside an mmu_gather.
//
// Two kernel mechanisms free a page table well after the code that unlinked
// it has moved on, both from places where memory cannot be relied on, so
// neither may allocate: each queues the table through a node embedded in
// its own descriptor.
//
// pte_free_defer (mm/pgtable-generic.c; seed 004). khugepaged's retract
// (retract_page_tables, collapse_pte_mapped_thp in mm/khugepaged.c) clears
// the PMD under the PMD and PTE locks, flushes (pmdp_collapse_flush), drops
// the locks, mm_dec_nr_ptes, and then frees the PTE table with call_rcu on
// the ptdesc's pt_rcu_head; pte_free_now finds the ptdesc again and runs
// pagetable_dtor_free. The retract holds no mmap_lock of the mm it takes
// the table from, so a pte_offset_map walker holding only rcu_read_lock may
// still be inside it, and it took the flush's IPI mid-walk: only a grace
// period waits for it. Here: MM.pteFreeDefer, which the retract reaches
// through MMProfile.collapseFree (a RetractFreePolicy: .pteFreeDefer, 6.6+;
// .syncIPI, before 6.6, when the retract still held the mmap write lock,
// which the policy makes the retract take; .immediate, unsafe).
//
// PT_RECLAIM (mm/pt_reclaim.c) lives elsewhere: try_to_free_pte is in
// PageTable/Zap.swift, and its tables go through the mmu_gather (Gather/),
// whose tlb_remove_table_one falls back to call_rcu on the table itself for
// the same reason: it frees under the mmap read lock.
//
// pagetable_free_kernel (mm/pgtable-generic.c, CONFIG_ASYNC_KERNEL_PGTABLE_FREE;
// seeds 000-002, 6.19). pagetable_free sends a kernel table (ptdesc kernel
// bit) here: list_add of its pt_list on one static list under a spinlock,
// then schedule_work, unconditionally (a no-op while the work is pending,
// and cheap next to the TLB flush that came before). The work splices the
// list under the lock, calls iommu_sva_invalidate_kva_range(PAGE_OFFSET,
// TLB_FLUSH_ALL) once for the whole batch, waits for it, and only then
// frees every table on the list, whatever its order (seed 002: one list).
// A batch whose invalidation never completes is kept, never freed
// (tables_stranded). Here: KernelPageTableFree, with KernelTableFreePolicy
// choosing .deferred (the fix), .perPage, or .noInvalidate (before it).
//
// The rules: no allocation on these paths (Work.schedule allocates
// nothing; the head and the list node are in the ptdesc, and they share
// storage, so a table is on one of them at most). A table is marked
// DEFERRED once (PageTables.markDeferred): a second queueing would corrupt
// liburcu's queue or the list, and is refused and counted in Integrity.
// The destructor runs with the free, in the callback or the work.
//
// Files:
//   PteFreeDefer.swift         MM.pteFreeDefer and pte_free_now
//   RetractFreePolicy.swift    how the retract frees its table; the kernel's three ways
//   KernelPageTableFree.swift  pagetable_free, pagetable_free_kernel and the work; the policies
//   Work.swift                 a work item with schedule_work and flush_work semantics
//   FreeLatency.swift          queue-to-free latency of deferred frees, one in 256 per thread

internal import CSupport

extension MM {
    /// pte_free_defer: free a PTE table after a grace period, through the
    /// rcu_head embedded in its descriptor. Allocates nothing: its caller
    /// (khugepaged's retract) runs where memory cannot be relied on. The
    /// destructor runs in the callback with the free: even before 6.14 this
    /// path never split them (the dtor-at-unlink bug was the gather's).
    public func pteFreeDefer(_ table: Page) throws(RCUError) {
        guard PageTables.markDeferred(table) else { throw .alreadyQueued(operation: "pte_free_defer") }
        try RCU.call(ptlab_ptdesc_rcu_head(table.desc), bytes: 4096, pteFreeNow)
    }
}

/// pte_free_now: container_of back to the ptdesc, then pagetable_dtor_free.
func pteFreeNow(_ head: UnsafeMutablePointer<ptlab_rcu_head>?) {
    guard let head else { return }
    _ = PageAllocator.withLoaded { PageTables.dtorFree(Page(ptlab_ptdesc_of_rcu(head)), allocator: $0) }
}
