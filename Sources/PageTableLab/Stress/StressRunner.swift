import Synchronization

/// What a stress run is asked to do. Printed with the result, so a run can
/// be reproduced from its output.
public struct StressOptions: Sendable {
    public var scenario: String
    public var mode: String
    /// The scenario's kernel path where it has several (`collapse`: shmem,
    /// the default, or anon).
    public var path: String?
    public var duration: Double = 3
    public var walkers: Int = 2
    public var seed: UInt64 = 1
    /// PTE tables' worth of address space the updater churns.
    public var tables: Int = 8
    /// Stop after this many updater operations (reproducible amounts of
    /// work for tests), whatever the duration.
    public var maxOps: Int?
    /// Stop at the first detection by the mode's own detector (any
    /// detection for a safe mode): an unsafe mode has proved its point.
    public var stopOnDetection = false
    /// Harness self-test: free one page twice at the end of the run, the
    /// bug the integrity counters exist for, so that a safe run can be seen
    /// to fail and the CLI to exit 1 (`ptlab stress --inject double-free`).
    public var injectDoubleFree = false
    /// Called about twice a second from the updater with (elapsed, ops, walks, uaf).
    public var progress: (@Sendable (StressProgress) -> Void)?
    /// The IOMMU of kernel-free and iommu-faults runs (qi_driver,
    /// sva_notifier_ih from the module parameters).
    public var iommu = IntelIOMMU.Parameters()

    public init(scenario: String, mode: String) {
        self.scenario = scenario
        self.mode = mode
    }
}

public struct StressProgress: Sendable {
    public var elapsed: Double
    public var duration: Double
    public var ops: Int
    public var walks: Int
    public var uaf: Int
}

public enum StressError: Error, CustomStringConvertible, Equatable {
    case unknownScenario(String, known: [String])
    case unknownMode(scenario: String, mode: String, known: [String])
    case unknownPath(scenario: String, path: String, known: [String])
    case invalidOption(String)

    public var description: String {
        switch self {
        case .unknownScenario(let s, let known):
            "unknown scenario '\(s)' (scenarios: \(known.joined(separator: ", ")))"
        case .unknownMode(let s, let m, let known):
            "scenario '\(s)' has no mode '\(m)' (modes: \(known.joined(separator: ", ")))"
        case .unknownPath(let s, let p, let known):
            known.isEmpty ? "scenario '\(s)' has one path; --path \(p) does not apply"
                : "scenario '\(s)' has no path '\(p)' (paths: \(known.joined(separator: ", ")))"
        case .invalidOption(let s): s
        }
    }
}

/// Runs one scenario in one mode on a loaded allocator: walker threads
/// ("CPUs") against an updater on the calling thread, then a full teardown
/// that checks every page came back.
public struct StressRunner {
    /// The 512 GiB region stress runs use: far from anything else.
    public static let regionBase: UInt64 = 0x200_0000_0000

    public let options: StressOptions
    public let scenario: Scenario
    public let mode: Scenario.Mode

    public init(_ options: StressOptions) throws(StressError) {
        guard Scenario.named(options.scenario) != nil else {
            throw .unknownScenario(options.scenario, known: Scenario.names)
        }
        guard let scenario = Scenario.named(options.scenario, path: options.path) else {
            throw .unknownPath(scenario: options.scenario, path: options.path ?? "", known: Scenario.paths(of: options.scenario))
        }
        guard let mode = scenario.mode(named: options.mode) else {
            throw .unknownMode(scenario: scenario.name, mode: options.mode, known: scenario.modes.map(\.name))
        }
        guard options.walkers >= 1, options.walkers <= 256 else { throw .invalidOption("--walkers must be 1...256") }
        guard options.duration > 0, options.duration <= 86_400 else { throw .invalidOption("--duration must be in (0, 86400] seconds") }
        guard options.tables >= 1, options.tables <= 512 else { throw .invalidOption("tables must be 1...512") }
        self.options = options
        self.scenario = scenario
        self.mode = mode
    }

    public func run(allocator: PageAllocator) throws -> StressResult {
        var profile = MMProfile()
        mode.profile(&profile)
        let region = StressRegion(base: Self.regionBase, tables: options.tables)
        let startAllocated = allocator.totalAllocatedPages
        let freedBefore = PageTables.stats.freed
        let callbacksBefore = DeferredBound.snapshot().invoked
        let integrityBefore = Integrity.snapshot()
        FreeLatency.reset()
        let deferredMonitor = DeferredMemoryMonitor(periodMicroseconds: 250)

        return try RCU.withRegisteredThread {
            let mm = try MM(allocator: allocator, profile: profile)
            var iommuParameters = options.iommu
            mode.iommu(&iommuParameters)
            let binding = scenario.needsIOMMU ? try SVABinding(mm: mm, allocator: allocator, parameters: iommuParameters) : nil
            let crew = WalkerCrew(mm: mm, region: region, kinds: scenario.walks, count: options.walkers, seed: options.seed,
                                  watching: mode.expectedDetector, iommu: binding?.iommu)
            var rng = SplitMix64(seed: options.seed)
            var ops = 0
            let start = monotonicNanoseconds()
            var nextReport = start
            var elapsed = 0.0
            var failure: Error?
            while elapsed < options.duration, ops < options.maxOps ?? .max,
                  !(options.stopOnDetection && crew.watchedSoFar > 0) {
                do {
                    try scenario.step(mm, region, &rng)
                } catch {
                    failure = error
                    break
                }
                ops += 1
                let now = monotonicNanoseconds()
                elapsed = Double(now - start) / 1e9
                if let progress = options.progress, now >= nextReport {
                    nextReport = now + 500_000_000
                    progress(StressProgress(elapsed: elapsed, duration: options.duration, ops: ops,
                                            walks: crew.walksSoFar, uaf: crew.uafSoFar))
                }
            }
            let counters = crew.stop()
            let tlbFlushes = mm.tlb.remoteFlushes.load(ordering: .relaxed)
            try binding?.teardown()
            mm.exit()
            let deferredPeak = deferredMonitor.stop()
            try RCU.barrier()
            if let failure { throw failure }
            if options.injectDoubleFree {
                let page = try allocator.alloc()
                PageTables.release(page, allocator: allocator)
                PageTables.release(page, allocator: allocator)
            }
            var result = StressResult(
                scenario: scenario.name, path: scenario.path, mode: mode.name, safe: mode.safe,
                expectedDetector: mode.expectedDetector,
                seed: options.seed, walkers: options.walkers, durationSeconds: elapsed, ops: ops, walks: counters.walks,
                uafDetected: counters.useAfterFree, leakedPages: allocator.totalAllocatedPages - startAllocated,
                tablesFreed: PageTables.stats.freed - freedBefore,
                rcuCallbacks: Int(DeferredBound.snapshot().invoked - callbacksBefore),
                tlbFlushes: tlbFlushes, peakDeferredBytes: Int(deferredPeak),
                freeLatencyUs: FreeLatency.summary(), detections: counters,
                integrity: Integrity.snapshot() - integrityBefore, pass: false, verdict: "")
            if let iommu = binding?.iommu {
                let stats = iommu.counters.snapshot()
                result.iotlbInvalidations = Int(stats.iotlbInvalidations)
                result.qiDescriptors = Int(stats.qiDescriptors)
            }
            result.judge()
            return result
        }
    }
}
