internal import CSupport
import Synchronization

/// pagetable_alloc, the level constructors and pagetable_dtor / _free.
///
/// These run on freeing paths (RCU callbacks, the gather flush, the deferred
/// kernel-table work), so they touch only the descriptor, the allocator's
/// lists and atomics: no allocation.
public enum PageTables {
    /// Lab-wide counters, readable next to /proc/vmstat.
    public static let stats = TableStats()

    /// pagetable_alloc + pagetable_*_ctor: a page that becomes a table,
    /// zeroed unless `zero` is false (GFP_PGTABLE_USER without __GFP_ZERO:
    /// only the bench, whose tables are never linked, asks for that).
    public static func alloc(_ level: Level, mm: MM?, node: NodePreference,
                      allocator: PageAllocator, kernel: Bool = false, zero: Bool = true) throws(MMError) -> Page {
        let page: Page
        do {
            page = try allocator.alloc(node: node, zero: zero)
        } catch {
            throw .outOfMemory(error)
        }
        ctor(page, level: level, mm: mm.map { $0.token }, allocator: allocator, kernel: kernel)
        return page
    }

    /// The level constructor: split ptlock for PTE and PMD tables of user
    /// mms (kernel tables use init_mm's page_table_lock), NR_PAGETABLE.
    @inline(__always)
    static func ctor(_ page: Page, level: Level, mm: UnsafeMutableRawPointer?,
                     allocator: PageAllocator, kernel: Bool = false) {
        let d = page.desc
        ptlab_page_set_mm(d, mm)
        if !kernel && (level == .pte || level == .pmd) { ptlab_ptl_init(d) }
        ptlab_page_set_level(d, UInt32(level.rawValue))
        ptlab_page_mark_table(d, PTLAB_PG_TABLE | (kernel ? PTLAB_PT_KERNEL : 0))
        allocator.accountPageTable(page, delta: 1)
        ptlab_pcp_event_add(ptlab_pcp_counting(), PTLAB_EV_TABLES_ALLOCATED, 1)
    }

    /// pagetable_dtor: ptlock_free and NR_PAGETABLE. Runs once: PG_table
    /// says whether it still has to.
    @inline(__always)
    public static func dtor(_ page: Page, allocator: PageAllocator) {
        let d = page.desc
        guard ptlab_page_test_clear_table(d) != 0 else { return }
        ptlab_ptl_free(d)
        allocator.accountPageTable(page, delta: -1)
    }

    /// pagetable_dtor_free: the destructor if it has not run yet, then the
    /// page goes back to the allocator.
    @inline(__always)
    public static func dtorFree(_ page: Page, allocator: PageAllocator) {
        dtor(page, allocator: allocator)
        recordFreeLatency(page)
        guard release(page, allocator: allocator) else { return }
        ptlab_pcp_event_add(ptlab_pcp_counting(), PTLAB_EV_TABLES_FREED, 1)
    }

    /// Give a page the model owns back to the allocator, on a path that
    /// cannot fail: a refusal (a double free, a page still mapped) is a
    /// bug, counted in `Integrity` rather than thrown. Returns whether the
    /// page was freed.
    @inline(__always) @discardableResult
    public static func release(_ page: Page, allocator: PageAllocator) -> Bool {
        do {
            try allocator.free(page)
            return true
        } catch {
            countRefusal(error)
            return false
        }
    }

    @inline(never)
    private static func countRefusal(_ error: PageAllocError) {
        if case .stillMapped = error {
            Integrity.badPageStateCount.add(1, ordering: .relaxed)
        } else {
            Integrity.freeErrorCount.add(1, ordering: .relaxed)
        }
    }

    /// Mark a table queued for a deferred free; false if it already was (a
    /// second call_rcu on the same head would corrupt liburcu's queue).
    /// Only the path that unlinked the table frees it, so this is a load and
    /// a store, not a compare-and-swap: a locked instruction on a descriptor
    /// not in cache stalls until the line arrives, and that stall was most
    /// of pte_free_defer's cost (BENCHMARKS.md). It catches a table queued
    /// twice, not two threads queueing it at once; the kernel checks
    /// neither.
    @inline(__always)
    public static func markDeferred(_ page: Page) -> Bool {
        let found = ptlab_page_state(page.desc)
        if found == PTLAB_PAGE_ALLOCATED.rawValue { ptlab_page_set_state(page.desc, PTLAB_PAGE_DEFERRED.rawValue) }
        guard found == PTLAB_PAGE_ALLOCATED.rawValue else {
            Integrity.doubleQueuedCount.add(1, ordering: .relaxed)
            return false
        }
        if FreeLatency.samplesNextQueued() { ptlab_page_mark_timed(page.desc, monotonicNanoseconds()) }
        return true
    }

    /// The flag is in the line the free writes anyway, so the test costs
    /// nothing on the frees that were not timed.
    @inline(__always)
    private static func recordFreeLatency(_ page: Page) {
        guard ptlab_page_timed(page.desc) != 0 else { return }
        recordSampledFreeLatency(page)
    }

    /// Out of line: the clock, the lock and the histogram would give every
    /// free a bigger frame and a stack protector.
    @inline(never)
    private static func recordSampledFreeLatency(_ page: Page) {
        let queued = page.desc.pointee.queued_ns
        ptlab_page_clear_flags(page.desc, PTLAB_PG_TIMED)
        FreeLatency.record(nanoseconds: monotonicNanoseconds() &- queued)
    }
}

/// Counters of table births and deaths across the lab. Births and deaths
/// are counted per thread (they happen on freeing paths) and summed here.
public final class TableStats: Sendable {
    public var allocated: Int { Int(ptlab_pcp_sum_event(PTLAB_EV_TABLES_ALLOCATED)) }
    public var freed: Int { Int(ptlab_pcp_sum_event(PTLAB_EV_TABLES_FREED)) }
}
