import PageTableLab
import CHarness

/// Steady-state freeing rates: each path sustained for a window, beside the
/// burst rates (a fixed count, then rcu_barrier) that mostly measure
/// liburcu's worker sleeping 10 ms between batches.
///
/// Each run warms up untimed (the pipeline fills: the worker has a batch
/// in hand and the producer meets whatever the bound makes it meet), then
/// counts what the producer hands to the freeing path in a timed window,
/// time spent waiting on the bound included. Deferred memory is bounded
/// alike on both sides: the Swift paths through DeferredBound (a call that
/// would pass the bound waits a grace period and frees inline), the C ones
/// by the same rule in C. After the window, untimed, everything is drained
/// and checked freed.
extension Bench {
    /// One steady run: what was handed over in the window, and how often the
    /// bound made the producer wait (over the whole run).
    struct SteadyRate {
        var objects: Int
        var seconds: Double
        var inlineFrees: Int
        /// Objects handed over in the whole run, warm-up included.
        var handed: Int
        var perSec: Double { Double(objects) / seconds }
    }

    struct SteadyWindow {
        var warmupSeconds: Double
        var seconds: Double
        /// Tables (objects, for C's call_rcu) awaiting a grace period at most.
        var boundTables: Int

        var boundBytes: UInt64 { UInt64(boundTables) * 4096 }

        init(warmupSeconds: Double, seconds: Double, boundTables: Int) {
            self.warmupSeconds = warmupSeconds
            self.seconds = seconds
            self.boundTables = boundTables
        }

        init(_ configuration: Configuration) {
            self.init(warmupSeconds: configuration.steadyWarmupSeconds, seconds: configuration.steadySeconds,
                      boundTables: configuration.steadyBoundTables)
        }
    }

    /// The window's clock, read once per `every` calls: the warm-up first,
    /// then the timed window, as the C baselines keep it.
    struct SteadyClock {
        static let every = 512
        let window: SteadyWindow
        let start = nowNs()
        var windowStart: Double?
        var windowStartCount = 0
        var result: (objects: Int, seconds: Double)?

        init(_ window: SteadyWindow) { self.window = window }

        /// `count` calls made so far: whether the window is over.
        mutating func done(_ count: Int) -> Bool {
            let t = nowNs()
            guard let windowStart else {
                if t - start >= window.warmupSeconds * 1e9 {
                    windowStart = t
                    windowStartCount = count
                }
                return false
            }
            guard t - windowStart >= window.seconds * 1e9 else { return false }
            result = (count - windowStartCount, (t - windowStart) / 1e9)
            return true
        }
    }

    /// `rounds` rounds of the four runs, after the bench's other rounds,
    /// the IOMMU runs and the bounded flood, so that those run as they did
    /// before these existed: the C pool (a gigabyte at the default bound)
    /// is made and freed here, and the lab's pages are faulted in here.
    ///
    /// Then `rounds` rounds of the table path without a grace period
    /// (BenchTablePath), `tablePathTables` tables on each side, the C's
    /// through a small pool of its own: run between the steady rounds, or
    /// through the steady pool, they slowed the steady C gather's later
    /// rounds by about a tenth (its free list is what they would stir).
    static func steadyRounds(_ window: SteadyWindow, tablePathTables: Int, rounds: Int, mm: MM, allocator: PageAllocator,
                             into samples: inout [String: [Double]], progress: (String) -> Void) throws {
        progress("steady state: faulting in \(window.boundTables + CPagePool.slackPages) pages on each side")
        do {
            // Freed before the table path: a gigabyte at the default bound.
            let pool = try CPagePool(pages: window.boundTables + CPagePool.slackPages)
            try faultIn(pages: window.boundTables + CPagePool.slackPages, allocator: allocator)
            for round in 1...rounds {
                progress("steady state \(round)/\(rounds): call_rcu and pte_free_defer, then the table batches")
                try steadyRound(window, pool: pool, mm: mm, allocator: allocator, into: &samples)
            }
        }
        let tablePool = try CPagePool(pages: CPagePool.tablePathPages)
        let noGracePeriod = try noGracePeriodMM(allocator: allocator)
        defer { _ = noGracePeriod.exit() }
        for round in 1...rounds {
            progress("table path \(round)/\(rounds): \(tablePathTables) tables with no grace period on each side")
            samples["table_path_ns_c", default: []].append(try tablePathNsC(tablePathTables, pool: tablePool))
            samples["table_path_ns", default: []].append(try tablePathNs(tablePathTables, mm: noGracePeriod, allocator: allocator))
        }
    }

    /// One round of the four runs, each Swift path right after the C run it
    /// is held against (see pairedRatio). Each rate goes into `samples`
    /// under its key, and how often its producer met the bound beside it.
    static func steadyRound(_ window: SteadyWindow, pool: CPagePool, mm: MM, allocator: PageAllocator,
                            into samples: inout [String: [Double]]) throws {
        let runs: [(String, String, () throws -> SteadyRate)] = [
            ("steady_call_rcu_per_sec_c", "steady_call_rcu_inline_frees_c", { try steadyCallRCUPerSecC(window) }),
            ("steady_defer_tables_per_sec", "steady_defer_inline_frees",
             { try steadyDeferTablesPerSec(window, mm: mm, allocator: allocator) }),
            ("steady_c_gather_tables_per_sec", "steady_c_gather_inline_frees", { try steadyCGatherTablesPerSec(window, pool: pool) }),
            ("steady_gather_tables_per_sec", "steady_gather_inline_frees",
             { try steadyGatherTablesPerSec(window, mm: mm, allocator: allocator) }),
        ]
        for (rateKey, inlineKey, run) in runs {
            let rate = try run()
            samples[rateKey, default: []].append(rate.perSec)
            samples[inlineKey, default: []].append(Double(rate.inlineFrees))
        }
    }

    /// Fault in as many of the arena's pages as a steady run can hold at
    /// once, as the C pool is faulted in when it is made: a batch page is
    /// written, and its first touch would otherwise be a page fault (with a
    /// cleared page) in the middle of the window.
    static func faultIn(pages count: Int, allocator: PageAllocator) throws {
        var pages: [Page] = []
        pages.reserveCapacity(count)
        defer { for page in pages { PageTables.release(page, allocator: allocator) } }
        for _ in 0..<count {
            let page = try allocator.alloc()
            pages.append(page)
            allocator.address(of: page).storeBytes(of: 0, as: UInt8.self)
        }
    }

    /// Where the steady runs' tables say they were mapped: 2^18 slots of
    /// 2 MiB below walkBase, reused in turn.
    private static let steadySlotMask = (1 << 18) - 1

    /// pte_free_defer sustained: each table allocated (unzeroed) and
    /// deferred on its descriptor's own head, under DeferredBound. Held
    /// against steadyCallRCUPerSecC.
    @inline(never)
    static func steadyDeferTablesPerSec(_ window: SteadyWindow, mm: MM, allocator: PageAllocator) throws -> SteadyRate {
        try steadyTables(window, mm: mm, allocator: allocator) { table, _ in try mm.pteFreeDefer(table) }
    }

    /// The mmu_gather's table path sustained: every table through one
    /// gather's freeTable (509 to a batch page, the TLB flush, one call_rcu
    /// per batch, under DeferredBound), finished after the window. Held
    /// against steadyCGatherTablesPerSec.
    @inline(never)
    static func steadyGatherTablesPerSec(_ window: SteadyWindow, mm: MM, allocator: PageAllocator) throws -> SteadyRate {
        let gather = MMUGather(mm: mm)
        let rate = try steadyTables(window, mm: mm, allocator: allocator, finish: gather.finish) { table, address in
            gather.freeTable(table, level: .pte, address: address)
        }
        guard gather.stats.tablesQueued == rate.handed else {
            throw BenchError.tablesLost(expected: rate.handed, queued: gather.stats.tablesQueued)
        }
        return rate
    }

    /// The loop both Swift paths share: for the window, under its bound, a
    /// table allocated (unzeroed) for the next slot and handed to `free`
    /// with the address it stands for; then, untimed, `finish`, every
    /// callback waited for, and no free refused.
    @inline(__always)
    private static func steadyTables(_ window: SteadyWindow, mm: MM, allocator: PageAllocator, finish: () -> Void = {},
                                     _ free: (Page, UInt64) throws -> Void) throws -> SteadyRate {
        try RCU.barrier()
        let previousBound = DeferredBound.bytes
        DeferredBound.bytes = window.boundBytes
        defer { DeferredBound.bytes = previousBound }
        let before = DeferredBound.snapshot()
        let errorsBefore = Integrity.snapshot().freeErrors
        var clock = SteadyClock(window)
        var count = 0
        do {
            repeat {
                for i in count..<count + SteadyClock.every {
                    let address = UInt64(i & steadySlotMask) << 21
                    let table = try PageTables.alloc(.pte, mm: mm, node: .local, allocator: allocator, zero: false)
                    try free(table, address)
                }
                count += SteadyClock.every
            } while !clock.done(count)
        } catch {
            finish()
            barrier()
            throw error
        }
        finish()
        try RCU.barrier()
        try checkNoFreeErrors(since: errorsBefore)
        let after = DeferredBound.snapshot()
        return SteadyRate(objects: clock.result!.objects, seconds: clock.result!.seconds,
                          inlineFrees: Int(after.inlineFallbacks - before.inlineFallbacks), handed: count)
    }

    /// C: malloc + call_rcu + free sustained, at most `boundTables` objects
    /// outstanding.
    static func steadyCallRCUPerSecC(_ window: SteadyWindow) throws -> SteadyRate {
        let r = ptlab_baseline_steady_call_rcu(window.warmupSeconds, window.seconds, UInt64(window.boundTables))
        guard r.freed == r.handed else {
            throw BenchError.baselineLost(what: "C call_rcu", handed: Int(r.handed), freed: Int(r.freed))
        }
        return SteadyRate(objects: Int(r.window_objects), seconds: r.seconds, inlineFrees: Int(r.inline_frees),
                          handed: Int(r.handed))
    }

    /// C in the kernel's shape: tables and batch pages from per-CPU lists
    /// threaded through `pool`'s descriptors, each table constructed and
    /// destroyed, 509 per call_rcu'd batch page, the callback freeing them
    /// all; at most `boundTables` pages outstanding.
    static func steadyCGatherTablesPerSec(_ window: SteadyWindow, pool: CPagePool) throws -> SteadyRate {
        let r = try pool.steadyGather(window)
        return SteadyRate(objects: Int(r.window_objects), seconds: r.seconds, inlineFrees: Int(r.inline_frees),
                          handed: Int(r.handed))
    }
}

/// The kernel-shaped C baseline's pages: `pages` preallocated 4 KiB pages
/// and a 64-byte descriptor for each (struct page), every one faulted in,
/// kept for a whole bench so that each round reuses them as the lab reuses
/// its arena.
final class CPagePool {
    private let pool: OpaquePointer

    /// Pages beyond the bound a pool needs: the producer's open batch (510
    /// pages), its per-CPU list (64) and the freeing side's (under 512),
    /// which the bound does not count.
    static let slackPages = 2048
    /// Enough for the table path with no grace period: its per-CPU list
    /// (under 512), its open batch (510) and a refill (64).
    static let tablePathPages = 4096

    init(pages: Int) throws {
        guard let pool = ptlab_baseline_page_pool_create(UInt64(pages)) else {
            throw BenchError.invalidConfiguration("could not allocate the C page pool (\(pages) pages)")
        }
        self.pool = pool
    }

    deinit { ptlab_baseline_page_pool_destroy(pool) }

    var pages: Int { Int(ptlab_baseline_page_pool_pages(pool)) }
    var freePages: Int { Int(ptlab_baseline_page_pool_free_pages(pool)) }

    /// One steady run of the kernel-shaped gather, checked: every page it
    /// took (tables and batch pages) given back, the free list full again.
    func steadyGather(_ window: Bench.SteadyWindow) throws -> ptlab_baseline_steady {
        guard window.boundTables + Self.slackPages <= pages else {
            throw BenchError.invalidConfiguration(
                "the C page pool (\(pages) pages) must hold the bound (\(window.boundTables)) and \(Self.slackPages) more")
        }
        return try checked(ptlab_baseline_steady_c_gather(pool, window.warmupSeconds, window.seconds, UInt64(window.boundTables)),
                           "C gather")
    }

    /// The same table path for `tables` tables on this thread, every full
    /// batch freed at once (Bench.tablePathNsC), checked likewise.
    func tablePath(tables: Int) throws -> ptlab_baseline_steady {
        guard tables >= 1 else { throw BenchError.invalidConfiguration("the table path needs at least one table") }
        return try checked(ptlab_baseline_c_table_path(pool, UInt64(tables)), "C table path")
    }

    /// A run's books: it did not fail, every page it took came back, and
    /// the free list is full again.
    private func checked(_ r: ptlab_baseline_steady, _ what: String) throws -> ptlab_baseline_steady {
        guard r.failed == 0, r.allocated == r.freed, freePages == pages else {
            throw BenchError.baselineLost(what: r.failed != 0 ? "\(what) (failed)" : what, handed: Int(r.allocated),
                                          freed: Int(r.freed))
        }
        return r
    }
}
