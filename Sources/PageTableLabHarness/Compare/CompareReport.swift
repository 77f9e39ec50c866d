import PageTableLab
/// What `ptlab compare --json` prints:
/// `{"traces":[{"file":…,"match":bool,"checkpoints":[{"line":N,"model_kb":X,"kernel_kb":Y}]}]}`.
/// A side that did not run is `null`, not absent, so a reader can rely on
/// the keys. Added keys: `profile`, `model_kernel` (the release whose mm
/// the model followed, MAJOR.MINOR), `expectations_apply` (false where that
/// is not the profile's own kernel, on which the traces' `expect` values
/// were measured: `expected_kb` is then null); per trace `error`, `refused` (the
/// live kernel's region check turned it away before it ran), `after_cleanup`,
/// `comparable` and `not_comparable` (why not: the live kernel went where
/// the model cannot follow, e.g. no huge page to be had; such a trace has
/// no verdict, `match` false but no mismatch either), `skipped` (why the
/// trace did not run: its `profiles` line names other profiles; `match`
/// false, no mismatch either, and `comparable` stays true: no kernel went
/// astray in it); per checkpoint
/// `expected_kb` and `match`; with `--time`, per trace `ops`,
/// `model_seconds`, `kernel_seconds` (each side's pass: its ops, cleanup
/// and VmPTE readings) and `ratio` (kernel / model: how many times faster
/// the model replayed the trace).
public struct CompareReport: Codable, Equatable, Sendable {
    public var profile: String
    /// The kernel release whose mm the model followed (MAJOR.MINOR); null
    /// when no model ran.
    public var modelKernel: String?
    /// Whether the traces' stated values were held against (see
    /// CompareRunner.expectationsApply).
    public var expectationsApply: Bool
    public var traces: [TraceReport]

    enum CodingKeys: String, CodingKey {
        case profile, traces
        case modelKernel = "model_kernel"
        case expectationsApply = "expectations_apply"
    }

    public init(profile: CompareProfile, modelKernel: KernelVersion? = nil, expectationsApply: Bool = true, runs: [TraceRun],
                timed: Bool = false) {
        self.profile = profile.rawValue
        self.modelKernel = modelKernel?.description
        self.expectationsApply = expectationsApply
        traces = runs.map { TraceReport($0, timed: timed) }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(profile, forKey: .profile)
        try c.encode(modelKernel, forKey: .modelKernel)
        try c.encode(expectationsApply, forKey: .expectationsApply)
        try c.encode(traces, forKey: .traces)
    }

    /// Every trace matched, or was skipped.
    public var matches: Bool { traces.allSatisfy { $0.match || $0.skipped != nil } }

    /// Some trace was refused before it ran: the exit status says bad input.
    public var refused: Bool { traces.contains(where: \.refused) }

    /// Every trace either matches or has no verdict, and at least one has
    /// none: the exit status says so apart from a mismatch.
    public var onlyNotComparable: Bool {
        !matches && traces.allSatisfy { $0.match || !$0.comparable || $0.skipped != nil }
    }
}

public struct TraceReport: Codable, Equatable, Sendable {
    public var file: String
    public var match: Bool
    public var checkpoints: [CheckpointReport]
    /// `FILE:LINE: message` when the trace stopped early.
    public var error: String?
    /// Refused before it ran (TraceRun.refused).
    public var refused: Bool
    /// False when the trace stopped without a verdict (`notComparable` says why).
    public var comparable: Bool
    public var notComparable: String?
    /// Why the trace did not run (its `profiles`), or nil.
    public var skipped: String?
    /// Growth once the runner unmapped what the trace left mapped.
    public var afterCleanup: Sides?
    /// With `--time`: the trace's ops, each side's seconds, and kernel /
    /// model when both ran.
    public var ops: Int?
    public var modelSeconds: Double?
    public var kernelSeconds: Double?
    public var ratio: Double?

    public struct Sides: Codable, Equatable, Sendable {
        public var modelKB: Int?
        public var kernelKB: Int?

        enum CodingKeys: String, CodingKey {
            case modelKB = "model_kb", kernelKB = "kernel_kb"
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(modelKB, forKey: .modelKB)
            try c.encode(kernelKB, forKey: .kernelKB)
        }
    }

    enum CodingKeys: String, CodingKey {
        case file, match, checkpoints, error, refused, comparable, skipped
        case afterCleanup = "after_cleanup"
        case notComparable = "not_comparable"
        case ops, ratio
        case modelSeconds = "model_seconds", kernelSeconds = "kernel_seconds"
    }

    public init(_ run: TraceRun, timed: Bool = false) {
        file = run.file
        match = run.matches
        checkpoints = run.checkpoints.map { checkpoint in
            CheckpointReport(line: checkpoint.line,
                             modelKB: run.value(checkpoint.kilobytes, of: "model"),
                             kernelKB: run.value(checkpoint.kilobytes, of: "kernel"),
                             expectedKB: checkpoint.expected,
                             match: checkpoint.matches)
        }
        comparable = !run.notComparable
        notComparable = run.notComparable ? run.error?.description : nil
        error = run.notComparable ? nil : run.error?.description
        refused = run.refused
        skipped = run.skipped
        afterCleanup = run.afterCleanup.isEmpty ? nil
            : Sides(modelKB: run.value(run.afterCleanup, of: "model"), kernelKB: run.value(run.afterCleanup, of: "kernel"))
        if timed {
            ops = run.ops
            modelSeconds = run.value(run.seconds, of: "model")
            kernelSeconds = run.value(run.seconds, of: "kernel")
            if let m = modelSeconds, let k = kernelSeconds, m > 0 { ratio = k / m }
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(file, forKey: .file)
        try c.encode(match, forKey: .match)
        try c.encode(checkpoints, forKey: .checkpoints)
        try c.encode(error, forKey: .error)
        try c.encode(refused, forKey: .refused)
        try c.encode(afterCleanup, forKey: .afterCleanup)
        try c.encode(comparable, forKey: .comparable)
        try c.encode(notComparable, forKey: .notComparable)
        try c.encode(skipped, forKey: .skipped)
        if let ops {
            try c.encode(ops, forKey: .ops)
            try c.encode(modelSeconds, forKey: .modelSeconds)
            try c.encode(kernelSeconds, forKey: .kernelSeconds)
            try c.encode(ratio, forKey: .ratio)
        }
    }
}

public struct CheckpointReport: Codable, Equatable, Sendable {
    public var line: Int
    public var modelKB: Int?
    public var kernelKB: Int?
    public var expectedKB: Int?
    public var match: Bool

    enum CodingKeys: String, CodingKey {
        case line, match
        case modelKB = "model_kb", kernelKB = "kernel_kb", expectedKB = "expected_kb"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(line, forKey: .line)
        try c.encode(modelKB, forKey: .modelKB)
        try c.encode(kernelKB, forKey: .kernelKB)
        try c.encode(expectedKB, forKey: .expectedKB)
        try c.encode(match, forKey: .match)
    }
}
