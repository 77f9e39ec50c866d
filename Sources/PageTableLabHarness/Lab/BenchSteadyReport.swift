import PageTableLab

/// `ptlab bench --steady-only`: the steady-state freeing rates alone, in a
/// few seconds a round rather than the whole bench's minute, for someone
/// changing a freeing path and wanting its sustained rate against C now.
/// The keys are the whole bench's steady_* keys, with the same targets.
public struct BenchSteadyReport: Sendable, Codable, Equatable {
    public var steadySeconds: Double
    public var steadyBoundBytes: UInt64
    public var steadyDeferTablesPerSec: Double
    public var steadyGatherTablesPerSec: Double
    public var steadyCallRCUPerSecC: Double
    public var steadyCGatherTablesPerSec: Double
    public var steadyGatherRatio: Double
    public var steadyDeferRatio: Double
    public var tablePathNs: Double
    public var tablePathNsC: Double
    public var tablePathCostRatio: Double
    public var targets: [BenchReport.Target]
    public var allTargetsMet: Bool
    public var statistic: String
    public var rounds: Int
    public var build: String
    public var samples: [String: [Double]]

    enum CodingKeys: String, CodingKey {
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
        case targets
        case allTargetsMet = "all_targets_met"
        case statistic, rounds, build, samples
    }
}

extension Bench {
    /// The steady-state runs alone (see steadyRounds), on an allocator of
    /// their own.
    public static func runSteady(
        _ configuration: Configuration = Configuration(), parameters: ModuleParameters = ModuleParameters(),
        progress: (String) -> Void = { _ in }
    ) throws -> BenchSteadyReport {
        guard configuration.rounds >= 1, configuration.steadySeconds > 0, configuration.steadyWarmupSeconds >= 0,
              configuration.tablePathTables >= 1 else {
            throw BenchError.invalidConfiguration("rounds, the steady window and the table path's tables must be positive")
        }
        return try withBenchAllocator(configuration, parameters: parameters) { allocator, _ in
            let mm = try MM(allocator: allocator)
            defer { _ = mm.exit() }
            var samples: [String: [Double]] = [:]
            let window = SteadyWindow(configuration)
            try steadyRounds(window, tablePathTables: configuration.tablePathTables, rounds: configuration.rounds, mm: mm,
                             allocator: allocator, into: &samples, progress: progress)
            let m = samples.mapValues(median)
            let ratios = steadyRatios(samples)
            let targets = steadyTargets(samples)
            return BenchSteadyReport(
                steadySeconds: configuration.steadySeconds, steadyBoundBytes: window.boundBytes,
                steadyDeferTablesPerSec: m["steady_defer_tables_per_sec"]!,
                steadyGatherTablesPerSec: m["steady_gather_tables_per_sec"]!,
                steadyCallRCUPerSecC: m["steady_call_rcu_per_sec_c"]!,
                steadyCGatherTablesPerSec: m["steady_c_gather_tables_per_sec"]!,
                steadyGatherRatio: ratios.gather, steadyDeferRatio: ratios.defer,
                tablePathNs: m["table_path_ns"]!, tablePathNsC: m["table_path_ns_c"]!, tablePathCostRatio: ratios.tablePathCost,
                targets: targets, allTargetsMet: targets.allSatisfy(\.met),
                statistic: "median", rounds: configuration.rounds, build: buildConfiguration, samples: samples)
        }
    }

    /// Each steady Swift path over the C run it is held against, and the
    /// table path's cost (the model's ns per table over the C's), each the
    /// median of per-round ratios.
    static func steadyRatios(_ samples: [String: [Double]]) -> (gather: Double, defer: Double, tablePathCost: Double) {
        let byRound = steadyRoundRatios(samples)
        return (median(byRound["steady_gather_ratio"]!), median(byRound["steady_defer_ratio"]!),
                median(byRound["table_path_cost_ratio"]!))
    }

    /// The steady rounds' ratios round by round, in the order the rounds
    /// ran, keyed like the ratios they are the median of (empty where
    /// `samples` lacks a side). Worth reading beside the median: the
    /// kernel-shaped C's free list loses its address order from one round
    /// to the next, so it is usually fastest in its first round, and the
    /// steady rounds differ by more than the median shows (BENCHMARKS.md,
    /// "Round by round"); the table path's cost, measured without them,
    /// should not.
    public static func steadyRoundRatios(_ samples: [String: [Double]]) -> [String: [Double]] {
        var out: [String: [Double]] = [:]
        for (key, swift, c) in steadyRatioSides {
            out[key] = roundRatios(samples[swift] ?? [], samples[c] ?? [])
        }
        return out
    }

    /// The keys steadyRoundRatios returns, in the order a report lists them.
    public static var steadyRoundRatioKeys: [String] { steadyRatioSides.map(\.key) }

    /// Each ratio the steady rounds report, and the sample keys of its
    /// numerator (the model) and denominator (the C).
    private static let steadyRatioSides: [(key: String, swift: String, c: String)] = [
        ("steady_gather_ratio", "steady_gather_tables_per_sec", "steady_c_gather_tables_per_sec"),
        ("steady_defer_ratio", "steady_defer_tables_per_sec", "steady_call_rcu_per_sec_c"),
        ("table_path_cost_ratio", "table_path_ns", "table_path_ns_c"),
    ]

    static func steadyTargets(_ samples: [String: [Double]]) -> [BenchReport.Target] {
        let ratios = steadyRatios(samples)
        return [
            .init("steady_defer_ratio", .atLeast, 1.0, ratios.defer,
                  "pte_free_defer sustained keeps up with C malloc+call_rcu+free sustained, memory bounded alike"),
            .init("steady_gather_ratio", .atLeast, 1.0, ratios.gather,
                  "the mmu_gather's table path sustained keeps up with C in the kernel's shape (struct page lists, ctor/dtor, 509 per call_rcu'd batch page)"),
            .init("steady_gather_tables_per_sec", .atLeast, 25e6, median(samples["steady_gather_tables_per_sec"]!),
                  "the mmu_gather's table path sustains 25 M tables/s"),
        ]
    }
}
