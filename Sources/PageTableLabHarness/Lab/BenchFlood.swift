import PageTableLab
import Dispatch
import Synchronization

/// Issue 6, bounded memory: producers queue page frees faster than grace
/// periods end while one reader stalls inside a read section, so nothing can
/// be freed until it leaves. With `DeferredBound.bytes` set, the outstanding
/// bytes must stay at or under the bound however long the stall and the flood.
extension Bench {
    public struct FloodResult: Sendable, Equatable {
        public var boundBytes: UInt64
        /// The highest in-flight bytes a DeferredMemoryMonitor saw.
        public var peakBytes: Int64
        public var calls: Int
        /// Calls that met the bound: the producer waited for a grace period
        /// and freed its page itself.
        public var inlineFallbacks: UInt64
        public var callsPerSec: Double
    }

    /// `producers` threads each queue `callsPerProducer` pages. The reader
    /// stays inside its read section until the producers together have made
    /// 3/4 of the bound's worth of calls — the most that can be admitted
    /// without any grace period, so no producer can be waiting on the reader
    /// when it is told to leave.
    static func flood(bound: UInt64, producers: Int, callsPerProducer: Int, allocator: PageAllocator) throws -> FloodResult {
        // With admission switched off (a test's broken build) nobody waits
        // for the reader, so it may stall through the whole flood.
        let admits = !DeferredBound.admissionIsDisabled
        let stallCalls = admits ? Int(bound / 4096) * 3 / 4 : producers * callsPerProducer
        guard producers >= 1, stallCalls >= 1, producers * callsPerProducer >= stallCalls else {
            throw BenchError.invalidConfiguration("flood: the producers' calls must outnumber 3/4 of the bound in pages")
        }
        try RCU.barrier()
        let previousBound = DeferredBound.bytes
        DeferredBound.bytes = bound
        defer { DeferredBound.bytes = previousBound }
        let before = DeferredBound.snapshot()
        // As fast as it can: the flood lasts milliseconds, and what it is
        // judged by is this monitor's peak, not the admission's bookkeeping.
        let monitor = DeferredMemoryMonitor(periodMicroseconds: 0)

        let stall = Stall(monitor: monitor)
        let reader = RCUThread {
            RCU.read {
                stall.inside.signal()
                stall.leave.wait()
            }
        }
        stall.inside.wait()
        let calls = Atomic<Int>(0)
        let failures = Atomic<Int>(0)
        let t0 = nowNs()
        let threads = (0..<producers).map { _ in
            RCUThread {
                defer { stall.end() }
                for _ in 0..<callsPerProducer {
                    guard let page = try? allocator.alloc() else {
                        failures.add(1, ordering: .relaxed)
                        return
                    }
                    if calls.add(1, ordering: .relaxed).newValue == stallCalls { stall.end() }
                    do {
                        try RCU.call(page.rcuHead, bytes: UInt64(page.bytes), benchFreePageCallback)
                    } catch {
                        failures.add(1, ordering: .relaxed)
                        try? allocator.free(page)
                    }
                }
            }
        }
        for t in threads { t.join() }
        reader.join()
        let seconds = (nowNs() - t0) / 1e9
        let peak = monitor.stop()
        try RCU.barrier()
        let after = DeferredBound.snapshot()
        let failed = failures.load(ordering: .relaxed) + benchFreeFailures.exchange(0, ordering: .relaxed)
        guard failed == 0 else { throw BenchError.callbackFreeFailed(count: failed) }
        let total = calls.load(ordering: .relaxed)
        return FloodResult(boundBytes: bound, peakBytes: peak, calls: total,
                           inlineFallbacks: after.inlineFallbacks - before.inlineFallbacks,
                           callsPerSec: Double(total) / seconds)
    }

    /// The reader's stall: it signals once inside, and leaves when told to.
    /// Told once only, whoever tells it (the producer that reaches the count,
    /// or any producer on its way out, so that a failed producer cannot leave
    /// the others waiting on a reader forever). The monitor samples just
    /// before the reader leaves: nothing can have been freed yet, so that
    /// sample is the flood at its fullest, wherever its thread was.
    private final class Stall: Sendable {
        let inside = DispatchSemaphore(value: 0)
        let leave = DispatchSemaphore(value: 0)
        private let ended = Atomic<Bool>(false)
        private let monitor: DeferredMemoryMonitor

        init(monitor: DeferredMemoryMonitor) { self.monitor = monitor }

        func end() {
            guard !ended.exchange(true, ordering: .acquiringAndReleasing) else { return }
            monitor.sample()
            leave.signal()
        }
    }
}
