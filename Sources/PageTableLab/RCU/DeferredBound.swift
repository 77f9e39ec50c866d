internal import CSupport
import Synchronization

/// Outstanding deferred memory and its optional bound.
///
/// liburcu lets a flood of `call_rcu` grow without limit (its worker drains
/// a batch per 10 ms). With a bound, a caller that would push the outstanding
/// bytes past it waits for a grace period and frees inline instead, as the
/// kernel's kvfree_rcu does when it cannot get a page for its batch: memory
/// stays bounded and the cost lands on the producer that caused it.
///
/// Admission and measurement are kept apart: `RCU.call` admits against its
/// own reservations, while `inFlightBytes` (and `DeferredMemoryMonitor`,
/// which samples it) counts what liburcu really holds, from the queueing and
/// the callbacks' return. A bound is only proven by the second.
public enum DeferredBound {
    static let storage = Atomic<UInt64>(0)
    /// What admission enforces: `storage`, unless a test switched it off.
    static let enforced = Atomic<UInt64>(0)
    static let admissionDisabled = Atomic<Bool>(false)
    static let overshoots = Atomic<UInt64>(0)

    /// Bytes of deferred memory allowed at once; 0 means unbounded.
    public static var bytes: UInt64 {
        get { storage.load(ordering: .relaxed) }
        set {
            storage.store(newValue, ordering: .relaxed)
            enforced.store(admissionDisabled.load(ordering: .relaxed) ? 0 : newValue, ordering: .relaxed)
        }
    }

    /// Test-only: admit every call whatever the bound (the bound's check
    /// deleted), so that a test can show the independent measurement catch
    /// the overshoot.
    public static func disableAdmissionForTesting(_ disabled: Bool) {
        admissionDisabled.store(disabled, ordering: .relaxed)
        bytes = storage.load(ordering: .relaxed)
    }

    /// Whether `disableAdmissionForTesting` switched admission off.
    public static var admissionIsDisabled: Bool { admissionDisabled.load(ordering: .relaxed) }

    /// A snapshot of the account, for reports and tests.
    public struct Snapshot: Sendable, Equatable, Codable {
        public var outstandingCallbacks: Int64
        /// Reserved by admission and not yet returned.
        public var outstandingBytes: Int64
        /// Handed to liburcu and not yet returned by a callback.
        public var inFlightBytes: Int64
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
            inFlightBytes: s.in_flight_bytes, queued: s.queued, invoked: s.invoked,
            inlineFallbacks: s.inline_fallbacks,
            boundOvershoots: overshoots.load(ordering: .relaxed))
    }

    /// Bytes liburcu holds for the lab's callbacks right now.
    public static var inFlightBytes: Int64 { ptlab_rcu_in_flight_bytes() }
}
