import PageTableLab
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
    /// Updater threads; nil: the scenario's own number (2 for `race`, 1
    /// elsewhere). Only scenarios built for concurrent updaters take more.
    public var updaters: Int?
    /// How TLB flushes reach the walkers' CPUs (module parameter tlb_flush).
    public var tlbFlush = TLBFlushKind.ipi
    /// The THP policy the updaters' faults follow where the scenario takes
    /// one (Scenario.followsTHPParameters; module parameters thp_enabled and
    /// thp_shmem_enabled, which `ptlab stress` reads from the running
    /// kernel unless they say otherwise). MADV_COLLAPSE ignores it, as the
    /// kernel's does.
    public var thp = THPSettings()
    public var seed: UInt64 = 1
    /// PTE tables' worth of address space the updater churns.
    public var tables: Int = 8
    /// Stop after this many updater operations, all updaters together
    /// (reproducible amounts of work for tests), whatever the duration.
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
    /// An updater's operation failed in a run whose model had already
    /// counted integrity problems, which may be why (refused frees leak
    /// pages until an allocation fails): the error, then the problems.
    case failedAfterIntegrityProblems(String, problems: [String])

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
        case .failedAfterIntegrityProblems(let error, let problems):
            "\(error), in a run that had already counted \(problems.joined(separator: "; "))"
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

    /// The run `options` names: one of `Scenario.all`, by name and path.
    public init(_ options: StressOptions) throws(StressError) {
        guard Scenario.named(options.scenario) != nil else {
            throw .unknownScenario(options.scenario, known: Scenario.names)
        }
        guard let scenario = Scenario.named(options.scenario, path: options.path) else {
            throw .unknownPath(scenario: options.scenario, path: options.path ?? "", known: Scenario.paths(of: options.scenario))
        }
        try self.init(options, scenario: scenario)
    }

    /// A run of `scenario` — the lab's own or a prototype's — in the mode
    /// `options.mode` names (`options.scenario` and `options.path` are not
    /// looked at).
    public init(_ options: StressOptions, scenario: Scenario) throws(StressError) {
        guard let mode = scenario.mode(named: options.mode) else {
            throw .unknownMode(scenario: scenario.name, mode: options.mode, known: scenario.modes.map(\.name))
        }
        guard options.walkers >= 1, options.walkers <= 256 else { throw .invalidOption("--walkers must be 1...256") }
        if let updaters = options.updaters {
            guard updaters >= 1, updaters <= 64 else { throw .invalidOption("--updaters must be 1...64") }
            guard scenario.updaters > 1 || updaters == 1 else {
                let racing = Scenario.all.filter { $0.updaters > 1 }.map(\.name).joined(separator: ", ")
                throw .invalidOption("scenario '\(scenario.name)' has one updater (its steps assume it); --updaters belongs to \(racing)")
            }
        }
        guard options.duration > 0, options.duration <= 86_400 else { throw .invalidOption("--duration must be in (0, 86400] seconds") }
        guard options.tables >= 1, options.tables <= 512 else { throw .invalidOption("tables must be 1...512") }
        self.options = options
        self.scenario = scenario
        self.mode = mode
    }

    /// Updater threads this run has.
    public var updaters: Int { options.updaters ?? scenario.updaters }

    /// The detector that must catch this run (nil: nothing may be caught).
    public var expectedDetector: Detector? { mode.expectedDetector(under: options.tlbFlush) }

    public func run(allocator: PageAllocator) throws -> StressResult {
        var profile = MMProfile()
        profile.thp = scenario.followsTHPParameters ? options.thp : THPSettings()
        mode.profile(&profile)
        profile.tlbFlush = options.tlbFlush
        let region = StressRegion(base: Self.regionBase, tables: options.tables)
        let books = StressBooks(allocator)
        let expected = expectedDetector

        return try RCU.withRegisteredThread {
            let mm = try MM(allocator: allocator, profile: profile)
            var iommuParameters = options.iommu
            mode.iommu(&iommuParameters)
            let binding = scenario.needsIOMMU ? try SVABinding(mm: mm, allocator: allocator, parameters: iommuParameters) : nil
            do {
                try scenario.setUp?(mm, region)
            } catch {
                // Nothing ran: the mm (and the device bound to it) go back.
                try binding?.teardown()
                mm.exit()
                throw error
            }
            let crew = WalkerCrew(mm: mm, region: region, walkers: scenario.walkers, count: options.walkers, seed: options.seed,
                                  watching: expected, iommu: binding?.iommu)
            let updaterCrew = UpdaterCrew(options: options, scenario: scenario, mm: mm, region: region, count: updaters) {
                crew.watchedSoFar + (expected == nil || expected == .staleTableWrite ? mm.staleTableWrites.load(ordering: .relaxed) : 0)
            } walks: {
                (crew.walksSoFar, crew.uafSoFar + mm.staleTableWrites.load(ordering: .relaxed))
            }
            crew.waitUntilEveryWalkerWalks()
            let (ops, elapsed, failure) = updaterCrew.run()
            var counters = crew.stop()
            counters[.staleTableWrite] = mm.staleTableWrites.load(ordering: .relaxed)
            let tlbFlushes = mm.tlb.remoteFlushes.load(ordering: .relaxed)
            let vmPTE = (accounted: mm.pgtablesBytes, held: mm.tableBytesHeld)
            let thp = StressResult.THPEvents(mm.thpEvents)
            let vmaLocks = StressResult.VMALocks(mm.vmaLockEvents)
            try binding?.teardown()
            mm.exit()
            let deferredPeak = books.deferredMonitor.stop()
            try RCU.barrier()
            if let failure {
                let problems = books.integritySince.problems
                guard problems.isEmpty else {
                    throw StressError.failedAfterIntegrityProblems(String(describing: failure), problems: problems)
                }
                throw failure
            }
            if options.injectDoubleFree {
                let page = try allocator.alloc()
                PageTables.release(page, allocator: allocator)
                PageTables.release(page, allocator: allocator)
            }
            var result = StressResult(
                scenario: scenario.name, path: scenario.path, mode: mode.name, safe: expected == nil,
                expectedDetector: expected,
                seed: options.seed, walkers: options.walkers, durationSeconds: elapsed, ops: ops, walks: counters.walks,
                uafDetected: counters.useAfterFree, leakedPages: books.leakedPages,
                tablesFreed: books.tablesFreedSince,
                rcuCallbacks: books.callbacksSince,
                tlbFlushes: tlbFlushes, peakDeferredBytes: Int(deferredPeak),
                freeLatencyUs: FreeLatency.summary(), detections: counters,
                integrity: books.integritySince, pass: false, verdict: "")
            result.updaters = updaters
            result.walkerContexts = scenario.walkers
            result.tlbFlush = options.tlbFlush
            result.vmPTEBytes = vmPTE.accounted
            result.thpEvents = thp
            result.thp = StressResult.THPPolicy(profile.thp)
            result.vmaLocks = vmaLocks
            let kinds = region.ops.snapshot
            result.opKinds = kinds.isEmpty ? nil : kinds
            result.tableBytesHeld = vmPTE.held
            if let iommu = binding?.iommu {
                let stats = iommu.counters.snapshot()
                result.iotlbInvalidations = Int(stats.iotlbInvalidations)
                result.qiDescriptors = Int(stats.qiDescriptors)
            }
            var problems: [String] = []
            if expected == nil && vmPTE.accounted != vmPTE.held {
                problems.append("VmPTE \(vmPTE.accounted >> 10) kB but the mm holds \(vmPTE.held >> 10) kB of tables at the end")
            }
            result.judge(problems: problems)
            return result
        }
    }
}

extension StressResult.VMALocks {
    init(_ events: VMALockEvents) {
        faultVMA = events.faultVMA.load(ordering: .relaxed)
        faultMMap = events.faultMMap.load(ordering: .relaxed)
        faultBesideWriter = events.faultBesideWriter.load(ordering: .relaxed)
        dontneedVMA = events.dontneedVMA.load(ordering: .relaxed)
        dontneedMMap = events.dontneedMMap.load(ordering: .relaxed)
        dontneedBesideWriter = events.dontneedBesideWriter.load(ordering: .relaxed)
    }
}

extension StressResult.VMALocks {
    /// Two runs' (or two mms') counts together.
    static func + (a: Self, b: Self) -> Self {
        var s = a
        s.faultVMA += b.faultVMA
        s.faultMMap += b.faultMMap
        s.faultBesideWriter += b.faultBesideWriter
        s.dontneedVMA += b.dontneedVMA
        s.dontneedMMap += b.dontneedMMap
        s.dontneedBesideWriter += b.dontneedBesideWriter
        return s
    }
}

extension StressResult.THPEvents {
    /// Two runs' (or two mms') counts together.
    static func + (a: Self, b: Self) -> Self {
        var s = a
        s.faultAlloc += b.faultAlloc
        s.faultFallback += b.faultFallback
        s.collapseAlloc += b.collapseAlloc
        s.splitPMD += b.splitPMD
        return s
    }

    init(_ events: PageTableLab.THPEvents) {
        faultAlloc = events.faultAlloc.load(ordering: .relaxed)
        faultFallback = events.faultFallback.load(ordering: .relaxed)
        collapseAlloc = events.collapseAlloc.load(ordering: .relaxed)
        splitPMD = events.splitPMD.load(ordering: .relaxed)
    }
}
