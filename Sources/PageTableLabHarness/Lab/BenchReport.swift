import PageTableLab
/// One `ptlab bench` run: the Swift paths, the raw C paths they are held
/// against, measured in the same process in interleaved rounds, and the
/// targets the foundation promises. JSON keys are part of the interface
/// (scripts compare runs by them), hence the explicit coding keys.
public struct BenchReport: Sendable, Codable, Equatable {
    /// A promise and whether this run kept it.
    public struct Target: Sendable, Codable, Equatable {
        public enum Comparison: String, Sendable, Codable { case atMost = "<=", atLeast = ">=" }
        public var key: String
        public var comparison: Comparison
        public var limit: Double
        public var value: Double
        public var met: Bool
        public var why: String

        init(_ key: String, _ comparison: Comparison, _ limit: Double, _ value: Double, _ why: String) {
            self.key = key
            self.comparison = comparison
            self.limit = limit
            self.value = value
            self.met = comparison == .atMost ? value <= limit : value >= limit
            self.why = why
        }
    }

    /// One point of the free-latency distribution.
    public struct LatencyPercentile: Sendable, Codable, Equatable {
        public var percentile: Double
        public var us: Double

        static let plotted: [Double] = [1, 10, 25, 50, 75, 90, 95, 99, 99.9, 100]

        /// Read FreeLatency's histogram at the plotted percentiles.
        static func fromFreeLatency() -> [LatencyPercentile] {
            zip(plotted, FreeLatency.microseconds(atPercentiles: plotted)).map { LatencyPercentile(percentile: $0, us: $1) }
        }
    }

    public var rcuReadNsSwift: Double
    public var rcuReadNsC: Double
    public var rcuReadRatio: Double
    /// RCU.call on the C baseline's own malloc'd object, freed in the
    /// callback: the same work as call_rcu_per_sec_c, through the Swift layer.
    public var callRCUPerSecSwift: Double
    public var callRCUPerSecC: Double
    public var callRCURatio: Double
    /// pte_free_defer's shape: an allocator page queued on its own
    /// ptdesc rcu_head, freed (and poisoned) in the callback.
    public var callRCUPerSecSwiftPages: Double
    public var pageAllocFreeNs: Double
    public var numaAllocOnnodeNs: Double
    public var pageAllocSpeedup: Double
    /// Poisoning one hot 4 KiB page with 0x6b, as the free path does: the
    /// floor under page_alloc_free_ns while page_poison is on.
    public var poisonPageNs: Double
    /// Most deferred-free bytes outstanding during the Swift call_rcu flood.
    public var callRCUPeakDeferredBytes: Int64
    /// PTE tables per second through alloc + pte_free_defer + callback +
    /// free, barrier included.
    public var deferTablesPerSec: Double
    /// PTE tables per second through alloc + mmu_gather freeTable + finish
    /// + batch callbacks + frees, barrier included.
    public var gatherTablesPerSec: Double
    /// C: aligned_alloc'd tables, 509 per call_rcu'd batch page, free()d.
    public var cBatchFreesPerSec: Double
    /// RCU callbacks the gather queued per table (the worst round).
    public var gatherCallbacksPerTable: Double
    /// One GUP-fast walk of 16 PTEs on a populated mm, one thread.
    public var walkNs: Double
    /// IOTLB/PSC invalidations per kernel table freed, deferred mode.
    public var kernelFreeInvalidationsPerTable: Double
    /// qi_submit_sync of one descriptor and its wait: the median, µs.
    public var qiSubmitSyncUsP50: Double
    /// Most deferred bytes outstanding in the flood past a stalled reader.
    public var peakDeferredBytesFlood: Int64
    /// DeferredBound.bytes during that flood.
    public var deferredBoundBytes: UInt64
    public var floodCalls: Int
    /// Flood calls that met the bound and freed inline after a grace period.
    public var floodInlineFallbacks: UInt64
    public var floodCallsPerSec: Double
    /// Queue-to-free latency of the last round's pte_free_defer run.
    public var deferFreeLatencyUs: [LatencyPercentile]
    /// Steady state: each freeing path sustained for this timed window (s),
    /// after a warm-up, with at most `steadyBoundBytes` of tables (objects,
    /// for C's call_rcu: as many of them as tables) awaiting a grace period.
    public var steadySeconds: Double
    public var steadyBoundBytes: UInt64
    /// PTE tables per second through alloc + pte_free_defer, sustained.
    public var steadyDeferTablesPerSec: Double
    /// PTE tables per second through alloc + mmu_gather freeTable (509 per
    /// call_rcu'd batch), sustained.
    public var steadyGatherTablesPerSec: Double
    /// C: malloc + call_rcu + free, sustained.
    public var steadyCallRCUPerSecC: Double
    /// C in the kernel's shape: tables and batch pages from a free list of
    /// 4 KiB pages, 509 per call_rcu'd batch page, given back by the
    /// callback; sustained.
    public var steadyCGatherTablesPerSec: Double
    /// steady gather / steady kernel-shaped C, median of per-round ratios.
    public var steadyGatherRatio: Double
    /// steady pte_free_defer / steady C call_rcu, median of per-round ratios.
    public var steadyDeferRatio: Double
    /// ns per table through the gather's table path with no grace period,
    /// one thread, hot (Bench.tablePathNs); and the kernel-shaped C's.
    public var tablePathNs: Double
    public var tablePathNsC: Double
    /// The model's table path over the C's, median of per-round ratios: what
    /// the model's per-table work costs, as a multiple of the kernel's shape.
    public var tablePathCostRatio: Double
    /// The churn trace's ops, replayed once on each side.
    public var traceReplayOps: Int
    public var traceReplayModelSeconds: Double
    /// nil (null in JSON) where the live kernel cannot be compared with.
    public var traceReplayKernelSeconds: Double?
    /// Kernel time / model time on the churn trace; nil with no kernel side.
    public var traceReplayRatio: Double?
    /// Throughput against producer threads; only with `--plot`.
    public var scaling: [Bench.ScalingPoint]?
    public var targets: [Target]
    public var allTargetsMet: Bool
    /// How each number is taken from its rounds.
    public var statistic: String
    public var rounds: Int
    /// "release" or "debug": a debug build's numbers mean nothing.
    public var build: String
    /// The 1-minute load average when the run began: above zero-ish, other
    /// work shared the CPUs and the numbers are suspect.
    public var loadAverage1m: Double
    /// Every module parameter the run used.
    public var parameters: [String: String]
    /// Every round's value of each measured key, in order.
    public var samples: [String: [Double]]

    enum CodingKeys: String, CodingKey {
        case rcuReadNsSwift = "rcu_read_ns_swift"
        case rcuReadNsC = "rcu_read_ns_c"
        case rcuReadRatio = "rcu_read_ratio"
        case callRCUPerSecSwift = "call_rcu_per_sec_swift"
        case callRCUPerSecC = "call_rcu_per_sec_c"
        case callRCURatio = "call_rcu_ratio"
        case callRCUPerSecSwiftPages = "call_rcu_per_sec_swift_pages"
        case pageAllocFreeNs = "page_alloc_free_ns"
        case numaAllocOnnodeNs = "numa_alloc_onnode_ns"
        case pageAllocSpeedup = "page_alloc_speedup"
        case poisonPageNs = "poison_page_ns"
        case callRCUPeakDeferredBytes = "call_rcu_peak_deferred_bytes"
        case deferTablesPerSec = "defer_tables_per_sec"
        case gatherTablesPerSec = "gather_tables_per_sec"
        case cBatchFreesPerSec = "c_batch_frees_per_sec"
        case gatherCallbacksPerTable = "gather_callbacks_per_table"
        case walkNs = "walk_ns"
        case kernelFreeInvalidationsPerTable = "kernel_free_invalidations_per_table"
        case qiSubmitSyncUsP50 = "qi_submit_sync_us_p50"
        case peakDeferredBytesFlood = "peak_deferred_bytes_flood"
        case deferredBoundBytes = "deferred_bound_bytes"
        case floodCalls = "flood_calls"
        case floodInlineFallbacks = "flood_inline_fallbacks"
        case floodCallsPerSec = "flood_calls_per_sec"
        case deferFreeLatencyUs = "defer_free_latency_us"
        case steadySeconds = "steady_seconds"
        case steadyBoundBytes = "steady_bound_bytes"
        case steadyDeferTablesPerSec = "steady_defer_tables_per_sec"
        case steadyGatherTablesPerSec = "steady_gather_tables_per_sec"
        case steadyCallRCUPerSecC = "steady_call_rcu_per_sec_c"
        case steadyCGatherTablesPerSec = "steady_c_gather_tables_per_sec"
        case steadyGatherRatio = "steady_gather_ratio"
        case steadyDeferRatio = "steady_defer_ratio"
        case tablePathNs = "table_path_ns"
        case tablePathNsC = "table_path_ns_c"
        case tablePathCostRatio = "table_path_cost_ratio"
        case traceReplayOps = "trace_replay_ops"
        case traceReplayModelSeconds = "trace_replay_model_seconds"
        case traceReplayKernelSeconds = "trace_replay_kernel_seconds"
        case traceReplayRatio = "trace_replay_ratio"
        case scaling
        case targets
        case allTargetsMet = "all_targets_met"
        case statistic, rounds, build, parameters, samples
        case loadAverage1m = "load_average_1m"
    }

    /// Every key, a missing trace-replay side as null rather than absent;
    /// `scaling` only when measured.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(rcuReadNsSwift, forKey: .rcuReadNsSwift)
        try c.encode(rcuReadNsC, forKey: .rcuReadNsC)
        try c.encode(rcuReadRatio, forKey: .rcuReadRatio)
        try c.encode(callRCUPerSecSwift, forKey: .callRCUPerSecSwift)
        try c.encode(callRCUPerSecC, forKey: .callRCUPerSecC)
        try c.encode(callRCURatio, forKey: .callRCURatio)
        try c.encode(callRCUPerSecSwiftPages, forKey: .callRCUPerSecSwiftPages)
        try c.encode(pageAllocFreeNs, forKey: .pageAllocFreeNs)
        try c.encode(numaAllocOnnodeNs, forKey: .numaAllocOnnodeNs)
        try c.encode(pageAllocSpeedup, forKey: .pageAllocSpeedup)
        try c.encode(poisonPageNs, forKey: .poisonPageNs)
        try c.encode(callRCUPeakDeferredBytes, forKey: .callRCUPeakDeferredBytes)
        try c.encode(deferTablesPerSec, forKey: .deferTablesPerSec)
        try c.encode(gatherTablesPerSec, forKey: .gatherTablesPerSec)
        try c.encode(cBatchFreesPerSec, forKey: .cBatchFreesPerSec)
        try c.encode(gatherCallbacksPerTable, forKey: .gatherCallbacksPerTable)
        try c.encode(walkNs, forKey: .walkNs)
        try c.encode(kernelFreeInvalidationsPerTable, forKey: .kernelFreeInvalidationsPerTable)
        try c.encode(qiSubmitSyncUsP50, forKey: .qiSubmitSyncUsP50)
        try c.encode(peakDeferredBytesFlood, forKey: .peakDeferredBytesFlood)
        try c.encode(deferredBoundBytes, forKey: .deferredBoundBytes)
        try c.encode(floodCalls, forKey: .floodCalls)
        try c.encode(floodInlineFallbacks, forKey: .floodInlineFallbacks)
        try c.encode(floodCallsPerSec, forKey: .floodCallsPerSec)
        try c.encode(deferFreeLatencyUs, forKey: .deferFreeLatencyUs)
        try c.encode(steadySeconds, forKey: .steadySeconds)
        try c.encode(steadyBoundBytes, forKey: .steadyBoundBytes)
        try c.encode(steadyDeferTablesPerSec, forKey: .steadyDeferTablesPerSec)
        try c.encode(steadyGatherTablesPerSec, forKey: .steadyGatherTablesPerSec)
        try c.encode(steadyCallRCUPerSecC, forKey: .steadyCallRCUPerSecC)
        try c.encode(steadyCGatherTablesPerSec, forKey: .steadyCGatherTablesPerSec)
        try c.encode(steadyGatherRatio, forKey: .steadyGatherRatio)
        try c.encode(steadyDeferRatio, forKey: .steadyDeferRatio)
        try c.encode(tablePathNs, forKey: .tablePathNs)
        try c.encode(tablePathNsC, forKey: .tablePathNsC)
        try c.encode(tablePathCostRatio, forKey: .tablePathCostRatio)
        try c.encode(traceReplayOps, forKey: .traceReplayOps)
        try c.encode(traceReplayModelSeconds, forKey: .traceReplayModelSeconds)
        try c.encode(traceReplayKernelSeconds, forKey: .traceReplayKernelSeconds)
        try c.encode(traceReplayRatio, forKey: .traceReplayRatio)
        try c.encodeIfPresent(scaling, forKey: .scaling)
        try c.encode(targets, forKey: .targets)
        try c.encode(allTargetsMet, forKey: .allTargetsMet)
        try c.encode(statistic, forKey: .statistic)
        try c.encode(rounds, forKey: .rounds)
        try c.encode(build, forKey: .build)
        try c.encode(loadAverage1m, forKey: .loadAverage1m)
        try c.encode(parameters, forKey: .parameters)
        try c.encode(samples, forKey: .samples)
    }
}
