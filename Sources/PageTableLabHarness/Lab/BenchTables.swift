import PageTableLab

/// The page-table freeing paths end to end, each shaped like the C baseline
/// it is held against: the table is allocated inside the timed loop (C
/// allocates its object there too) and the run ends with a barrier, so every
/// table is back in the allocator when the clock stops.
///
/// The tables are not zeroed. Clearing a page is pte_alloc's cost, the same
/// whichever way the table is later freed, and C's malloc does not clear
/// either; with it, both runs measured a cold 4 KiB memset per table, not
/// the freeing path (BENCHMARKS.md). Allocating in the loop also leaves the
/// descriptor in cache when pte_free_defer runs, as its caller in the kernel
/// (retract_page_tables, just done with the table's lock) has it.
extension Bench {
    /// pte_free_defer, one call_rcu per table on the descriptor's own head:
    /// held against call_rcu_per_sec_c (malloc + call_rcu + free).
    @inline(never)
    static func deferTablesPerSec(_ count: Int, mm: MM, allocator: PageAllocator) throws -> Double {
        let errorsBefore = Integrity.snapshot().freeErrors
        let t0 = nowNs()
        do {
            try deferTables(0..<count, mm: mm, allocator: allocator)
        } catch {
            barrier()
            throw error
        }
        try RCU.barrier()
        let seconds = (nowNs() - t0) / 1e9
        try checkNoFreeErrors(since: errorsBefore)
        return Double(count) / seconds
    }

    /// The loop alone, without the barrier: the scaling runs split `range`
    /// between producer threads.
    @inline(never)
    static func deferTables(_ range: Range<Int>, mm: MM, allocator: PageAllocator) throws {
        for _ in range {
            let table = try PageTables.alloc(.pte, mm: mm, node: .local, allocator: allocator, zero: false)
            try mm.pteFreeDefer(table)
        }
    }

    /// The unmap path: every table through one mmu_gather's freeTable (509
    /// to a batch page, one call_rcu per batch), tlb_finish_mmu, the
    /// callbacks, the frees. Held against c_batch_frees_per_sec.
    @inline(never)
    static func gatherTablesPerSec(_ count: Int, mm: MM, allocator: PageAllocator) throws -> (perSec: Double, callbacksPerTable: Double) {
        let errorsBefore = Integrity.snapshot().freeErrors
        let t0 = nowNs()
        let gather = try gatherTables(count, mm: mm, allocator: allocator)
        try RCU.barrier()
        let seconds = (nowNs() - t0) / 1e9
        try checkGathered(gather, count: count, freeErrorsBefore: errorsBefore)
        return (Double(count) / seconds, Double(gather.stats.rcuCallbacks) / Double(count))
    }

    /// The gather loop both table-path runs share: `count` tables, each
    /// allocated (unzeroed) for the next 2 MiB slot and handed to one
    /// gather's freeTable, then tlb_finish_mmu. Whatever ends it, the
    /// gather is finished and, on an error, every callback it queued waited
    /// for; on success the caller waits for them (or has none) and then
    /// checks the run with checkGathered.
    @inline(__always)
    static func gatherTables(_ count: Int, mm: MM, allocator: PageAllocator) throws -> MMUGather {
        let gather = MMUGather(mm: mm)
        do {
            for i in 0..<count {
                let address = UInt64(i) << 21
                let table = try PageTables.alloc(.pte, mm: mm, node: .local, allocator: allocator, zero: false)
                gather.freeTable(table, level: .pte, address: address)
            }
        } catch {
            gather.finish()
            barrier()
            throw error
        }
        gather.finish()
        return gather
    }

    /// A gathered run's books, once its frees are done: no free refused
    /// since `freeErrorsBefore`, and every one of `count` tables queued.
    static func checkGathered(_ gather: MMUGather, count: Int, freeErrorsBefore: Int) throws {
        try checkNoFreeErrors(since: freeErrorsBefore)
        guard gather.stats.tablesQueued == count else {
            throw BenchError.tablesLost(expected: count, queued: gather.stats.tablesQueued)
        }
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

    static func checkNoFreeErrors(since before: Int) throws {
        let errors = Integrity.snapshot().freeErrors - before
        guard errors == 0 else { throw BenchError.callbackFreeFailed(count: errors) }
    }
}
