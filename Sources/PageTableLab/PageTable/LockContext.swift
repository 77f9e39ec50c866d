/// What protects a walker of the page tables while it is inside them: the
/// lock it holds, or none. Which frees a walker must survive follows from
/// it (KERNEL-NOTES §9):
///
/// - `irqsOff` (GUP-fast): no lock, IRQs off. A TLB-flush IPI waits for it
///   (on x86 native), and so does tlb_remove_table_sync_one, and RCU (IRQs
///   off is a read section). A flush that sends no IPI does not.
/// - `rcu` (pte_offset_map relying on RCU alone): against every free that
///   runs without the mmap write lock (khugepaged's retract, PT_RECLAIM
///   under the mmap read lock or, 6.17+, its VMA's lock alone, munmap's
///   zap after its downgrade) only a grace period protects it. It
///   holds the mmap read lock, since every kernel caller of pte_offset_map
///   that walks with IRQs on holds that or a lock that keeps out the same
///   writers (the per-VMA lock, the rmap lock; the lockless ones, GUP-fast
///   and perf_get_pgtable_size, run with IRQs off: `irqsOff`). A table
///   unlinked under the write lock, like the one collapse_huge_page
///   deposits and zap_huge_pmd later frees with a plain pte_free, is out
///   of its reach. But it looks up no VMA, so it also walks the tables of
///   VMAs munmap has detached and not yet freed.
/// - `mmapRead`: holds the mmap read lock, and walks only inside a VMA it
///   found under it. munmap, mremap and mprotect exclude it (munmap detaches
///   its VMAs before downgrading); faults, MADV_DONTNEED and collapse do
///   not, so PT_RECLAIM's frees must still wait for a grace period.
/// - `rmap`: holds the rmap lock (anon_vma / i_mmap) and walks only VMAs
///   still linked there: free_pgtables unlinks a VMA under that lock before
///   freeing its tables, and mremap's moves hold it.
/// - `hardware` (the MMU, an IOMMU): no lock and no read section; only
///   flushes and invalidations protect it.
public enum LockContext: String, Sendable, Codable, CaseIterable {
    case irqsOff = "irqs-off"
    case rcu
    case mmapRead = "mmap-read"
    case rmap
    case hardware
}
