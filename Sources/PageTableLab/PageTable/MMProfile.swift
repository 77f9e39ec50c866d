/// How the modelled kernel frees page tables. The safe defaults are the
/// kernel as of 6.14+; each alternative is a kernel before a fix (or a bug
/// injected on purpose), so a detector can be shown to fire.
public struct MMProfile: Sendable {
    /// When a page table's destructor (ptlock teardown, NR_PAGETABLE) runs.
    public enum Dtor: String, Sendable, Codable, CaseIterable {
        /// 6.14+: in __tlb_remove_table, with the free, after the grace period.
        case atFree = "dtor-at-free"
        /// Before 6.14: at unlink, so a racing pte_offset_map_lock() can take
        /// a ptlock that was already freed (seed 003).
        case atUnlink = "dtor-at-unlink"
    }

    public var fiveLevel = false
    /// How TLB flushes reach other CPUs (module parameter tlb_flush).
    public var tlbFlush = TLBFlushKind.ipi
    /// Fault injection: the pmd_same re-check of pte_offset_map_lock is
    /// skipped, so an updater may change a PTE table another updater has
    /// just unlinked (the unsafe mode of the race scenario).
    public var skipPMDRecheck = false
    /// A combination no kernel shipped, asked for on purpose (an unsafe
    /// mode): `check` lets it through.
    public var deliberatelyUnsafe = false
    /// CONFIG_PT_RECLAIM: MADV_DONTNEED frees PTE tables it emptied.
    public var ptReclaim = true
    /// How a gather frees the tables it is given.
    public var tableFree: any TableFreePolicy = .rcu
    /// Fault injection: the gather never flushes the TLB (tables are still
    /// freed after a grace period): a CPU's paging-structure cache keeps
    /// pointing at a freed table.
    public var gatherSkipsFlush = false
    public var dtor = Dtor.atFree
    /// Fault injection: every table-batch page allocation fails.
    public var failBatchAllocation = false
    /// How the retract of a collapse frees the PTE table it took.
    public var collapseFree: any RetractFreePolicy = .pteFreeDefer
    /// The transparent-hugepage policy faults follow (sysfs).
    public var thp = THPSettings()
    /// mremap realigns a move down to a PMD boundary when nothing is mapped
    /// below it (move_page_tables' try_realign_addr, 6.7+), so that whole
    /// PTE tables move instead of their entries.
    public var mremapRealign = true
    /// A MREMAP_FIXED move that does not resize moves every VMA of its
    /// range, gaps kept (remap_move, 6.17+); before, a range spanning more
    /// than one VMA is EFAULT.
    public var mremapMovesVMAs = true
    /// __GFP_ZERO's clear_page when an anonymous fault allocates its page.
    /// Nothing in the model reads a data page back, but the clearing is
    /// part of the window between the fault's PMD read and its ptlock that
    /// a racing MADV_DONTNEED can hit, so concurrent runs keep it; a
    /// replay with one updater thread (`ptlab compare`) has no such race
    /// and turns it off, a fifth of its time.
    public var clearsFaultedPages = true
    /// CONFIG_PER_VMA_LOCK (6.4+): a page fault locks only its VMA
    /// (lock_vma_under_rcu), so it runs beside writers holding the mmap
    /// write lock for other VMAs; without it, faults take the mmap read
    /// lock.
    public var perVMALock = true
    /// MADV_DONTNEED under its VMA's lock alone (get_lock_mode's
    /// MADVISE_VMA_READ_LOCK, 6.17+) when the range lies inside one VMA:
    /// it then runs beside writers of other VMAs, and PT_RECLAIM frees PTE
    /// tables with no mmap lock held. Needs `perVMALock`; without it,
    /// DONTNEED takes the mmap read lock.
    public var madviseVMALock = true
    /// Fault injection: collapse_huge_page checks the PMD before it
    /// write-locks the VMA, as 6.17-rc1 did, so a DONTNEED under that VMA's
    /// lock (madviseVMALock) can reclaim the PTE table after the check.
    public var collapseChecksBeforeVMAWrite = false
    /// Fault injection: exit_mmap frees the page tables holding only the
    /// mmap read lock, which an OOM reaper (or process_mrelease) zapping the
    /// mm holds too, so a table can be freed under the reaper's walk. The
    /// kernel has excluded the reaper there ever since the two could run
    /// together ("mm: oom: let oom_reap_task and exit_mmap run
    /// concurrently", 4.16): with MMF_OOM_SKIP and a write lock taken and
    /// dropped, and since "mm: drop oom code from exit_mmap" (5.19) with the
    /// write lock held across free_pgtables.
    public var exitFreesTablesUnderReadLock = false
    /// Fault injection: an anonymous fault maps a page in memory the OOM
    /// reaper has reaped, as before "mm: make sure that kthreads will not
    /// refault oom reaped memory" (2016) brought MMF_UNSTABLE: a thread
    /// still using the mm reads zeros where its data was, with nothing to
    /// say so.
    public var faultsIgnoreUnstable = false
    /// MADV_GUARD_INSTALL and MADV_GUARD_REMOVE (6.13+).
    public var guardRegions = true
    /// Guard regions in file mappings too (6.15+), shmem here; 6.13 and
    /// 6.14 refuse them (EINVAL).
    public var guardFileMappings = true

    public init() {}

    /// Refuse a profile that claims to be a kernel when no kernel ever was
    /// one: PT_RECLAIM with the ipi-sync fallback, or the pre-6.6 retract's
    /// free without its locks (SyncIPIRetractFree). PT_RECLAIM frees PTE
    /// tables under the mmap *read* lock (6.17+: the VMA's alone), where
    /// pte_offset_map walkers hold
    /// only RCU, and the sync IPI does not wait for them; the series that
    /// brought PT_RECLAIM made tlb_remove_table_one use call_rcu for that
    /// reason (seed 003).
    public func check() throws(MMError) {
        guard !deliberatelyUnsafe else { return }
        if ptReclaim && (tableFree as? RCUTableFree)?.fallback == .ipiSync {
            throw .unshippedProfile("PT_RECLAIM with the ipi-sync fallback of tlb_remove_table_one: PT_RECLAIM frees tables under the mmap read lock, where pte_offset_map walkers hold only RCU, which the sync IPI does not wait for; no kernel shipped it (seed 003: the series made the fallback call_rcu)")
        }
        if let retract = collapseFree as? SyncIPIRetractFree, !retract.takesMMapWriteLock {
            throw .unshippedProfile("the pre-6.6 retract's free (the sync IPI, then pte_free) without its mmap write locks: a pte_offset_map walker holding the mmap read lock can be inside the table, and the IPI does not wait for it; no kernel shipped it (6.6 dropped the locks and moved to pte_free_defer together)")
        }
    }

    /// Kernel `version`'s profile: each behaviour the model knows as the
    /// release that brought it left it. `ptReclaim` is CONFIG_PT_RECLAIM
    /// (6.14+, x86's default there; before 6.14 no kernel had it, and a
    /// comparison asks for it only when told to). The fault injections
    /// keep their defaults.
    public static func forKernel(_ version: KernelVersion, ptReclaim: Bool) -> MMProfile {
        func since(_ major: Int, _ minor: Int) -> Bool { version >= KernelVersion(major, minor) }
        var p = MMProfile()
        p.ptReclaim = ptReclaim
        // Without PT_RECLAIM a batch-page failure sends the sync IPI.
        if !ptReclaim { p.tableFree = .rcu(fallback: .ipiSync) }
        p.perVMALock = since(6, 4)
        p.collapseFree = since(6, 6) ? .pteFreeDefer : .syncIPI
        p.mremapRealign = since(6, 7)
        p.guardRegions = since(6, 13)
        p.dtor = since(6, 14) ? .atFree : .atUnlink
        p.guardFileMappings = since(6, 15)
        p.madviseVMALock = since(6, 17)
        p.mremapMovesVMAs = since(6, 17)
        return p
    }

    /// The kernel this machine runs (6.18: PT_RECLAIM from 6.14, per-VMA
    /// MADV_DONTNEED and mremap of several VMAs from 6.17).
    public static let v6_14 = MMProfile()

    /// Debian's 6.1, which the VM check compares with: no PT_RECLAIM, the
    /// dtor at unlink, the sync IPI when a batch page cannot be had, no
    /// mremap realignment, and the pre-6.6 retract (its free after the
    /// sync IPI, under each mm's mmap write lock).
    public static var pre6_14: MMProfile { forKernel(KernelVersion(6, 1), ptReclaim: false) }
}
