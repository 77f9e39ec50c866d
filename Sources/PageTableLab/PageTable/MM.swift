// PageTable/: mm_struct, its page tables and VMAs, and everything that walks
// or changes them.
//
// What it models: x86-64 page tables (4 levels, P4D folded into the PGD; 5
// with LA57) built from allocator pages, whose entries hold a PFN and _PAGE_*
// bits, so that a stale entry leads into a real freed page. It follows
// mm/memory.c (handle_mm_fault and __pte_alloc, unmap_page_range and
// zap_pte_range, free_pgtables and free_pgd_range), mm/pt_reclaim.c
// (try_to_free_pte), mm/pgtable-generic.c (pte_offset_map_lock), mm/gup.c
// (gup_fast_pte_range), mm/vma.c (munmap's detach and downgrade),
// mm/huge_memory.c, mm/khugepaged.c (MADV_COLLAPSE, the retract), mm/mremap.c,
// mm/mprotect.c, and for init_mm arch/x86/mm (pgd_ctor, preallocate_vmalloc_pages,
// pmd_free_pte_page, pud_free_pmd_page, remove_pagetable, cpa_collapse_large_pages).
//
// Who holds what (KERNEL-NOTES section 9):
//  - mmap_lock (MMapLock): write for mmap, munmap, mremap, mprotect,
//    MADV_HUGEPAGE and the anonymous collapse; munmap detaches its VMAs
//    under write, then downgrades to read to zap and free_pgtables; read for
//    the shmem collapse, and MADV_DONTNEED over several VMAs or before 6.17.
//    A writer also write-locks each VMA it changes, and each neighbour a
//    merge may change (VMALocks), until it unlocks or downgrades.
//  - per-VMA locks (6.4+, VMALock.swift): a fault locks only its VMA, and so
//    does MADV_DONTNEED inside one VMA (6.17+); both fall back to the mmap
//    read lock when a writer holds that VMA.
//  - the rmap lock (anon_vma / i_mmap; one per mm here): free_pgtables
//    unlinks the VMAs under it before freeing their tables; the shmem retract
//    holds it and no mmap_lock at all.
//  - mm->page_table_lock: populating PGD, P4D and PUD entries.
//  - exit_mmap (5.19+): mmu_notifier_release first, holding nothing; the
//    read lock for unmap_vmas, beside which the OOM reaper (OOMReap.swift,
//    also process_mrelease) may zap; MMF_OOM_SKIP; the write lock for
//    free_pgtables, which waits the reaper out. The reaper sets
//    MMF_UNSTABLE before it zaps; an anonymous fault checks it under the
//    lock it would map with. The PGD goes with the mm's last reference
//    (mm_count: an SVA bond or a reaper holds one).
//  - split ptlocks in the ptdesc, for the PMD and PTE tables of user mms: a
//    PMD entry is populated or cleared under its PMD table's lock wherever
//    another updater may race (free_pgtables, whose VMAs no one else can
//    find, does without), and every PTE-level updater reaches its table as
//    pte_offset_map_lock does (RCU, read the PMD, lock, pmd_same re-check).
//  - nothing, for lockless walkers: GUP-fast (IRQs off: an IPI or a grace
//    period waits for it), pte_offset_map (RCU only), the MMU and the IOMMU
//    (only flushes and invalidations). LockContext names these.
//
// The rules: a table is unlinked (its parent entry cleared under the lock
// that guards it), taken off VmPTE (accountTable: mm_dec_nr_ptes and
// friends), and only then handed to a free path: an mmu_gather,
// pte_free_defer, or, for init_mm, pagetable_free. The code that unlinked a
// table never frees it itself. Freeing paths allocate nothing:
// PageTables.dtor and dtorFree touch only the descriptor and the allocator.
// The ptlock and NR_PAGETABLE go with the free (pagetable_dtor in
// __tlb_remove_table, 6.14+) unless a profile asks for the old dtor at
// unlink. Every entry is read and written with one atomic access (EntrySlot,
// READ_ONCE/WRITE_ONCE): a torn entry would be a PFN that never existed.
//
// Files:
//   MM.swift, MMProfile.swift      mm_struct (locks, VmPTE, levels); the kernel it behaves as
//   Entry.swift, EntrySlot.swift   pte_t, _PAGE_* flags, Level; ptep_get, set_pte, xchg
//   PageTables.swift               pagetable_alloc and the ctors; pagetable_dtor(_free)
//   Fault.swift, UserAccess.swift  handle_mm_fault, __pte_alloc; a user program's store
//   Syscalls.swift, Zap.swift      mmap, munmap, madvise, exit_mmap; zap_pte_range, try_to_free_pte
//   OOMReap.swift                  the OOM reaper's (and process_mrelease's) zap beside exit_mmap
//   Guard.swift                    MADV_GUARD_INSTALL / _REMOVE: markers that keep tables from PT_RECLAIM
//   FreePgtables.swift             free_pgtables, free_pgd_range and the levels below
//   PTEMapLock.swift, Walkers.swift   updaters' pte_offset_map_lock; GUP-fast, pte_offset_map, MMU
//   LockContext.swift, MMapLock.swift, Rmap.swift   walker contexts; mmap_lock; rmap ranges
//   Mapcount.swift                 a data page's mapcount, which the allocator checks at free
//   HugePMD.swift, THPSettings.swift   THP fault, deposit, split, zap; the sysfs policy
//   Collapse.swift                 MADV_COLLAPSE: collapse_huge_page, collapse_file, the retract
//   Mremap.swift, Mprotect.swift, VMA.swift   move_page_tables; change_protection; VMAs
//   MMUNotifier.swift, TablesHeld.swift, MMError.swift   secondary TLBs; tables vs VmPTE; errors
//   InitMM.swift, KernelLayout.swift, KernelVmap.swift, MemoryHotplug.swift,
//   CPACollapse.swift              init_mm and the four kernel functions that free kernel tables

internal import CSupport
import Synchronization

/// mm_struct: an address space whose page tables live in allocator pages.
///
/// Updaters (fault, mmap, munmap, madvise, collapse, exit) follow the kernel's
/// locking: mmap_lock, mm->page_table_lock for the upper levels, split ptlocks
/// for PMD and PTE tables. Lockless walkers take none of these.
public final class MM: @unchecked Sendable {
    public let allocator: PageAllocator
    public let profile: MMProfile
    /// Where this mm's page tables come from (default: the faulting CPU's node).
    public let tableNode: NodePreference
    public let pgd: Page
    public let mmapLock = MMapLock()
    /// The rmap lock (anon_vma / i_mmap, one for the mm here) and what it
    /// guards: which ranges rmap walkers can still find.
    public let rmapLock = MMapLock()
    /// The per-VMA locks (VMALocks), for profiles that have them.
    let vmaLocks = VMALocks()
    let rmap = LabMutex(RmapRanges())
    /// mm->page_table_lock: guards populating PGD/P4D/PUD entries.
    let pageTableLock = LabMutex<Void>(())
    let vmaTree = LabMutex(VMATree())
    /// mm->pgtables_bytes (VmPTE): PTE, PMD and PUD tables, 4 KiB each.
    let pgtablesBytesCounter = Atomic<Int>(0)
    /// mm->tlb_flush_pending: gathers in flight on this mm.
    let tlbFlushPending = Atomic<Int>(0)
    public let tlb: TLBModel
    /// The identity stored in each table's pt_mm.
    var token: UnsafeMutableRawPointer { Unmanaged.passUnretained(self).toOpaque() }
    private let exited = Atomic<Bool>(false)
    /// mm_count: the references that keep the mm_struct, and with it the
    /// PGD, past exit_mmap. exit() holds the first (mm_users' share); an
    /// SVA bond holds one from bind to unbind (mmu_notifier_register's
    /// mmgrab). The PGD goes with the last (__mmdrop → mm_free_pgd; the
    /// kernel reaches it from an unbind through an SRCU callback, the model
    /// at once).
    private let mmCount = Atomic<Int>(1)
    /// What the last munmap/madvise/exit gather did (for tests and reports).
    /// (Several updaters may finish gathers at once under the read lock.)
    public internal(set) var lastGather: GatherStats {
        get { lastGatherStats.withLock { $0 } }
        set { lastGatherStats.withLock { $0 = newValue } }
    }
    private let lastGatherStats = LabMutex(GatherStats())
    let notifiers = LabMutex(NotifierList())
    /// Deposited PTE tables (pmd_huge_pte): for each PMD table, the tables
    /// held for the huge PMDs it maps, one each, to split them with.
    let deposits = LabMutex<[UInt32: [Page]]>([:])
    /// The shmem files some VMA of this mm maps.
    let mappedFiles = LabMutex<[ObjectIdentifier: ShmemFile]>([:])
    /// Transparent-hugepage events, as /proc/vmstat counts them.
    public let thpEvents = THPEvents()
    public let vmaLockEvents = VMALockEvents()
    /// Updates an updater made to a PTE table already unlinked, or made on
    /// the strength of a PMD check another updater's unlink had made stale:
    /// possible only without pte_offset_map_lock's pmd_same re-check, or
    /// with collapse_huge_page checking before it write-locks the VMA.
    public let staleTableWrites = Atomic<Int>(0)
    /// Zaps that met a page table freed under their walk: an updater holding
    /// a lock that should have kept the table linked (the OOM reaper's mmap
    /// read lock, against an exit_mmap that freed without the write lock).
    public let zapsOfFreedTables = Atomic<Int>(0)
    /// MMF_OOM_SKIP: exit_mmap is past unmapping, and the OOM reaper leaves
    /// the mm alone.
    let oomSkip = Atomic<Bool>(false)
    /// MMF_UNSTABLE: the OOM reaper has begun zapping the mm's private
    /// memory, so what it held is gone. An anonymous fault that would map a
    /// page there now gets SIGBUS (check_stable_address_space, under the
    /// lock it would install the entry with) rather than a zeroed page
    /// where the data was: a thread still using the mm (one not yet dead, a
    /// kthread working on it) must not read zeros as its data.
    let unstable = Atomic<Bool>(false)
    public var isUnstable: Bool { unstable.load(ordering: .acquiring) }
    /// A reap of this mm has finished (the detector's state, no kernel
    /// flag): a fault that begins after it must not map private memory.
    let reapFinished = Atomic<Bool>(false)
    /// Faults that began after a reap had finished and mapped private
    /// memory all the same: possible only with `faultsIgnoreUnstable`
    /// (detector `reaped_refault`). A fault already under way when the
    /// reap ran may map legitimately: the reaper skips an empty PMD
    /// without its lock, and a fault that checked the flag before it was
    /// set installs there after.
    public let refaultsAfterReap = Atomic<Int>(0)
    /// Tests only: run as an updater passes a `RaceWindow`, with the
    /// address it works on, so that a test can make there, every time, the
    /// change another thread may make in that window. Set before the mm is
    /// shared between threads; nil outside such a test.
    var raceWindowHook: (@Sendable (RaceWindow, UInt64) -> Void)?

    /// The highest user address + 1 (TASK_SIZE).
    public var taskSize: UInt64 { profile.fiveLevel ? 1 << 56 : 1 << 47 }

    /// `kernel`: share init_mm's upper half, as every x86 process does
    /// (needed for an IOMMU bound through SVA to see kernel mappings).
    public init(allocator: PageAllocator, profile: MMProfile = .v6_14,
                tableNode: NodePreference = .local, kernel: InitMM? = nil) throws(MMError) {
        try profile.check()
        self.allocator = allocator
        self.profile = profile
        self.tableNode = tableNode
        self.tlb = TLBModel(kind: profile.tlbFlush)
        if let kernel, kernel.layout.fiveLevel != profile.fiveLevel { throw .pagingModeMismatch(mmFiveLevel: profile.fiveLevel) }
        do {
            pgd = try allocator.alloc(node: tableNode, zero: true)
        } catch {
            throw .outOfMemory(error)
        }
        PageTables.ctor(pgd, level: .pgd, mm: Unmanaged.passUnretained(self).toOpaque(), allocator: allocator)
        kernel?.cloneKernelEntries(into: pgd)
    }

    public var pgtablesBytes: Int { pgtablesBytesCounter.load(ordering: .relaxed) }
    /// VmPTE as /proc/PID/status prints it.
    public var vmPTEKilobytes: Int { pgtablesBytes >> 10 }
    public var vmas: [VMA] { vmaTree.withLock { $0.vmas } }
    public var hasExited: Bool { exited.load(ordering: .acquiring) }

    // MARK: - levels

    /// The levels a walk visits, top first: P4D is folded into the PGD with
    /// 4-level paging, as on x86 without LA57.
    public var levels: [Level] { profile.fiveLevel ? [.pgd, .p4d, .pud, .pmd, .pte] : [.pgd, .pud, .pmd, .pte] }

    /// The level of the table a `level` entry points to.
    @inlinable public func childLevel(of level: Level) -> Level? {
        if level == .pgd && !profile.fiveLevel { return .pud }
        return level.below
    }

    /// Address bits decoded by a table of `level`.
    @inlinable public func shift(_ level: Level) -> Int {
        level == .pgd && !profile.fiveLevel ? Level.p4d.shift : level.shift
    }

    /// Bytes one table of `level` spans.
    @inlinable public func tableSpan(_ level: Level) -> UInt64 { 1 << UInt64(shift(level) + 9) }

    /// The entry of `table` (a table of `level`) that maps `address`.
    func entry(in table: Page, level: Level, address: UInt64) -> UnsafeMutablePointer<UInt64> {
        entry(inTableAt: allocator.address(of: table), level: level, address: address)
    }

    func entry(inTableAt base: UnsafeMutableRawPointer, level: Level, address: UInt64) -> UnsafeMutablePointer<UInt64> {
        base.assumingMemoryBound(to: UInt64.self) + Int((address >> UInt64(shift(level))) & 511)
    }

    // MARK: - accounting (mm_inc_nr_ptes and friends)

    /// mm_inc_nr_ptes / mm_dec_nr_ptes (and the PMD and PUD ones): VmPTE
    /// follows the tables an mm links. Whoever unlinks a table takes it off
    /// (`-1`) before handing it to a gather or a free, as free_pte_range
    /// does after pte_free_tlb.
    public func accountTable(_ level: Level, _ delta: Int) {
        switch level {
        case .pte, .pmd, .pud: pgtablesBytesCounter.add(delta * 4096, ordering: .relaxed)
        case .p4d, .pgd: break
        }
    }

    func markExited() -> Bool { !exited.exchange(true, ordering: .acquiringAndReleasing) }

    /// mmgrab, refused once the last reference has gone (the PGD with it).
    func grab() -> Bool {
        var count = mmCount.load(ordering: .relaxed)
        while count > 0 {
            let (exchanged, found) = mmCount.compareExchange(expected: count, desired: count + 1, ordering: .acquiringAndReleasing)
            if exchanged { return true }
            count = found
        }
        return false
    }

    /// mmdrop: the last reference frees the PGD.
    func drop() {
        let left = mmCount.subtract(1, ordering: .acquiringAndReleasing).newValue
        precondition(left >= 0, "mmdrop of an mm with no reference left")
        if left == 0 { PageTables.dtorFree(pgd, allocator: allocator) }
    }

    /// An updater is in `window` at `address` (see `raceWindowHook`).
    func raceWindow(_ window: RaceWindow, _ address: UInt64) {
        raceWindowHook?(window, address)
    }
}

/// Where an updater acts on what it saw before taking (or retaking) the
/// lock that guards it, and the kernel looks again once it holds that lock.
/// Another thread may change things in between; a test reaches each window
/// through `MM.raceWindowHook`.
enum RaceWindow: Sendable {
    /// collapse_file has its huge folio and has not locked the page cache
    /// to swap it in: another collapse of the range may swap first.
    case collapseFileBeforeSwap
    /// collapse_file has the range's folios locked and the huge folio in
    /// the page cache, and has not unmapped the old pages: they are still
    /// mapped, and a store through a mapping goes into them.
    case collapseFileBeforeUnmap
    /// collapse_file has unmapped the old pages everywhere and copied them,
    /// and has not retracted the tables that mapped them: the huge folio is
    /// still locked, and a fault on the range waits for it.
    case collapseFileBeforeRetract
    /// A shmem fault found the folio it needs locked, and is about to wait
    /// for it.
    case faultFolioLocked
    /// A shmem fault found no folio for its page in the page cache, and has
    /// not put a new one in yet: a collapse may put its huge folio over the
    /// index meanwhile.
    case faultCacheMissed
    /// madvise_collapse has dropped the mmap lock for collapse_file and not
    /// yet retaken it for collapse_pte_mapped_thp: the mapping may change.
    case collapseMmapUnlocked
    /// collapse_pte_mapped_thp has retracted the PTE table and dropped the
    /// PMD lock; set_huge_pmd has not taken it again.
    case collapseBeforeInstall
    /// zap_pmd_range has seen a huge PMD without its lock; zap_huge_pmd has
    /// not taken it yet.
    case zapHugePMDUnlocked
    /// __split_huge_pmd_locked has invalidated an anonymous huge PMD and
    /// holds the PMD lock, and has not filled the PTE table that replaces
    /// it.
    case splitHugePMDInvalidated
    /// pte_offset_map_lock has found its PTE table under RCU and has not
    /// taken its lock: the table may be freed, and reused, meanwhile.
    case pteOffsetMapLockBeforeLock
    /// move_page_tables has the PTE table at the new address and has not
    /// locked it: without the rmap lock, a collapse's retract may take it.
    case mremapBeforeMovePTEs
    /// collapse_huge_page has checked the PMD under the mmap write lock and
    /// not yet flushed it. With collapseChecksBeforeVMAWrite the VMA is not
    /// write-locked yet, and a DONTNEED under its lock may reclaim the
    /// table meanwhile; in the kernel's order it is.
    case collapseChecked
    /// A writer holds the mmap write lock and has write-locked its VMAs,
    /// and has changed nothing yet.
    case writeLocked
    /// MADV_DONTNEED holds its lock (its VMA's, or the mmap read lock) and
    /// has zapped nothing yet: under the VMA's alone, writers of other VMAs
    /// may run meanwhile.
    case dontneedLocked
    /// munmap has taken its VMAs out of the tree and downgraded the mmap
    /// lock, and has zapped nothing yet: the VMAs are in no tree, but still
    /// in their files' rmap, and their entries still map pages.
    case munmapDetached
    /// The OOM reaper holds the mmap read lock and has found the mm not yet
    /// MMF_OOM_SKIP, and has zapped nothing.
    case oomReaping
    /// MADV_GUARD_INSTALL has found or put a PTE table under the PMD and
    /// has not locked it: PT_RECLAIM may take the (empty) table meanwhile.
    case guardTableReached
    /// A fault has the page (or huge folio) it will map and has not taken
    /// the lock it maps under: a reap may run meanwhile.
    case faultPageAllocated
    /// A zap has stepped down into a PMD table and read nothing from it
    /// yet (the address is where the table's span starts).
    case zapInPMDTable
    /// exit_mmap has unmapped every VMA and set MMF_OOM_SKIP, and has not
    /// taken the lock it frees the tables under.
    case exitUnmapped
}
