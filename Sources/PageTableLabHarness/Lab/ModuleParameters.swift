import PageTableLab
/// Named parameters in the style of a kernel module's (`modinfo -p`,
/// `/sys/module/*/parameters`): flat, typed, with defaults, printable, and
/// settable as `name=value`, so that a run's printout is enough to reproduce it.
///
/// Every parameter the lab knows is one row of `ModuleParameters.table`. To
/// add one, add a row there and read it with `int(_:)`, `bool(_:)` or
/// `string(_:)`; printing, parsing, validation and the `--param` option of
/// every `ptlab` subcommand follow from the row.
public struct ModuleParameter: Sendable, Equatable {
    /// What a value may be. Parsing is strict: a value that does not fit is an
    /// error naming the parameter, never a silent default.
    public enum Kind: Sendable, Equatable {
        case int(ClosedRange<Int>)
        /// Bytes; accepts K, M and G suffixes (powers of 1024).
        case bytes(ClosedRange<UInt64>)
        /// y/n, 1/0, on/off, true/false, yes/no — what the kernel's param_set_bool takes.
        case bool
        case choice([String])
    }

    public let name: String
    public let kind: Kind
    public let defaultValue: ModuleParameterValue
    /// One line: what it controls, and why someone would change it.
    public let help: String

    public static func int(_ name: String, _ value: Int, _ range: ClosedRange<Int>, _ help: String) -> Self {
        Self(name: name, kind: .int(range), defaultValue: .int(value), help: help)
    }
    public static func bytes(_ name: String, _ value: UInt64, _ range: ClosedRange<UInt64>, _ help: String) -> Self {
        Self(name: name, kind: .bytes(range), defaultValue: .bytes(value), help: help)
    }
    public static func bool(_ name: String, _ value: Bool, _ help: String) -> Self {
        Self(name: name, kind: .bool, defaultValue: .bool(value), help: help)
    }
    public static func choice(_ name: String, _ value: String, _ options: [String], _ help: String) -> Self {
        Self(name: name, kind: .choice(options), defaultValue: .choice(value), help: help)
    }

    /// The accepted values, for `ptlab info --params` and error messages.
    public var typeDescription: String {
        switch kind {
        case .int(let r): "int \(r.lowerBound)...\(r.upperBound)"
        case .bytes(let r): "bytes \(r.lowerBound)...\(r.upperBound) (K/M/G suffixes)"
        case .bool: "bool (y/n)"
        case .choice(let options): options.joined(separator: "|")
        }
    }

    func parse(_ text: String) throws(ModuleParameterError) -> ModuleParameterValue {
        let bad = ModuleParameterError.badValue(name: name, value: text, expected: typeDescription)
        switch kind {
        case .int(let range):
            guard let v = Int(text), range.contains(v) else { throw bad }
            return .int(v)
        case .bytes(let range):
            guard let v = Self.parseBytes(text), range.contains(v) else { throw bad }
            return .bytes(v)
        case .bool:
            switch text.lowercased() {
            case "y", "yes", "1", "on", "true": return .bool(true)
            case "n", "no", "0", "off", "false": return .bool(false)
            default: throw bad
            }
        case .choice(let options):
            guard options.contains(text) else { throw bad }
            return .choice(text)
        }
    }

    private static func parseBytes(_ text: String) -> UInt64? {
        let shifts: [Character: UInt64] = ["K": 10, "k": 10, "M": 20, "m": 20, "G": 30, "g": 30]
        guard let last = text.last else { return nil }
        guard let shift = shifts[last] else { return UInt64(text) }
        guard let v = UInt64(text.dropLast()), v <= UInt64.max >> shift else { return nil }
        return v << shift
    }
}

/// One parameter's value. Printed as it would be typed after `name=`.
public enum ModuleParameterValue: Sendable, Equatable, CustomStringConvertible {
    case int(Int)
    case bytes(UInt64)
    case bool(Bool)
    case choice(String)

    public var description: String {
        switch self {
        case .int(let v): String(v)
        case .bytes(let v): String(v)
        case .bool(let v): v ? "y" : "n"
        case .choice(let v): v
        }
    }
}

public enum ModuleParameterError: Error, Equatable, CustomStringConvertible {
    case unknown(name: String, known: [String])
    case badValue(name: String, value: String, expected: String)
    case malformed(String)
    /// The value parsed but could not be put into effect.
    case notApplied(name: String, reason: String)
    /// Each value is in its range, but together they break a rule.
    case inconsistent(String)

    public var description: String {
        switch self {
        case .unknown(let name, let known):
            "unknown module parameter '\(name)' (known: \(known.joined(separator: ", ")))"
        case .badValue(let name, let value, let expected):
            "module parameter \(name): '\(value)' is not valid (expected \(expected))"
        case .malformed(let text):
            "module parameter '\(text)' must be written name=value"
        case .notApplied(let name, let reason):
            "module parameter \(name): \(reason)"
        case .inconsistent(let reason):
            "module parameters: \(reason)"
        }
    }
}

/// A full set of values: the table's defaults with whatever was set on top.
public struct ModuleParameters: Sendable, Equatable {
    /// Every parameter the lab knows, grouped by the subsystem that reads it.
    public static let table: [ModuleParameter] = [
        // Memory/ (PageAllocator.Parameters)
        .int("node_budget_pages", PageAllocator.Parameters().nodeBudgetPages, 1...(1 << 28),
             "pages each node may hand out before allocations fall back to the nearest node; a multiple of 2^chunk_order"),
        .int("chunk_order", PageAllocator.Parameters().chunkOrder, 0...PageAllocator.Parameters.maxChunkOrder,
             "log2 pages per numa_alloc_onnode chunk; also the largest allocation order (a huge PMD needs 9)"),
        .bool("page_poison", PageAllocator.Parameters().poison,
              "fill freed pages with 0x6b so that a stale reader sees poison (the kernel's page_poison=1)"),
        // RCU/
        .bytes("deferred_bound_bytes", 0, 0...(1 << 48),
               "deferred-free bytes allowed outstanding; over it call() waits a grace period and frees inline (0: unbounded)"),
        .choice("rcu_workers", RCU.Workers.default.rawValue, RCU.Workers.allCases.map(\.rawValue),
                "call_rcu worker threads: liburcu's one default worker, or one per CPU"),
        // Reclaim/ (FreeLatency)
        .int("free_latency_sample_shift", FreeLatency.defaultSampleShift, FreeLatency.sampleShifts,
             "time one deferred free in 2^shift per thread (free_latency_us); 0 times every free, for a short run's tail, at two clock reads and a lock each"),
        // PageTable/ (THPSettings)
        .choice("thp_enabled", "kernel", ["kernel"] + THPSettings.Enabled.allCases.map(\.rawValue),
                "the model's /sys/kernel/mm/transparent_hugepage/enabled: kernel reads the running kernel's"),
        .choice("thp_shmem_enabled", "kernel", ["kernel"] + THPSettings.ShmemEnabled.allCases.map(\.rawValue),
                "the model's .../transparent_hugepage/shmem_enabled: kernel reads the running kernel's"),
        // Gather/ (TLBModel)
        .choice("tlb_flush", TLBFlushKind.ipi.rawValue, TLBFlushKind.allCases.map(\.rawValue),
                "how a TLB flush reaches other CPUs: an IPI each CPU answers with IRQs on (x86 native), or no-ipi (INVLPGB, paravirt), which does not wait out GUP-fast"),
        // IOMMU/ (IntelIOMMU.Parameters)
        .choice("qi_driver", QIDriver.robust.rawValue, QIDriver.allCases.map(\.rawValue),
                "qi_submit_sync's polling: the lab's batch-safe one, or Linux's qi_check_fault step for step (whose lockups are reported, not hung on)"),
        .choice("sva_notifier_ih", SVANotifierHint.linux.rawValue, SVANotifierHint.allCases.map(\.rawValue),
                "IH of the SVA notifier's flushes: 0 as Linux sends it, or leaf-only (unsafe: IH=1 keeps paging-structure caches)"),
        .choice("sva_mm_release", SVAMMRelease.teardown.rawValue, SVAMMRelease.allCases.map(\.rawValue),
                "what the SVA notifier's release does when a bound mm exits: teardown clears the PASID entry and flushes, as intel_mm_release does; none (unsafe) leaves the IOMMU walking what exit frees"),
    ]

    private var values: [String: ModuleParameterValue]

    /// Every parameter at its default.
    public init() {
        values = Dictionary(uniqueKeysWithValues: Self.table.map { ($0.name, $0.defaultValue) })
    }

    /// The defaults with `assignments` ("name=value") applied in order.
    public init(_ assignments: [String]) throws(ModuleParameterError) {
        self.init()
        for assignment in assignments { try set(assignment) }
        // The allocator's rules between its parameters, here rather than
        // when a command loads it, after what it ran before.
        do { try allocator.validate() } catch { throw .inconsistent(error.description) }
    }

    public static func parameter(named name: String) -> ModuleParameter? {
        table.first { $0.name == name }
    }

    /// Set one parameter from "name=value".
    public mutating func set(_ assignment: String) throws(ModuleParameterError) {
        guard let eq = assignment.firstIndex(of: "="), eq != assignment.startIndex else {
            throw .malformed(assignment)
        }
        try set(String(assignment[..<eq]), to: String(assignment[assignment.index(after: eq)...]))
    }

    public mutating func set(_ name: String, to text: String) throws(ModuleParameterError) {
        guard let parameter = Self.parameter(named: name) else {
            throw .unknown(name: name, known: Self.table.map(\.name))
        }
        values[name] = try parameter.parse(text)
    }

    public func value(_ name: String) -> ModuleParameterValue {
        guard let v = values[name] else { preconditionFailure("no module parameter named \(name) in ModuleParameters.table") }
        return v
    }

    /// Typed reads. The name must be in the table: a misspelling is a bug
    /// in the caller, not bad input, so it stops the program.
    public func int(_ name: String) -> Int {
        guard case .int(let v) = value(name) else { preconditionFailure("module parameter \(name) is not an int") }
        return v
    }

    public func bytes(_ name: String) -> UInt64 {
        guard case .bytes(let v) = value(name) else { preconditionFailure("module parameter \(name) is not bytes") }
        return v
    }

    public func bool(_ name: String) -> Bool {
        guard case .bool(let v) = value(name) else { preconditionFailure("module parameter \(name) is not a bool") }
        return v
    }

    public func string(_ name: String) -> String { value(name).description }

    /// (name, value) in table order.
    public var all: [(name: String, value: ModuleParameterValue)] {
        Self.table.map { ($0.name, value($0.name)) }
    }

    /// The `--param` options that reproduce these values (only those that
    /// differ from the defaults).
    public var commandLine: [String] {
        Self.table.filter { value($0.name) != $0.defaultValue }.map { "--param \($0.name)=\(value($0.name))" }
    }
}

extension ModuleParameters {
    /// What the page allocator is loaded with.
    public var allocator: PageAllocator.Parameters {
        var p = PageAllocator.Parameters()
        p.nodeBudgetPages = int("node_budget_pages")
        p.chunkOrder = int("chunk_order")
        p.poison = bool("page_poison")
        return p
    }

    public var rcuWorkers: RCU.Workers { RCU.Workers(rawValue: string("rcu_workers"))! }

    /// The THP policy the model follows: the running kernel's, or what the
    /// parameters say instead.
    public var thp: THPSettings {
        let running = THPSettings.running
        return THPSettings(enabled: THPSettings.Enabled(rawValue: string("thp_enabled")) ?? running.enabled,
                           shmemEnabled: THPSettings.ShmemEnabled(rawValue: string("thp_shmem_enabled")) ?? running.shmemEnabled)
    }

    /// How the model's TLB flushes reach other CPUs.
    public var tlbFlush: TLBFlushKind { TLBFlushKind(rawValue: string("tlb_flush"))! }

    /// What an IOMMU is brought up with.
    public var iommu: IntelIOMMU.Parameters {
        var p = IntelIOMMU.Parameters()
        p.driver = QIDriver(rawValue: string("qi_driver"))!
        p.notifierHint = SVANotifierHint(rawValue: string("sva_notifier_ih"))!
        p.mmRelease = SVAMMRelease(rawValue: string("sva_mm_release"))!
        return p
    }

    /// Put the RCU parameters, and the sampling of the deferred frees' latency,
    /// into effect for this process (module_init's share of them: the
    /// allocator's are read when it is loaded).
    public func applyRCU() throws(ModuleParameterError) {
        DeferredBound.bytes = bytes("deferred_bound_bytes")
        FreeLatency.sampleShift = int("free_latency_sample_shift")
        guard RCU.useWorkers(rcuWorkers) else {
            throw .notApplied(name: "rcu_workers", reason: "liburcu could not create per-CPU call_rcu workers")
        }
    }
}
