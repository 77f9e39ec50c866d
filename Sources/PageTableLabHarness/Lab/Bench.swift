#if canImport(Glibc)
import PageTableLab
import Glibc
#endif
import CNUMA
import CHarness
import Synchronization

/// The foundation's speed promises, measured: each Swift path beside the raw
/// C it stands in for (CSupport's baselines), in the same process, in
/// interleaved rounds so that a noisy neighbour hurts both sides alike. Each
/// reported number is the median of its rounds.
public enum Bench {
    public struct Configuration: Sendable {
        public var rounds = 5
        public var readIterations: UInt64 = 50_000_000
        /// Objects per call_rcu round, for C and Swift alike. liburcu's worker
        /// drains a batch per 10 ms, so most of a flood is outstanding at once:
        /// as pages, 2^18 of them is up to 1 GiB.
        public var callRCUObjects = 1 << 18
        public var pageIterations = 10_000_000
        public var numaIterations = 2_000
        /// GUP-fast walks per round, over `walkTables` populated PTE tables.
        public var walkIterations = 5_000_000
        public var walkTables = 64
        /// The kernel-free stress run (deferred mode) behind the
        /// invalidations-per-table number, once per bench.
        public var kernelFreeSeconds = 0.5
        /// Timed qi_submit_sync calls, once per bench.
        public var qiSubmissions = 20_000
        /// The bounded-memory flood: DeferredBound.bytes for its duration,
        /// and its producers' calls (pages), once per bench.
        public var floodBoundBytes: UInt64 = 64 << 20
        public var floodProducers = 2
        public var floodCallsPerProducer = 1 << 17
        /// Throughput against producer threads (`ptlab bench --plot`). It
        /// switches the process to per-CPU call_rcu workers, for good.
        public var scaling = false
        public var scalingObjects = 1 << 18
        public var scalingThreads = [1, 2]
        public var scalingRounds = 3
        /// Steady-state freeing, in `rounds` rounds of its own after the
        /// others (BenchSteady): each path untimed for
        /// `steadyWarmupSeconds`, then timed for `steadySeconds`, with at
        /// most `steadyBoundTables` tables (1 GiB at 2^18; objects, for C's
        /// call_rcu) awaiting a grace period. liburcu's worker sleeps 10 ms
        /// between batches, so a path sustaining R tables/s keeps about
        /// R x (10 ms + a grace period + the batch's callbacks) outstanding:
        /// a bound below that makes the producer wait a grace period per
        /// call instead, and the rate measures that wait.
        public var steadySeconds = 1.0
        public var steadyWarmupSeconds = 0.2
        public var steadyBoundTables = 1 << 18
        /// Tables through the table path without a grace period
        /// (BenchTablePath) on each side, in each of `rounds` rounds run
        /// after the steady rounds.
        public var tablePathTables = 1 << 21
        /// Cycles of the churn trace (three ops each) behind
        /// trace_replay_ratio, replayed once on each side.
        public var traceReplayCycles = 2_000
        public init() {}
    }

    /// Load an allocator with `parameters` (see withBenchAllocator), put
    /// the RCU parameters into effect, measure, and unload. `progress`
    /// hears one line per step.
    public static func run(
        _ configuration: Configuration = Configuration(), parameters: ModuleParameters = ModuleParameters(),
        progress: (String) -> Void = { _ in }
    ) throws -> BenchReport {
        guard configuration.rounds >= 1, configuration.readIterations >= 8, configuration.callRCUObjects >= 1,
              configuration.pageIterations >= 1, configuration.numaIterations >= 1,
              configuration.walkIterations >= 1, configuration.walkTables >= 1, configuration.qiSubmissions >= 1,
              configuration.kernelFreeSeconds > 0, configuration.scalingObjects >= 1, configuration.scalingRounds >= 1,
              configuration.scalingThreads.allSatisfy({ $0 >= 1 }), configuration.steadySeconds > 0,
              configuration.steadyWarmupSeconds >= 0, configuration.tablePathTables >= 1,
              configuration.traceReplayCycles >= 1 else {
            throw BenchError.invalidConfiguration("rounds, iterations and objects must be positive (read iterations at least 8)")
        }
        return try withBenchAllocator(configuration, parameters: parameters) { allocator, parameters in
            try measure(configuration, allocator: allocator, parameters: parameters, progress: progress)
        }
    }

    /// Load an allocator big enough for `configuration`'s runs, put the RCU
    /// parameters into effect, run `body` on a registered thread, wait for
    /// every callback it queued, and unload.
    ///
    /// node_budget_pages is raised, if need be, so that a whole call_rcu
    /// flood fits in one node: the report's parameters say what was used.
    static func withBenchAllocator<R>(
        _ configuration: Configuration, parameters: ModuleParameters,
        _ body: (PageAllocator, ModuleParameters) throws -> R
    ) throws -> R {
        guard configuration.steadyBoundTables >= 2 * 510 else {
            throw BenchError.invalidConfiguration("steady runs need a bound of at least two gather batches (1020 tables)")
        }
        var parameters = parameters
        let chunkPages = 1 << parameters.int("chunk_order")
        // A whole flood outstanding (the gather's adds a batch page per 509
        // tables), beside the walk mm: per PTE table, itself and a data page
        // per 64 KiB touched, plus its upper tables.
        // A steady run keeps at most its bound outstanding, beside the
        // producer's open batch and the per-CPU caches.
        let flood = max(configuration.callRCUObjects, configuration.scaling ? configuration.scalingObjects : 0,
                        configuration.steadyBoundTables + CPagePool.slackPages)
        let pages = flood + flood / 509 + 1 + configuration.walkTables * 34 + 8
        let needed = (pages / chunkPages + 2) * chunkPages
        if parameters.int("node_budget_pages") < needed {
            try parameters.set("node_budget_pages", to: String(needed))
        }
        try parameters.applyRCU()
        let allocator = try PageAllocator(parameters: parameters.allocator)
        defer { allocator.unload() }
        return try RCU.withRegisteredThread {
            // Whatever ends the measurement, nothing queued may still point
            // into the arena when unload unmaps it.
            defer { barrier() }
            return try body(allocator, parameters)
        }
    }

    /// rcu_barrier on the bench's own thread, which is never inside a read
    /// section or a callback (the barrier's only refusals): a refusal is a
    /// bug in the bench, and going on would unload the allocator under
    /// callbacks still queued.
    static func barrier() {
        do { try RCU.barrier() } catch { preconditionFailure("bench: rcu_barrier refused: \(error)") }
    }

    private static func measure(
        _ config: Configuration, allocator: PageAllocator, parameters: ModuleParameters,
        progress: (String) -> Void
    ) throws -> BenchReport {
        var load = [0.0]
        _ = getloadavg(&load, 1)
        var samples: [String: [Double]] = [:]
        var peak: Int64 = 0
        var gatherCallbacksPerTable = 0.0
        var walkCounters = WalkCounters()
        var latency: [BenchReport.LatencyPercentile] = []
        // The tables of the defer and gather runs belong to this mm but are
        // never linked into it; the walk runs on its own populated mm.
        let mm = try MM(allocator: allocator)
        let walkMM = try MM(allocator: allocator)
        defer { _ = mm.exit(); _ = walkMM.exit() }
        try walkMM.mmap(address: walkBase, length: UInt64(config.walkTables) << 21)
        try walkMM.touch(address: walkBase, length: UInt64(config.walkTables) << 21, stride: 64 << 10)
        // Warm-up, not recorded: fault in the chunks the flood will use and
        // start liburcu's worker.
        progress("warm-up")
        _ = try swiftCallRCUPerSec(config.callRCUObjects, allocator: allocator)
        _ = ptlab_baseline_call_rcu_per_sec(UInt64(config.callRCUObjects))
        for round in 1...config.rounds {
            progress("round \(round)/\(config.rounds): rcu read sections")
            samples["rcu_read_ns_c", default: []].append(ptlab_baseline_read_ns(config.readIterations))
            samples["rcu_read_ns_swift", default: []].append(swiftReadNs(config.readIterations))
            progress("round \(round)/\(config.rounds): call_rcu floods")
            // Each Swift path right after the C run it is held against: the
            // machine's speed drifts between regimes over seconds, and a
            // ratio is taken per round (see pairedRatio).
            samples["call_rcu_per_sec_c", default: []].append(ptlab_baseline_call_rcu_per_sec(UInt64(config.callRCUObjects)))
            samples["call_rcu_per_sec_swift", default: []].append(try swiftMallocCallRCUPerSec(config.callRCUObjects))
            progress("round \(round)/\(config.rounds): page-table frees")
            FreeLatency.reset()
            samples["defer_tables_per_sec", default: []].append(try deferTablesPerSec(config.callRCUObjects, mm: mm, allocator: allocator))
            if round == config.rounds { latency = BenchReport.LatencyPercentile.fromFreeLatency() }
            let monitor = DeferredMemoryMonitor(periodMicroseconds: 1000)
            samples["call_rcu_per_sec_swift_pages", default: []].append(try swiftCallRCUPerSec(config.callRCUObjects, allocator: allocator))
            peak = max(peak, monitor.stop())
            samples["c_batch_frees_per_sec", default: []].append(ptlab_baseline_batch_frees_per_sec(UInt64(config.callRCUObjects)))
            let gather = try gatherTablesPerSec(config.callRCUObjects, mm: mm, allocator: allocator)
            samples["gather_tables_per_sec", default: []].append(gather.perSec)
            gatherCallbacksPerTable = max(gatherCallbacksPerTable, gather.callbacksPerTable)
            let walk = walkNs(config.walkIterations, mm: walkMM, tables: config.walkTables)
            samples["walk_ns", default: []].append(walk.ns)
            walkCounters = walkCounters + walk.counters
            progress("round \(round)/\(config.rounds): page allocation")
            samples["page_alloc_free_ns", default: []].append(try pageAllocFreeNs(config.pageIterations, allocator: allocator))
            samples["numa_alloc_onnode_ns", default: []].append(numaAllocOnnodeNs(config.numaIterations))
            samples["poison_page_ns", default: []].append(try poisonPageNs(config.pageIterations))
        }
        progress("IOMMU: kernel-free (deferred) and qi_submit_sync")
        let invalidationsPerTable = try kernelFreeInvalidationsPerTable(duration: config.kernelFreeSeconds, allocator: allocator)
        let qiP50 = try qiSubmitSyncUsP50(config.qiSubmissions, allocator: allocator)
        progress("flood against a bound of \(config.floodBoundBytes) bytes")
        let flood = try Bench.flood(bound: config.floodBoundBytes, producers: config.floodProducers,
                                    callsPerProducer: config.floodCallsPerProducer, allocator: allocator)
        let steady = SteadyWindow(config)
        try steadyRounds(steady, tablePathTables: config.tablePathTables, rounds: config.rounds, mm: mm, allocator: allocator,
                         into: &samples, progress: progress)
        progress("trace replay: \(config.traceReplayCycles) churn cycles on the kernel, then the model")
        let replay = try traceReplay(cycles: config.traceReplayCycles)
        let scaling = config.scaling
            ? try Bench.scaling(count: config.scalingObjects, threadCounts: config.scalingThreads, rounds: config.scalingRounds,
                                mm: mm, allocator: allocator, progress: progress)
            : nil
        guard walkCounters.useAfterFree == 0, walkCounters.mapped == walkCounters.walks else {
            throw BenchError.invalidConfiguration("the walk bench's mm was not fully mapped, or a walk saw a freed table: \(walkCounters)")
        }
        let m = samples.mapValues(median)
        let ratio = { (a: String, b: String) in pairedRatio(samples[a]!, samples[b]!) }
        let readRatio = ratio("rcu_read_ns_swift", "rcu_read_ns_c")
        let callRatio = ratio("call_rcu_per_sec_swift", "call_rcu_per_sec_c")
        let speedup = m["numa_alloc_onnode_ns"]! / m["page_alloc_free_ns"]!
        let steadyRatio = steadyRatios(samples)
        let targets: [BenchReport.Target] = [
            .init("rcu_read_ratio", .atMost, 1.15, readRatio, "a Swift read section costs at most 1.15x liburcu's inlined C"),
            .init("call_rcu_ratio", .atLeast, 0.9, callRatio, "Swift RCU.call keeps 0.9x of C call_rcu on the same malloc'd object"),
            .init("page_alloc_free_ns", .atMost, 40, m["page_alloc_free_ns"]!, "an order-0 alloc+free (poisoned as page_poison says) in at most 40 ns"),
            .init("page_alloc_speedup", .atLeast, 200, speedup, "at least 200x faster than numa_alloc_onnode(4 KiB)+touch+numa_free"),
            .init("defer_ratio", .atLeast, 1.0, ratio("defer_tables_per_sec", "call_rcu_per_sec_c"),
                  "pte_free_defer (head embedded) keeps up with C malloc+call_rcu+free"),
            .init("gather_ratio", .atLeast, 0.8, ratio("gather_tables_per_sec", "c_batch_frees_per_sec"),
                  "tables through mmu_gather keep 0.8x of C's 509-per-call_rcu batch frees"),
            .init("gather_callbacks_per_table", .atMost, 1.0 / 500, gatherCallbacksPerTable,
                  "at most one RCU callback per 500 tables through the gather"),
            .init("peak_deferred_bytes_flood", .atMost, Double(flood.boundBytes), Double(flood.peakBytes),
                  "a flood past a stalled reader stays within DeferredBound.bytes"),
        ] + steadyTargets(samples) + replayTargets(replay)
        return BenchReport(
            rcuReadNsSwift: m["rcu_read_ns_swift"]!, rcuReadNsC: m["rcu_read_ns_c"]!, rcuReadRatio: readRatio,
            callRCUPerSecSwift: m["call_rcu_per_sec_swift"]!, callRCUPerSecC: m["call_rcu_per_sec_c"]!,
            callRCURatio: callRatio, callRCUPerSecSwiftPages: m["call_rcu_per_sec_swift_pages"]!,
            pageAllocFreeNs: m["page_alloc_free_ns"]!, numaAllocOnnodeNs: m["numa_alloc_onnode_ns"]!,
            pageAllocSpeedup: speedup, poisonPageNs: m["poison_page_ns"]!,
            callRCUPeakDeferredBytes: peak,
            deferTablesPerSec: m["defer_tables_per_sec"]!, gatherTablesPerSec: m["gather_tables_per_sec"]!,
            cBatchFreesPerSec: m["c_batch_frees_per_sec"]!, gatherCallbacksPerTable: gatherCallbacksPerTable,
            walkNs: m["walk_ns"]!, kernelFreeInvalidationsPerTable: invalidationsPerTable, qiSubmitSyncUsP50: qiP50,
            peakDeferredBytesFlood: flood.peakBytes, deferredBoundBytes: flood.boundBytes,
            floodCalls: flood.calls, floodInlineFallbacks: flood.inlineFallbacks, floodCallsPerSec: flood.callsPerSec,
            deferFreeLatencyUs: latency,
            steadySeconds: config.steadySeconds, steadyBoundBytes: steady.boundBytes,
            steadyDeferTablesPerSec: m["steady_defer_tables_per_sec"]!, steadyGatherTablesPerSec: m["steady_gather_tables_per_sec"]!,
            steadyCallRCUPerSecC: m["steady_call_rcu_per_sec_c"]!, steadyCGatherTablesPerSec: m["steady_c_gather_tables_per_sec"]!,
            steadyGatherRatio: steadyRatio.gather, steadyDeferRatio: steadyRatio.defer,
            tablePathNs: m["table_path_ns"]!, tablePathNsC: m["table_path_ns_c"]!,
            tablePathCostRatio: steadyRatio.tablePathCost,
            traceReplayOps: replay.ops, traceReplayModelSeconds: replay.modelSeconds,
            traceReplayKernelSeconds: replay.kernelSeconds, traceReplayRatio: replay.ratio,
            scaling: scaling,
            targets: targets, allTargetsMet: targets.allSatisfy(\.met),
            statistic: "median", rounds: config.rounds, build: buildConfiguration, loadAverage1m: load[0],
            parameters: Dictionary(uniqueKeysWithValues: parameters.all.map { ($0.name, $0.value.description) }),
            samples: samples)
    }

    /// Numbers from an unoptimised build are not worth printing as results.
    public static var buildConfiguration: String {
        #if DEBUG
        "debug"
        #else
        "release"
        #endif
    }

    /// The median of per-round ratios. Both sides of a round run back to
    /// back, so they share whatever regime the machine is in (this VM's
    /// call_rcu floods run at 10–11 M/s or at 5–7 M/s for seconds at a
    /// time); a ratio of the two medians can pair a fast round's C with a
    /// slow round's Swift.
    static func pairedRatio(_ numerator: [Double], _ denominator: [Double]) -> Double {
        median(roundRatios(numerator, denominator))
    }

    /// Round i's numerator over round i's denominator, in round order.
    static func roundRatios(_ numerator: [Double], _ denominator: [Double]) -> [Double] {
        zip(numerator, denominator).map { $0 / $1 }
    }

    static func median(_ values: [Double]) -> Double {
        let s = values.sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }

    static func nowNs() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) * 1e9 + Double(ts.tv_nsec)
    }

    // MARK: - the measured paths

    /// The C baseline's loop in Swift: eight empty read sections per turn,
    /// as ptlab_baseline_read_ns does, so that loop alignment cancels out.
    @inline(never)
    static func swiftReadNs(_ iterations: UInt64) -> Double {
        let loops = max(iterations / 8, 1)
        let t0 = nowNs()
        for _ in 0..<loops {
            RCU.read {}; RCU.read {}; RCU.read {}; RCU.read {}
            RCU.read {}; RCU.read {}; RCU.read {}; RCU.read {}
        }
        return (nowNs() - t0) / Double(loops * 8)
    }

    /// pte_free_defer's shape: take a page, queue its descriptor's own
    /// rcu_head, and let the callback free the page; end with a barrier so
    /// that every callback has run, as the C baseline does.
    @inline(never)
    static func swiftCallRCUPerSec(_ count: Int, allocator: PageAllocator) throws -> Double {
        let t0 = nowNs()
        do {
            for _ in 0..<count {
                let page = try allocator.alloc()
                try RCU.call(page.rcuHead, bytes: UInt64(page.bytes), benchFreePageCallback)
            }
        } catch {
            // The pages already queued must be freed before the allocator
            // can be unloaded.
            barrier()
            throw error
        }
        try RCU.barrier()
        let seconds = (nowNs() - t0) / 1e9
        let failures = benchFreeFailures.exchange(0, ordering: .relaxed)
        guard failures == 0 else { throw BenchError.callbackFreeFailed(count: failures) }
        return Double(count) / seconds
    }

    /// The C baseline's own object (64 bytes from malloc, freed by free())
    /// queued through RCU.call: what the Swift layer alone costs, without
    /// the page allocator and its poisoning.
    @inline(never)
    static func swiftMallocCallRCUPerSec(_ count: Int) throws -> Double {
        let t0 = nowNs()
        try mallocCalls(count)
        try RCU.barrier()
        return Double(count) / ((nowNs() - t0) / 1e9)
    }

    /// The loop alone, without the barrier (the scaling runs share it out).
    @inline(never)
    static func mallocCalls(_ count: Int) throws {
        for _ in 0..<count {
            let head = RCUHead(at: malloc(mallocObjectBytes)!)
            try RCU.call(head, bytes: UInt64(mallocObjectBytes), benchFreeMallocCallback)
        }
    }

    /// sizeof(struct c_object) in CSupport/baseline.c.
    static let mallocObjectBytes = 64

    @inline(never)
    static func pageAllocFreeNs(_ iterations: Int, allocator: PageAllocator) throws -> Double {
        let t0 = nowNs()
        for _ in 0..<iterations {
            try allocator.free(allocator.alloc())
        }
        return (nowNs() - t0) / Double(iterations)
    }

    /// What a page costs without the lab: a syscall-backed allocation on the
    /// node, the first-touch fault, and the unmap.
    @inline(never)
    static func numaAllocOnnodeNs(_ iterations: Int) -> Double {
        let node = Int32(NUMATopology.current.currentNode())
        let t0 = nowNs()
        for _ in 0..<iterations {
            guard let p = numa_alloc_onnode(4096, node) else { continue }
            p.storeBytes(of: 1, as: UInt8.self)
            numa_free(p, 4096)
        }
        return (nowNs() - t0) / Double(iterations)
    }

    /// The free path's poisoning alone, on pages hot in L1 as the alloc+free loop's
    /// page is: four pages in turn, each read back (one byte) three turns
    /// later, so that no memset can be dropped and no read waits on the
    /// memset still in flight.
    @inline(never)
    static func poisonPageNs(_ iterations: Int) throws -> Double {
        let pages = 4
        let base = UnsafeMutableRawPointer.allocate(byteCount: 4096 * pages, alignment: 4096)
        defer { base.deallocate() }
        memset(base, Int32(PagePoison.freeByte), 4096 * pages)
        var sum = 0
        let t0 = nowNs()
        for i in 0..<iterations {
            PagePoison.fill(base + 4096 * (i & (pages - 1)), bytes: 4096)
            sum &+= Int(base.load(fromByteOffset: 4096 * ((i + 1) & (pages - 1)) + (i & 4095), as: UInt8.self))
        }
        let ns = (nowNs() - t0) / Double(iterations)
        guard sum == iterations * Int(PagePoison.freeByte) else { throw BenchError.poisonNotWritten }
        return ns
    }
}

public enum BenchError: Error, CustomStringConvertible {
    case invalidConfiguration(String)
    case callbackFreeFailed(count: Int)
    case poisonNotWritten
    case tablesLost(expected: Int, queued: Int)
    case stressFailed(String)
    case baselineLost(what: String, handed: Int, freed: Int)

    public var description: String {
        switch self {
        case .invalidConfiguration(let what): "bench: \(what)"
        case .callbackFreeFailed(let n): "bench: \(n) RCU callbacks could not free their page (allocator state corrupted?)"
        case .poisonNotWritten: "bench: PagePoison.fill left bytes other than 0x6b"
        case .tablesLost(let n, let q): "bench: \(n) tables given to the mmu_gather but \(q) queued for freeing"
        case .stressFailed(let verdict): "bench: the kernel-free run failed: \(verdict)"
        case .baselineLost(let what, let handed, let freed): "bench: the \(what) baseline freed \(freed) of the \(handed) it took"
        }
    }
}

let benchFreeFailures = Atomic<Int>(0)

private func benchFreeMallocCallback(_ head: UnsafeMutableRawPointer?) {
    free(head)
}

/// pte_free_now: runs on liburcu's worker after the grace period. A global
/// function, not a closure, so that it is not isolated to any actor.
func benchFreePageCallback(_ head: UnsafeMutableRawPointer?) {
    var freed = false
    if let head {
        _ = PageAllocator.withLoaded { freed = (try? $0.free(Page(embedding: RCUHead(at: head)))) != nil }
    }
    if !freed { benchFreeFailures.add(1, ordering: .relaxed) }
}
