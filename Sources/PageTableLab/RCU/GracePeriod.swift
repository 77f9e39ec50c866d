internal import CSupport
import Synchronization

/// A grace-period sequence you can poll, which liburcu 0.13 lacks
/// (no start_poll_synchronize_rcu).
///
/// Every grace period the lab drives gets a number when it starts; when it
/// ends, `completed` rises to at least that number. A cookie is the number
/// the next grace period to start will get, so `completed >= cookie` means a
/// whole grace period began and ended after the cookie was taken.
public enum GracePeriod {
    static let started = Atomic<UInt64>(0)
    static let completed = Atomic<UInt64>(0)
    /// 0 idle, 1 a polling callback in flight, 2 in flight and asked again.
    static let pollState = Atomic<UInt8>(0)
    nonisolated(unsafe) static let pollHead: UnsafeMutablePointer<ptlab_rcu_head> = {
        let head = UnsafeMutablePointer<ptlab_rcu_head>.allocate(capacity: 1)
        head.initialize(to: ptlab_rcu_head())
        return head
    }()
    static let pollSeq = Atomic<UInt64>(0)

    public struct Cookie: Sendable, Hashable, Comparable {
        public let sequence: UInt64
        public static func < (a: Cookie, b: Cookie) -> Bool { a.sequence < b.sequence }
    }

    /// get_state_synchronize_rcu: a cookie, without starting anything.
    public static func state() -> Cookie {
        Cookie(sequence: started.load(ordering: .sequentiallyConsistent) + 1)
    }

    /// start_poll_synchronize_rcu: a cookie, and a grace period on its way
    /// (a callback on a static head: nothing is allocated).
    public static func startPoll() throws(RCUError) -> Cookie {
        guard RCU.threadRegistered else { throw .unregisteredThread(operation: "startPoll") }
        let cookie = state()
        while true {
            if pollState.compareExchange(expected: 0, desired: 1, ordering: .acquiringAndReleasing).exchanged {
                queuePoll()
                break
            }
            if pollState.compareExchange(expected: 1, desired: 2, ordering: .acquiringAndReleasing).exchanged {
                break
            }
            if pollState.load(ordering: .acquiring) == 2 { break }
        }
        return cookie
    }

    /// poll_state_synchronize_rcu.
    public static func poll(_ cookie: Cookie) -> Bool {
        completed.load(ordering: .sequentiallyConsistent) >= cookie.sequence
    }

    /// cond_synchronize_rcu: wait only if no full grace period has passed.
    public static func condSynchronize(_ cookie: Cookie) throws(RCUError) {
        if !poll(cookie) { try RCU.synchronize() }
    }

    static func complete(_ seq: UInt64) {
        var current = completed.load(ordering: .relaxed)
        while current < seq {
            let (done, now) = completed.compareExchange(
                expected: current, desired: seq, ordering: .sequentiallyConsistent)
            if done { break }
            current = now
        }
    }

    fileprivate static func queuePoll() {
        // The callback runs after a grace period that began after this call,
        // hence after the number was drawn.
        pollSeq.store(started.add(1, ordering: .sequentiallyConsistent).newValue, ordering: .relaxed)
        ptlab_call_rcu(pollHead, gracePeriodPollCallback, 0)
    }
}

private func gracePeriodPollCallback(_ head: UnsafeMutablePointer<ptlab_rcu_head>?) {
    GracePeriod.complete(GracePeriod.pollSeq.load(ordering: .relaxed))
    if GracePeriod.pollState.compareExchange(expected: 2, desired: 1, ordering: .acquiringAndReleasing).exchanged {
        GracePeriod.queuePoll()
    } else {
        _ = GracePeriod.pollState.compareExchange(expected: 1, desired: 0, ordering: .acquiringAndReleasing)
    }
}
