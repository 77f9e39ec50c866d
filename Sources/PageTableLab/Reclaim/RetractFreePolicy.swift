/// How the retract of a collapse (retract_page_tables and
/// collapse_pte_mapped_thp, mm/khugepaged.c) frees the PTE table it took
/// from under a PMD that will map the huge page: since 6.6, pte_free_defer.
///
/// `free` is called once the retract has cleared the PMD under the PMD and
/// PTE locks, flushed the range (pmdp_collapse_flush: every CPU's TLB and
/// paging-structure caches) and told the secondary TLBs, and taken the
/// table off VmPTE. The retract holds no mmap lock of the mm, so
/// pte_offset_map walkers holding only RCU may still be inside the table,
/// and take the flush's IPI mid-walk: the table must not be freed (with
/// `PageTables.dtorFree`) before they are gone. It runs where memory cannot
/// be relied on: no allocation.
///
/// The free and the locks came together: 6.6 (Hugh Dickins' "retract
/// page tables without mmap or vma lock") dropped the mmap write locks
/// and moved to pte_free_defer in one series, so a policy says which
/// locks the retract it belongs to takes (`takesMMapWriteLock`).
public protocol RetractFreePolicy: Sendable {
    /// A short name for reports.
    var name: String { get }
    /// The retract holds the mm's mmap write lock: retract_page_tables
    /// trylocks it for each mm and leaves the table where it fails, and
    /// madvise_collapse takes it for collapse_pte_mapped_thp. No walker
    /// holding the mmap read lock is then inside the table when it goes.
    var takesMMapWriteLock: Bool { get }
    func free(_ table: Page, mm: MM)
}

extension RetractFreePolicy {
    public var takesMMapWriteLock: Bool { false }
}

/// pte_free_defer (6.6+): call_rcu on the table's embedded head.
public struct PteFreeDefer: RetractFreePolicy {
    public init() {}
    public var name: String { "defer" }

    public func free(_ table: Page, mm: MM) {
        do throws(RCUError) {
            try mm.pteFreeDefer(table)
        } catch .unregisteredThread {
            // An unregistered updater cannot be in a read section:
            // it waits out a grace period itself, then frees.
            RCU.synchronizeUnchecked()
            PageTables.dtorFree(table, allocator: mm.allocator)
        } catch {
            // Already queued: freeing it here would free it twice
            // (counted in Integrity.doubleQueued).
        }
    }
}

/// Before 6.6: tlb_remove_table_sync_one, then pte_free at once. Safe
/// because the retract holds the mm's mmap write lock (`takesMMapWriteLock`),
/// so no pte_offset_map walker is in the table (before 6.6 every one held
/// the mmap lock); GUP-fast, which holds none, is waited out by the IPI.
/// A walker holding only RCU, which 6.6 made legal (the same series put
/// rcu_read_lock in __pte_offset_map), is not covered.
public struct SyncIPIRetractFree: RetractFreePolicy {
    /// False only for the unsafe mode that frees this way under 6.6+'s
    /// locks, a combination no kernel shipped (MMProfile.check refuses it
    /// unless asked for on purpose): a walker holding the mmap read lock
    /// can then be in the table when it goes.
    public let takesMMapWriteLock: Bool
    public init(takesMMapWriteLock: Bool = true) { self.takesMMapWriteLock = takesMMapWriteLock }
    public var name: String { takesMMapWriteLock ? "ipi-sync" : "ipi-sync-unlocked" }

    public func free(_ table: Page, mm: MM) {
        mm.tlb.syncOne()
        PageTables.dtorFree(table, allocator: mm.allocator)
    }
}

/// Unsafe: pte_free at once, no grace period.
public struct ImmediateRetractFree: RetractFreePolicy {
    public init() {}
    public var name: String { "immediate" }

    public func free(_ table: Page, mm: MM) { PageTables.dtorFree(table, allocator: mm.allocator) }
}

extension RetractFreePolicy where Self == PteFreeDefer {
    public static var pteFreeDefer: PteFreeDefer { PteFreeDefer() }
}

extension RetractFreePolicy where Self == SyncIPIRetractFree {
    public static var syncIPI: SyncIPIRetractFree { SyncIPIRetractFree() }
    /// Unsafe: the pre-6.6 free without the pre-6.6 locks.
    public static var syncIPIUnlocked: SyncIPIRetractFree { SyncIPIRetractFree(takesMMapWriteLock: false) }
}

extension RetractFreePolicy where Self == ImmediateRetractFree {
    public static var immediate: ImmediateRetractFree { ImmediateRetractFree() }
}
