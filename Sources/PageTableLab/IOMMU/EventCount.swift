#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// An event count: the sleeping half of "poll a condition". A waiter takes
/// a key, checks its condition, and sleeps only if nothing was signalled
/// since the key was taken; a signaller bumps the count and wakes sleepers.
///
/// Why not just spin like the kernel's qi_submit_sync (cpu_relax): the lab's
/// hardware is a thread on the same two cores as its drivers, and a spinning
/// waiter would steal the very CPU the hardware needs to make progress. Why
/// not a sleep: a sleep is a guess, and guesses make flaky tests.
/// Signalling allocates nothing and takes no lock unless someone sleeps.
final class EventCount: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let cond: UnsafeMutablePointer<pthread_cond_t>
    private let epoch = Atomic<UInt64>(0)
    private let sleepers = Atomic<Int>(0)

    init() {
        mutex = .allocate(capacity: 1)
        cond = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    /// Take a key before checking the condition.
    @inline(__always)
    func prepareWait() -> UInt64 {
        epoch.load(ordering: .sequentiallyConsistent)
    }

    /// Sleep until a signal newer than `key`.
    func wait(_ key: UInt64) {
        pthread_mutex_lock(mutex)
        sleepers.add(1, ordering: .sequentiallyConsistent)
        while epoch.load(ordering: .sequentiallyConsistent) == key {
            pthread_cond_wait(cond, mutex)
        }
        sleepers.subtract(1, ordering: .sequentiallyConsistent)
        pthread_mutex_unlock(mutex)
    }

    /// Sleep until a signal newer than `key`, or until `timeoutNanoseconds`
    /// have passed: false when the time ran out with no signal. For
    /// watchdogs, which bound a wait that should end but might not.
    func wait(_ key: UInt64, timeoutNanoseconds: UInt64) -> Bool {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let deadline = UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec) + timeoutNanoseconds
        var until = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        pthread_mutex_lock(mutex)
        sleepers.add(1, ordering: .sequentiallyConsistent)
        var signalled = true
        while epoch.load(ordering: .sequentiallyConsistent) == key {
            if pthread_cond_timedwait(cond, mutex, &until) == ETIMEDOUT {
                signalled = epoch.load(ordering: .sequentiallyConsistent) != key
                break
            }
        }
        sleepers.subtract(1, ordering: .sequentiallyConsistent)
        pthread_mutex_unlock(mutex)
        return signalled
    }

    /// Wake every waiter whose key is older than now.
    @inline(__always)
    func signal() {
        epoch.add(1, ordering: .sequentiallyConsistent)
        // Sequentially consistent on both sides: either the sleeper's
        // increment is seen here, or the sleeper sees the new epoch.
        if sleepers.load(ordering: .sequentiallyConsistent) > 0 {
            pthread_mutex_lock(mutex)
            pthread_cond_broadcast(cond)
            pthread_mutex_unlock(mutex)
        }
    }

    /// Wait until `condition` holds, sleeping between signals.
    func wait(until condition: () -> Bool) {
        while true {
            let key = prepareWait()
            if condition() { return }
            wait(key)
        }
    }
}
