#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A thread that samples `DeferredBound.inFlightBytes` while a run goes on
/// and keeps the highest value seen: the peak of deferred memory as the
/// callbacks' side counts it, which no admission decision can flatter.
///
/// A sample never reports more than liburcu held when it was taken (see
/// ptlab_rcu_in_flight_bytes), so an overshoot it reports is real; a
/// spike between samples can be missed. The final sample, taken by
/// `stop()`, sees whatever the run left queued.
public final class DeferredMemoryMonitor: Sendable {
    private let running = Atomic<Bool>(true)
    private let peak = Atomic<Int64>(0)
    private let samples = Atomic<Int>(0)
    private let thread: LabMutex<RCUThread?> = LabMutex(nil)

    /// Start sampling every `periodMicroseconds` (0: as fast as the thread
    /// can, yielding between samples).
    public init(periodMicroseconds: UInt32 = 100) {
        let t = RCUThread { [self] in
            while running.load(ordering: .relaxed) {
                sample()
                if periodMicroseconds == 0 { sched_yield() } else { usleep(periodMicroseconds) }
            }
        }
        thread.withLock { $0 = t }
    }

    /// Take one sample now, from the calling thread (at a moment a run
    /// knows to matter, so that the check does not depend on the
    /// monitor's thread being scheduled then).
    public func sample() {
        let now = DeferredBound.inFlightBytes
        var seen = peak.load(ordering: .relaxed)
        while now > seen {
            let (done, current) = peak.compareExchange(expected: seen, desired: now, ordering: .relaxed)
            if done { break }
            seen = current
        }
        samples.add(1, ordering: .relaxed)
    }

    /// Stop sampling, take one last sample, and return the peak in bytes.
    @discardableResult
    public func stop() -> Int64 {
        running.store(false, ordering: .relaxed)
        thread.withLock { $0?.join() }
        sample()
        return peak.load(ordering: .relaxed)
    }

    /// Samples taken so far (a monitor that never sampled proves nothing).
    public var sampleCount: Int { samples.load(ordering: .relaxed) }

    deinit { _ = stop() }
}
