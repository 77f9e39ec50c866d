/// How the retract of a collapse (retract_page_tables and
/// collapse_pte_mapped_thp, mm/khugepaged.c) frees the PTE table it took
/// from under a PMD that will map the huge page: since 6.5, pte_free_defer.
///
/// `free` is called once the retract has cleared the PMD under the PMD and
/// PTE locks, flushed the range (pmdp_collapse_flush: every CPU's TLB and
/// paging-structure caches) and told the secondary TLBs, and taken the
/// table off VmPTE. The retract holds no mmap lock of the mm, so
/// pte_offset_map walkers holding only RCU may still be inside the table,
/// and take the flush's IPI mid-walk: the table must not be freed (with
/// `PageTables.dtorFree`) before they are gone. It runs where memory cannot
/// be relied on: no allocation.
public protocol RetractFreePolicy: Sendable {
    /// A short name for reports.
    var name: String { get }
    func free(_ table: Page, mm: MM)
}

/// pte_free_defer (6.5+): call_rcu on the table's embedded head.
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

/// Before 6.5: tlb_remove_table_sync_one, then pte_free at once. Safe only
/// because the retract then held every mm's mmap write lock, so no
/// pte_offset_map walker could be in the table; GUP-fast is waited out by
/// the IPI. The model's retract takes 6.5+'s locks whatever the policy
/// (see MMProfile.pre6_14), so under this one a walker holding the mmap
/// read lock can still be caught in a freed table.
public struct SyncIPIRetractFree: RetractFreePolicy {
    public init() {}
    public var name: String { "ipi-sync" }

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
}

extension RetractFreePolicy where Self == ImmediateRetractFree {
    public static var immediate: ImmediateRetractFree { ImmediateRetractFree() }
}
