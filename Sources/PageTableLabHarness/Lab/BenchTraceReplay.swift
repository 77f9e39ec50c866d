import PageTableLab
import CHarness

/// trace_replay_ratio: the built-in churn trace (mmap 2M, touch every 4 KiB
/// page, munmap) replayed on the live kernel and on the model in the same
/// run, each timed with nothing measured (TraceReplay).
extension Bench {
    struct TraceReplayResult {
        var ops: Int
        var modelSeconds: Double
        /// nil where the kernel's side cannot run (traceReplayKernelUnavailableReason).
        var kernelSeconds: Double?
        /// Kernel time / model time: above 1, the model runs the trace faster.
        var ratio: Double? { kernelSeconds.map { $0 / modelSeconds } }
    }

    /// Why the kernel's side cannot run here, or nil: LiveKernel's reason
    /// (no VmPTE to compare with), or a sanitizer build, whose shadow memory
    /// covers the churn trace's region (TraceReplay.churn's base, 16 TiB)
    /// and whose timings would mean nothing anyway.
    static var traceReplayKernelUnavailableReason: String? {
        if let reason = LiveKernel.unavailableReason { return reason }
        if ptlab_baseline_sanitized() != 0 { return "a sanitizer's shadow memory covers the churn trace's region" }
        return nil
    }

    /// Issue 15's replay target, where the kernel's side ran: the model
    /// replays the churn trace at least 10x faster than the kernel runs it.
    static func replayTargets(_ replay: TraceReplayResult) -> [BenchReport.Target] {
        guard let ratio = replay.ratio else { return [] }
        return [.init("trace_replay_ratio", .atLeast, 10, ratio,
                      "the model replays the churn trace at least 10x faster than the live kernel runs it")]
    }

    /// The kernel's pass first, with liburcu's worker idle (every callback
    /// run), then the model's on a ModelTarget of its own, on the bench's
    /// loaded allocator and thread.
    static func traceReplay(cycles: Int) throws -> TraceReplayResult {
        let trace = TraceReplay.churn(cycles: cycles)
        var kernelSeconds: Double?
        if traceReplayKernelUnavailableReason == nil {
            try RCU.barrier()
            kernelSeconds = try TraceReplay.seconds(trace, on: LiveKernel(measuring: false))
        }
        let model = try ModelTarget(profile: .runningKernel())
        let modelSeconds = try TraceReplay.seconds(trace, on: model)
        return TraceReplayResult(ops: trace.steps.count, modelSeconds: modelSeconds, kernelSeconds: kernelSeconds)
    }
}
