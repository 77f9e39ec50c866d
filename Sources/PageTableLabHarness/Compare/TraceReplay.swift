import PageTableLab

/// A trace's ops on one target with nothing measured, timed: how long the
/// target takes to do what the trace says. On `LiveKernel(measuring:
/// false)` that is the kernel's own time for the trace's system calls (what
/// a C program making them takes); on a `ModelTarget`, the model's. What
/// the trace leaves mapped is unmapped, outside the time. A settling
/// target's deferred work (the model's call_rcu callbacks) is not waited
/// for, as the kernel's RCU-deferred frees are not: `ptlab bench`'s
/// trace_replay_ratio holds the two alike.
public enum TraceReplay {
    public static func seconds(_ trace: Trace, on target: any TraceTarget) throws -> Double {
        var mappings = TraceMappings()
        let start = monotonicNanoseconds()
        do {
            try replay(trace, on: target, &mappings)
        } catch {
            try? unmap(mappings, on: target) // the op's error is the one to report
            throw error
        }
        let seconds = Double(monotonicNanoseconds() - start) / 1e9
        try unmap(mappings, on: target)
        return seconds
    }

    private static func replay(_ trace: Trace, on target: any TraceTarget, _ mappings: inout TraceMappings) throws {
        for step in trace.steps {
            try target.perform(step.op)
            mappings.apply(step) // nothing for `expect`
        }
    }

    private static func unmap(_ mappings: TraceMappings, on target: any TraceTarget) throws {
        for piece in mappings.pieces {
            try target.munmap(address: piece.range.lowerBound, length: UInt64(piece.range.count))
        }
    }

    /// The churn trace `ptlab bench` times: `cycles` of mmap 2M, touch every
    /// 4 KiB page, munmap, in a 512 GiB region of its own.
    public static func churn(cycles: Int, at base: UInt64 = 0x1000_0000_0000) -> Trace {
        var steps: [TraceStep] = []
        for i in 0..<cycles {
            let line = 3 * i + 1
            steps.append(TraceStep(line: line, op: .mmap(address: base, length: 2 << 20, shared: false)))
            steps.append(TraceStep(line: line + 1, op: .touch(address: base, length: 2 << 20, stride: 4096)))
            steps.append(TraceStep(line: line + 2, op: .munmap(address: base, length: 2 << 20)))
        }
        return Trace(file: "churn", steps: steps)
    }
}
