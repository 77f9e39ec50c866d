import CSupport

/// The page-table freeing paths end to end: from the first free to the last
/// table back in the allocator (the run ends with a barrier, as the C
/// baselines do). The tables are allocated, and zeroed as pte_alloc zeroes
/// them, before the clock starts: what is measured begins where the
/// kernel's path does, at a table that exists. C's malloc stays inside its
/// loop, because that allocation is what an rcu_head embedded in the
/// descriptor saves.
extension Bench {
    /// pte_free_defer, one call_rcu per table on the descriptor's own head:
    /// held against call_rcu_per_sec_c (malloc + call_rcu + free).
    @inline(never)
    static func deferTablesPerSec(_ count: Int, mm: MM, allocator: PageAllocator) throws -> Double {
        let errorsBefore = PageTables.stats.freeErrors.load(ordering: .relaxed)
        let tables = try allocTables(count, mm: mm, allocator: allocator)
        let t0 = nowNs()
        try deferTables(tables[...], mm: mm)
        try RCU.barrier()
        let seconds = (nowNs() - t0) / 1e9
        try checkNoFreeErrors(since: errorsBefore)
        return Double(count) / seconds
    }

    /// The loop alone, without the barrier: the scaling runs split the
    /// tables between producer threads. On an error the tables not yet
    /// deferred are freed, and every deferred one has run, before it throws.
    @inline(never)
    static func deferTables(_ tables: ArraySlice<Page>, mm: MM) throws {
        for i in tables.indices {
            do {
                try mm.pteFreeDefer(tables[i])
            } catch {
                for table in tables[i...] { PageTables.dtorFree(table, allocator: mm.allocator) }
                try? RCU.barrier()
                throw error
            }
        }
    }

    /// pte_alloc for `count` PTE tables of `mm` (never linked into it), at
    /// distinct 2 MiB bases. What a failure leaves allocated is freed.
    static func allocTables(_ count: Int, mm: MM, allocator: PageAllocator) throws -> [Page] {
        var tables: [Page] = []
        tables.reserveCapacity(count)
        do {
            for i in 0..<count {
                tables.append(try PageTables.alloc(.pte, base: UInt64(i) << 21, mm: mm, node: .local, allocator: allocator))
            }
        } catch {
            for table in tables { PageTables.dtorFree(table, allocator: allocator) }
            throw error
        }
        return tables
    }

    /// The unmap path: every table through one mmu_gather's freeTable (509
    /// to a batch page, one call_rcu per batch), tlb_finish_mmu, the
    /// callbacks, the frees. Held against c_batch_frees_per_sec.
    @inline(never)
    static func gatherTablesPerSec(_ count: Int, mm: MM, allocator: PageAllocator) throws -> (perSec: Double, callbacksPerTable: Double) {
        let errorsBefore = PageTables.stats.freeErrors.load(ordering: .relaxed)
        let tables = try allocTables(count, mm: mm, allocator: allocator)
        let t0 = nowNs()
        let gather = MMUGather(mm: mm)
        for (i, table) in tables.enumerated() {
            gather.freeTable(table, level: .pte, address: UInt64(i) << 21)
        }
        gather.finish()
        try RCU.barrier()
        let seconds = (nowNs() - t0) / 1e9
        try checkNoFreeErrors(since: errorsBefore)
        guard gather.stats.tablesQueued == count else {
            throw BenchError.tablesLost(expected: count, queued: gather.stats.tablesQueued)
        }
        return (Double(count) / seconds, Double(gather.stats.rcuCallbacks) / Double(count))
    }

    /// One GUP-fast walk (16 PTEs, the default) over a populated mm, single
    /// thread, cycling through `tables` PTE tables so that the walk is not
    /// one cache line replayed.
    @inline(never)
    static func walkNs(_ iterations: Int, mm: MM, tables: Int) -> (ns: Double, counters: WalkCounters) {
        var counters = WalkCounters()
        let t0 = nowNs()
        for i in 0..<iterations {
            let address = walkBase + UInt64(i % tables) << 21 + UInt64(i & 31) << 16
            mm.gupFast(address, counters: &counters)
        }
        return ((nowNs() - t0) / Double(iterations), counters)
    }

    /// Where walkNs's mm is populated: 1 TiB, clear of the tables above.
    static let walkBase: UInt64 = 1 << 40

    private static func checkNoFreeErrors(since before: Int) throws {
        let errors = PageTables.stats.freeErrors.load(ordering: .relaxed) - before
        guard errors == 0 else { throw BenchError.callbackFreeFailed(count: errors) }
    }
}
