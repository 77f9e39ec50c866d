import PageTableLab
/// Steps a trace on one or more targets side by side, op by op, and records
/// at every `expect` how far each target's VmPTE has grown since the trace
/// began.
///
/// Growth is the sum of what each op changed — VmPTE read just before and
/// just after the op — rather than "now minus baseline". The live kernel's
/// VmPTE belongs to the whole process: if the runtime, the model or another
/// thread grows a page table of its own between two ops (a new malloc arena,
/// a heap page in a fresh 2 MiB span), now-minus-baseline would charge it to
/// the trace. Bracketing each op leaves only the op's own syscall inside the
/// window, and the readings there allocate nothing (`VmPTEReader`). For the
/// model the two ways agree exactly.
///
/// Each target replays the whole trace in a pass of its own, the live
/// kernel's first, and the runner lines the passes up afterwards. The live
/// kernel's VmPTE is the whole process's: while it runs, nothing else here
/// may map, unmap, or give memory back to the kernel, and the model's
/// call_rcu callbacks (freeing tables, returning allocator chunks) would.
/// With passes in turn the model must be quiet only before a kernel pass —
/// one rcu_barrier per batch of traces (`TraceSettling`) — where side by
/// side, op by op, it had to be after every op that queued a callback:
/// about 10 ms each, liburcu's worker sleep, and most of a replay's time.
public struct CompareRunner {
    public let targets: [any TraceTarget]
    /// Selects the profile's value of `expect KB [PROFILE=KB]`.
    public let profile: CompareProfile
    /// Whether the traces' stated values hold here: they were measured on
    /// the profile's own kernel (6.18, or Debian's 6.1). Where the model
    /// follows another release, only the model and the kernel are held to
    /// each other, and checkpoints carry no expected value.
    public let expectationsApply: Bool
    /// The release the comparison stands for: a trace that needs a newer
    /// one (Trace.needs) is skipped. nil: none is skipped for that.
    public let kernel: KernelVersion?

    public init(targets: [any TraceTarget], profile: CompareProfile, kernel: KernelVersion? = nil, expectationsApply: Bool = true) {
        self.targets = targets
        self.profile = profile
        self.kernel = kernel
        self.expectationsApply = expectationsApply
    }

    /// Runs the whole trace on each target, then unmaps on each what the
    /// trace left. A target's failure stops the comparison at that line
    /// (checkpoints before it are kept); the error names every target that
    /// refused the op there.
    public func run(_ trace: Trace) -> TraceRun { run([trace])[0] }

    /// Runs every trace: all the live kernel's passes first, in a quiet
    /// process, then every other target's. Targets that leave work behind
    /// settle before the first kernel pass and once at the end.
    public func run(_ traces: [Trace]) -> [TraceRun] {
        var runs = traces.map { TraceRun(file: $0.file, targetNames: targets.map(\.name), ops: $0.opCount) }
        for (t, trace) in traces.enumerated() {
            runs[t].skipped = trace.skipReason(under: profile, kernel: kernel)
        }
        var passes = [[Pass]](repeating: [], count: traces.count)
        var settled = false
        for target in targets.filter({ $0 is any MeasuresThisProcess }) + targets.filter({ !($0 is any MeasuresThisProcess) }) {
            if target is any MeasuresThisProcess && !settled {
                settled = true
                if let problem = settle() {
                    return runs.map { $0.failed(TraceError(file: $0.file, line: 0, message: problem)) }
                }
            }
            for (t, trace) in traces.enumerated() where runs[t].error == nil && runs[t].skipped == nil {
                if let target = target as? any TracePreflight {
                    do { try target.preflight(trace) } catch {
                        runs[t].error = error
                        runs[t].refused = true
                        continue
                    }
                }
                // Nothing past the first line another target refused can
                // change the verdict.
                let stop = passes[t].compactMap { $0.failure?.line }.min()
                passes[t].append(Pass(target: target, trace: trace, stoppingAfter: stop))
            }
        }
        let settleError = settle()
        for t in traces.indices where runs[t].error == nil && runs[t].skipped == nil {
            let byTarget = targets.map { target in passes[t].first { $0.target === target }! }
            runs[t].lineUp(byTarget, trace: traces[t], profile: expectationsApply ? profile : nil)
            if let settleError, runs[t].error == nil { runs[t].error = TraceError(file: runs[t].file, line: 0, message: settleError) }
        }
        return runs
    }

    /// Lets every target that leaves work behind finish it.
    /// Lets every target that leaves work behind finish it; what went
    /// wrong, if anything.
    private func settle() -> String? {
        for case let target as any TraceSettling in targets {
            do { try target.settle() } catch {
                return "\(target.name): cannot wait for its deferred work: \(error)"
            }
        }
        return nil
    }
}

/// One target's replay of one trace: its growth and THP state at every
/// `expect`, the first op it refused, its growth after cleanup, its time.
struct Pass {
    struct Checkpoint {
        var kilobytes: Int
        var hugePMDs: Int?
        var thpEvents: THPEventCount?
    }

    let target: any TraceTarget
    var checkpoints: [Int: Checkpoint] = [:]
    var failure: TraceError?
    var afterCleanup = 0
    var cleanupFailure: TraceError?
    /// Wall time of the pass: ops, cleanup and the target's readings.
    var seconds = 0.0

    init(target: any TraceTarget, trace: Trace, stoppingAfter stop: Int?) {
        self.target = target
        let start = monotonicNanoseconds()
        var side = Side(target: target)
        let thpRegions = THPRegions(trace)
        do throws(TraceError) {
            let thpStart = try thpRegions.map { _ throws(TraceError) in try side.thpEvents(file: trace.file, line: 0) }
            for step in trace.steps {
                if let stop, step.line > stop { break }
                guard case .expect = step.op else {
                    try side.perform(step, file: trace.file)
                    continue
                }
                var checkpoint = Checkpoint(kilobytes: side.growth)
                if let regions = thpRegions, let thpStart {
                    checkpoint.hugePMDs = try side.hugePMDs(in: regions.ranges, file: trace.file, line: step.line)
                    checkpoint.thpEvents = try side.thpEvents(file: trace.file, line: step.line) - thpStart
                }
                checkpoints[step.line] = checkpoint
            }
        } catch {
            failure = error
        }
        cleanupFailure = side.unmapLeftovers(file: trace.file)
        afterCleanup = side.growth
        seconds = Double(monotonicNanoseconds() - start) / 1e9
    }
}

/// Where a trace that uses THP can have huge PMDs, whose count every target
/// must agree on; nil for a trace without hugepage or collapse.
///
/// Every range an op names (mremap: source and destination), rounded out to
/// 2 MiB and merged: disjoint, so each huge PMD is counted once. A trace's
/// memory is only ever where an mmap put it or an mremap moved it, and its
/// 512 GiB regions hold nothing else (`TracePreflight`), so this counts
/// every huge PMD in those regions — and the model walks 2 MiB-aligned
/// ranges of its tables, not every PUD and PMD entry of whole regions (that
/// walk was a seventh of a differential test's time).
private struct THPRegions {
    let ranges: [Range<UInt64>]

    init?(_ trace: Trace) {
        guard trace.usesTHP else { return nil }
        // The top 2 MiB of user space can hold no huge PMD (TASK_SIZE ends
        // a page short), and PAGEMAP_SCAN refuses a range that passes it.
        let pmd = Level.pmd.entrySpan
        let rounded = trace.steps.flatMap(\.op.ranges).map { r in
            r.lowerBound & ~(pmd - 1)..<min((r.upperBound + pmd - 1) & ~(pmd - 1), TraceAddressSpace.end)
        }.sorted { $0.lowerBound < $1.lowerBound }
        var merged: [Range<UInt64>] = []
        for r in rounded {
            if let last = merged.last, r.lowerBound <= last.upperBound {
                merged[merged.count - 1] = last.lowerBound..<max(last.upperBound, r.upperBound)
            } else {
                merged.append(r)
            }
        }
        ranges = merged
    }
}

extension TraceRun {
    func failed(_ error: TraceError) -> TraceRun {
        var run = self
        run.error = run.error ?? error
        return run
    }

    /// The passes side by side: checkpoints up to the first line a target
    /// refused, or up to one where the targets' huge pages differ.
    /// `profile`: whose stated values the checkpoints carry; nil for none.
    mutating func lineUp(_ passes: [Pass], trace: Trace, profile: CompareProfile?) {
        let firstFailure = passes.compactMap { $0.failure?.line }.min()
        seconds = passes.map(\.seconds)
        do throws(TraceError) {
            for step in trace.steps {
                if let firstFailure, step.line > firstFailure { break }
                guard case .expect(let expectation) = step.op else { continue }
                let sides = passes.map { $0.checkpoints[step.line]! }
                try Self.checkHugePMDs(sides, names: targetNames, file: trace.file, line: step.line)
                checkpoints.append(TraceCheckpoint(line: step.line, kilobytes: sides.map(\.kilobytes),
                                                   expected: profile.flatMap { expectation.kilobytes(for: $0) }))
            }
            if let firstFailure {
                // Every target ran the op even when one refused it, so that
                // the error says what each did (both refusing the same
                // collapse with EINVAL is a bad trace; only one refusing is
                // a disagreement).
                let failures = passes.compactMap(\.failure).filter { $0.line == firstFailure }
                throw TraceError(file: trace.file, line: firstFailure,
                                 message: failures.map(\.message).joined(separator: "; ")
                                     + (failures.count < passes.count ? " (the other side did not refuse)" : ""),
                                 notComparable: failures.contains(where: \.notComparable))
            }
        } catch {
            self.error = error
        }
        if error == nil { error = passes.compactMap(\.cleanupFailure).first }
        afterCleanup = passes.map(\.afterCleanup)
    }

    /// With THP, which memory is huge is state the targets must agree on —
    /// unless the kernel fell back to small pages or khugepaged collapsed
    /// on its own, when nothing can be said, or NUMA balancing hid huge
    /// PMDs from the kernel's count (THPEventCount.unseenNUMAHinted).
    private static func checkHugePMDs(_ sides: [Pass.Checkpoint], names: [String], file: String, line: Int) throws(TraceError) {
        let counts = sides.compactMap(\.hugePMDs)
        guard counts.count == sides.count, Set(counts).count > 1 else { return }
        let events = sides.compactMap(\.thpEvents)
        let said = zip(names, counts).map { "\($0.0) maps \($0.1)" }.joined(separator: ", ")
        let most = events.map(\.collapses).max() ?? 0, fewest = events.map(\.collapses).min() ?? 0
        if events.contains(where: { $0.fallbacks > 0 }) || most > fewest {
            throw TraceError(file: file, line: line, message: "huge PMDs differ (\(said)) where the kernel fell back to small pages or khugepaged collapsed memory on its own", notComparable: true)
        }
        // Hidden huge PMDs make a count short, never long.
        if let most = counts.max(), zip(counts, events).contains(where: { $0.1.unseenNUMAHinted > 0 && $0.0 < most }) {
            throw TraceError(file: file, line: line, message: "huge PMDs differ (\(said)) where NUMA balancing made huge PMDs PROT_NONE for hinting faults (numa_huge_pte_updates rose), which this kernel's /proc/self/smaps does not count", notComparable: true)
        }
        throw TraceError(file: file, line: line, message: "huge PMDs differ: \(said)")
    }
}

/// One target's view while it replays: VmPTE growth, op by op, and the
/// mappings the trace left.
private struct Side {
    let target: any TraceTarget
    var growth = 0
    var mappings = TraceMappings()

    init(target: any TraceTarget) { self.target = target }

    func thpEvents(file: String, line: Int) throws(TraceError) -> THPEventCount {
        do { return try target.thpEvents() } catch {
            throw TraceError(file: file, line: line, message: "\(target.name): cannot count THP events: \(error)")
        }
    }

    func hugePMDs(in regions: [Range<UInt64>], file: String, line: Int) throws(TraceError) -> Int {
        do { return try target.hugePMDs(in: regions) } catch {
            throw TraceError(file: file, line: line, message: "\(target.name): cannot count huge pages: \(error)")
        }
    }

    mutating func perform(_ step: TraceStep, file: String) throws(TraceError) {
        if case .expect = step.op { return }
        var failure: (any Error)?
        do {
            // The live kernel brackets its own syscall more tightly than
            // this could, and each /proc read costs tens of microseconds.
            if let measured = target as? any MeasuresThisProcess {
                // A live op that fails changed nothing the cleanup will
                // undo: its syscall failed whole, or the target undid it.
                do { try target.perform(step.op) } catch { failure = error }
                if failure == nil { growth += measured.lastOpChangeKilobytes }
            } else {
                // A model op that failed part way (a touch out of memory)
                // may have allocated tables all the same, which the cleanup
                // frees: counted, so that the growth ends at zero.
                let before = try target.vmPTEKilobytes()
                do { try target.perform(step.op) } catch { failure = error }
                growth += try target.vmPTEKilobytes() - before
            }
        } catch {
            throw TraceError(file: file, line: step.line, message: "\(target.name): \(error)")
        }
        switch failure {
        case nil:
            mappings.apply(step)
        case let error as NotComparable:
            // The op ran: keep following the mappings, for the cleanup.
            mappings.apply(step)
            throw TraceError(file: file, line: step.line, message: "\(target.name): \(error.reason)", notComparable: true)
        case let error?:
            throw TraceError(file: file, line: step.line, message: "\(target.name): \(error)")
        }
    }

    /// Unmaps what the trace left mapped; the first failure, if any, is
    /// pinned to the line that mapped the piece.
    mutating func unmapLeftovers(file: String) -> TraceError? {
        var failure: TraceError?
        for piece in mappings.pieces {
            do {
                try perform(TraceStep(line: piece.line, op: .munmap(address: piece.range.lowerBound, length: UInt64(piece.range.count))), file: file)
            } catch {
                failure = failure ?? TraceError(file: file, line: piece.line, message: "cleanup: \(error.message)")
            }
        }
        return failure
    }
}

/// One trace's outcome on all targets.
public struct TraceRun: Sendable {
    public let file: String
    /// The targets' names, in the order of every `kilobytes` array here.
    public let targetNames: [String]
    public internal(set) var checkpoints: [TraceCheckpoint] = []
    /// Growth of each target once the runner unmapped the trace's leftovers.
    /// It must be 0: the trace's regions held nothing before it ran, so the
    /// kernel frees every table there, and a model that does not leaked or
    /// lost one. Empty when the trace never started.
    public internal(set) var afterCleanup: [Int] = []
    /// Why the trace stopped, if it did.
    public internal(set) var error: TraceError?
    /// A target refused the trace before running any of it (its regions
    /// hold other mappings of this process): bad input, not a verdict.
    public internal(set) var refused = false
    /// Each target's pass, in seconds: its ops, its cleanup and its own
    /// VmPTE readings (for the kernel, /proc reads around every op).
    public internal(set) var seconds: [Double] = []

    /// Not run: the trace is for other profiles than the comparison's
    /// (why, in words). No verdict either way.
    public internal(set) var skipped: String?

    /// The trace stopped because something else in the process changed
    /// VmPTE during a kernel op: no verdict on the model either way.
    public var interfered: Bool { error?.message.contains(LiveKernelError.interference) ?? false }

    /// The trace stopped where the live kernel went where the model cannot
    /// follow (no huge page to be had, khugepaged at work): no verdict.
    public var notComparable: Bool { error?.notComparable ?? false }

    /// The trace's ops (its lines but `expect`).
    public let ops: Int

    init(file: String, targetNames: [String], ops: Int) {
        self.file = file
        self.targetNames = targetNames
        self.ops = ops
    }

    /// It ran to the end, every checkpoint matches, and every target is back
    /// to no growth after cleanup.
    public var matches: Bool {
        skipped == nil && error == nil && checkpoints.allSatisfy(\.matches) && afterCleanup.allSatisfy { $0 == 0 }
    }

    /// A target's value in one of this run's `kilobytes` arrays, by name.
    public func value<V>(_ values: [V], of target: String) -> V? {
        targetNames.firstIndex(of: target).flatMap { values.indices.contains($0) ? values[$0] : nil }
    }
}

public struct TraceCheckpoint: Equatable, Sendable {
    public let line: Int
    /// VmPTE growth in kB per target, in the run's target order.
    public let kilobytes: [Int]
    /// The trace's stated value for the run's profile, if any.
    public let expected: Int?

    /// All targets agree, and with the stated value when there is one.
    public var matches: Bool {
        Set(kilobytes).count <= 1 && expected.map { e in kilobytes.allSatisfy { $0 == e } } ?? true
    }
}
