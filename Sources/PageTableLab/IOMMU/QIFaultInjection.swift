import Synchronization

/// Fault injection for the invalidation queue: each error the hardware can
/// report, on demand, so that the driver's recovery paths run in tests and
/// stress runs and not only when real hardware misbehaves.
public final class QIFaultInjection: Sendable {
    /// Non-wait descriptors still to pass before the injected IQE; -1: none.
    private let iqeCountdown = Atomic<Int>(-1)
    private let pendingITE = Atomic<Int>(0)
    private let pendingICE = Atomic<Int>(0)
    private let stalled = Atomic<Bool>(false)
    private let stallOnIQE = Atomic<Bool>(false)
    private let stallOnITE = Atomic<Bool>(false)
    private let doorbell: EventCount

    let injectedIQE = Atomic<UInt64>(0)
    let injectedITE = Atomic<UInt64>(0)
    let injectedICE = Atomic<UInt64>(0)

    init(doorbell: EventCount) {
        self.doorbell = doorbell
    }

    /// Make the hardware refuse a descriptor as if a reserved bit were set:
    /// the first non-wait descriptor fetched after `skipping` others. Wait
    /// descriptors are spared because software never builds a bad one; the
    /// injection stands for a corrupted invalidation. `thenStall`: the unit
    /// also stops fetching (as `stallFetching`) when it raises that IQE, so
    /// a test can see what software does between clearing the error and
    /// the unit fetching again.
    public func injectIQE(skipping: Int = 0, thenStall: Bool = false) {
        stallOnIQE.store(thenStall, ordering: .releasing)
        iqeCountdown.store(max(0, skipping), ordering: .releasing)
    }

    /// Make the next `count` device-TLB invalidations time out (ITE).
    /// `thenStall`: the unit also stops fetching when it next raises ITE.
    public func injectITE(count: Int = 1, thenStall: Bool = false) {
        stallOnITE.store(thenStall, ordering: .releasing)
        pendingITE.add(count, ordering: .acquiringAndReleasing)
    }

    /// Make the next `count` device-TLB invalidations complete with an
    /// invalid completion (ICE).
    public func injectICE(count: Int = 1) {
        pendingICE.add(count, ordering: .acquiringAndReleasing)
    }

    /// Stop fetching descriptors, as a hardware unit busy elsewhere would:
    /// the queue fills and submitters meet back-pressure.
    public func stallFetching() {
        stalled.store(true, ordering: .releasing)
    }

    public func resumeFetching() {
        stalled.store(false, ordering: .releasing)
        doorbell.signal()
    }

    /// Faults armed and not yet acted on (an armed IQE counts once). A
    /// stress run flushes until this is 0 before its teardown rather than
    /// withdrawing them: a fault its churn never met would otherwise land
    /// on an unbind, and one withdrawn is one never shown to be survived.
    public var armed: Int {
        (iqeCountdown.load(ordering: .acquiring) >= 0 ? 1 : 0) + pendingITE.load(ordering: .acquiring)
            + pendingICE.load(ordering: .acquiring)
    }

    /// Injected faults the hardware has acted on so far.
    public var injected: (iqe: UInt64, ite: UInt64, ice: UInt64) {
        (injectedIQE.load(ordering: .relaxed), injectedITE.load(ordering: .relaxed),
         injectedICE.load(ordering: .relaxed))
    }

    // MARK: - the hardware's side

    var isStalled: Bool { stalled.load(ordering: .acquiring) }

    /// Called for every non-wait descriptor fetched.
    func consumeIQE() -> Bool {
        var current = iqeCountdown.load(ordering: .acquiring)
        while current >= 0 {
            let (done, now) = iqeCountdown.compareExchange(
                expected: current, desired: current - 1, ordering: .acquiringAndReleasing)
            if done {
                guard current == 0 else { return false }
                injectedIQE.add(1, ordering: .relaxed)
                if stallOnIQE.exchange(false, ordering: .acquiringAndReleasing) { stallFetching() }
                return true
            }
            current = now
        }
        return false
    }

    func consumeITE() -> Bool { consume(pendingITE, counter: injectedITE) }

    /// The unit is raising ITE: stall now if a test asked for it.
    func raisingITE() {
        if stallOnITE.exchange(false, ordering: .acquiringAndReleasing) { stallFetching() }
    }
    func consumeICE() -> Bool { consume(pendingICE, counter: injectedICE) }

    private func consume(_ pending: borrowing Atomic<Int>, counter: borrowing Atomic<UInt64>) -> Bool {
        var current = pending.load(ordering: .acquiring)
        while current > 0 {
            let (done, now) = pending.compareExchange(
                expected: current, desired: current - 1, ordering: .acquiringAndReleasing)
            if done {
                counter.add(1, ordering: .relaxed)
                return true
            }
            current = now
        }
        return false
    }
}
