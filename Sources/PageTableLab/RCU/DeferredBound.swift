import CSupport
import Synchronization

/// Outstanding deferred memory and its optional bound.
///
/// liburcu lets a flood of `call_rcu` grow without limit (its worker drains
/// a batch per 10 ms). With a bound, a caller that would push the outstanding
/// bytes past it waits for a grace period and frees inline instead, as the
/// kernel's kvfree_rcu does when it cannot get a page for its batch: memory
/// stays bounded and the cost lands on the producer that caused it.
public enum DeferredBound {
    static let storage = Atomic<UInt64>(0)
    static let overshoots = Atomic<UInt64>(0)

    /// Bytes of deferred memory allowed at once; 0 means unbounded.
    public static var bytes: UInt64 {
        get { storage.load(ordering: .relaxed) }
        set { storage.store(newValue, ordering: .relaxed) }
    }

    /// A snapshot of the account, for reports and tests.
    public struct Snapshot: Sendable, Equatable, Codable {
        public var outstandingCallbacks: Int64
        public var outstandingBytes: Int64
        public var peakBytes: Int64
        public var queued: UInt64
        public var invoked: UInt64
        public var inlineFallbacks: UInt64
        public var boundOvershoots: UInt64
    }

    public static func snapshot() -> Snapshot {
        var s = ptlab_rcu_stats_snapshot()
        ptlab_rcu_stats_read(&s)
        return Snapshot(
            outstandingCallbacks: s.outstanding_callbacks, outstandingBytes: s.outstanding_bytes,
            peakBytes: s.peak_bytes, queued: s.queued, invoked: s.invoked,
            inlineFallbacks: s.inline_fallbacks,
            boundOvershoots: overshoots.load(ordering: .relaxed))
    }

    /// Restart the peak from what is outstanding now (between runs).
    public static func resetPeak() {
        ptlab_rcu_reset_peak()
    }
}
