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
public struct CompareRunner {
    public let targets: [any TraceTarget]
    /// Selects the profile's value of `expect KB [PROFILE=KB]`.
    public let profile: CompareProfile

    public init(targets: [any TraceTarget], profile: CompareProfile) {
        self.targets = targets
        self.profile = profile
    }

    /// Runs the whole trace, then unmaps on each target what the trace left
    /// mapped, so the next trace starts from empty regions. A failing op
    /// stops the trace on every target (and is cleaned up the same way); it
    /// is reported in the result, never thrown.
    public func run(_ trace: Trace) -> TraceRun {
        var run = TraceRun(file: trace.file, targetNames: targets.map(\.name))
        do {
            for case let target as any TracePreflight in targets {
                try target.preflight(trace)
            }
        } catch {
            run.error = error
            return run
        }
        var sides = targets.map { Side(target: $0) }
        let thp = THPWatch(trace: trace, targets: targets)
        do throws(TraceError) {
            for step in trace.steps {
                if case .expect(let expectation) = step.op {
                    try thp?.check(at: step.line, file: trace.file)
                    run.checkpoints.append(TraceCheckpoint(
                        line: step.line, kilobytes: sides.map(\.growth), expected: expectation.kilobytes(for: profile)))
                    continue
                }
                // Every side runs the op even when one refused it, so that
                // the error says what each did (both refusing the same
                // collapse with EINVAL is a bad trace; only one refusing is
                // a disagreement).
                var failures: [TraceError] = []
                for i in sides.indices {
                    do { try sides[i].perform(step, file: trace.file) } catch { failures.append(error) }
                }
                if !failures.isEmpty {
                    throw TraceError(file: trace.file, line: step.line,
                                     message: failures.map(\.message).joined(separator: "; ")
                                         + (failures.count < sides.count ? " (the other side did not refuse)" : ""),
                                     notComparable: failures.contains(where: \.notComparable))
                }
            }
        } catch {
            run.error = error
        }
        for i in sides.indices {
            if let error = sides[i].unmapLeftovers(file: trace.file), run.error == nil { run.error = error }
        }
        run.afterCleanup = sides.map(\.growth)
        return run
    }
}

/// Which pages are huge is part of the state the sides must share once a
/// trace uses THP (`hugepage`, `collapse`), though VmPTE may not show it (a
/// deposit and a PTE table weigh the same): at each checkpoint the sides'
/// huge PMDs in the trace's regions are compared. When they differ and the
/// kernel fell back to small pages or collapsed more than the model did
/// (khugepaged, which MADV_HUGEPAGE wakes), the rest of the trace is not
/// comparable; otherwise it is a disagreement, and the trace stops there.
private struct THPWatch {
    let targets: [any TraceTarget]
    let regions: [Range<UInt64>]
    let start: [THPEventCount]

    init?(trace: Trace, targets: [any TraceTarget]) {
        let usesTHP = trace.steps.contains {
            switch $0.op {
            case .hugepage, .collapse: true
            default: false
            }
        }
        guard usesTHP, targets.count > 1, let start = try? targets.map({ try $0.thpEvents() }) else { return nil }
        var regions: [Range<UInt64>] = []
        for range in trace.steps.flatMap(\.op.ranges) {
            for region in TraceAddressSpace.regions(of: range) where !regions.contains(region) { regions.append(region) }
        }
        self.targets = targets
        self.regions = regions
        self.start = start
    }

    func check(at line: Int, file: String) throws(TraceError) {
        let counts: [Int]
        let events: [THPEventCount]
        do {
            counts = try targets.map { try $0.hugePMDs(in: regions) }
            events = try zip(targets, start).map { try $0.0.thpEvents() - $0.1 }
        } catch {
            throw TraceError(file: file, line: line, message: "cannot count huge pages: \(error)")
        }
        guard Set(counts).count > 1 else { return }
        let said = zip(targets, counts).map { "\($0.0.name) maps \($0.1)" }.joined(separator: ", ")
        let most = events.map(\.collapses).max() ?? 0, fewest = events.map(\.collapses).min() ?? 0
        if events.contains(where: { $0.fallbacks > 0 }) || most > fewest {
            throw TraceError(file: file, line: line, message: "huge PMDs differ (\(said)) where the kernel fell back to small pages or khugepaged collapsed memory on its own", notComparable: true)
        }
        throw TraceError(file: file, line: line, message: "huge PMDs differ: \(said)")
    }
}

/// One target's progress through a trace.
private struct Side {
    let target: any TraceTarget
    var growth = 0
    var mappings = TraceMappings()

    init(target: any TraceTarget) { self.target = target }

    mutating func perform(_ step: TraceStep, file: String) throws(TraceError) {
        do {
            let before = try target.vmPTEKilobytes()
            switch step.op {
            case .mmap(let a, let l, let shared): try target.mmap(address: a, length: l, shared: shared)
            case .touch(let a, let l, let s): try target.touch(address: a, length: l, stride: s)
            case .dontneed(let a, let l): try target.madviseDontneed(address: a, length: l)
            case .munmap(let a, let l): try target.munmap(address: a, length: l)
            case .hugepage(let a, let l): try target.madviseHugepage(address: a, length: l)
            case .collapse(let a, let l): try target.madviseCollapse(address: a, length: l)
            case .mremap(let old, let l, let new): try target.mremap(from: old, length: l, to: new)
            case .mprotect(let a, let l, let p): try target.mprotect(address: a, length: l, protection: p)
            case .expect: return
            }
            mappings.apply(step)
            growth += try target.vmPTEKilobytes() - before
        } catch let error as NotComparable {
            // The op ran: keep following the mappings, for the cleanup.
            mappings.apply(step)
            throw TraceError(file: file, line: step.line, message: "\(target.name): \(error.reason)", notComparable: true)
        } catch {
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

    /// The trace stopped because something else in the process changed
    /// VmPTE during a kernel op: no verdict on the model either way.
    public var interfered: Bool { error?.message.contains(LiveKernelError.interference) ?? false }

    /// The trace stopped where the live kernel went where the model cannot
    /// follow (no huge page to be had, khugepaged at work): no verdict.
    public var notComparable: Bool { error?.notComparable ?? false }

    init(file: String, targetNames: [String]) {
        self.file = file
        self.targetNames = targetNames
    }

    /// It ran to the end, every checkpoint matches, and every target is back
    /// to no growth after cleanup.
    public var matches: Bool {
        error == nil && checkpoints.allSatisfy(\.matches) && afterCleanup.allSatisfy { $0 == 0 }
    }

    /// A target's value in one of this run's `kilobytes` arrays, by name.
    public func value(_ values: [Int], of target: String) -> Int? {
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
