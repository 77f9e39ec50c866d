import CSupport

/// A value behind a spinlock, for the lab's zone->lock: held for a few list
/// operations, taken by a producer's per-thread cache refill while the RCU
/// worker drains its own. `Synchronization.Mutex` on Linux is a PI futex:
/// under that contention it went to the kernel (FUTEX_LOCK_PI and a
/// context switch) on a path that runs every 16 allocations, and it asks
/// for the thread id (a syscall) on every lock. The kernel's zone->lock is
/// a spinlock too (ptlab_spin_lock, which yields to a preempted holder).
///
/// ThreadSanitizer sees the hand-off through annotations on the lock's
/// address, as for `LabMutex`.
final class SpinLocked<Value: ~Copyable>: @unchecked Sendable {
    private let lock: UnsafeMutablePointer<ptlab_spinlock_t>
    private var value: Value

    init(_ initialValue: consuming Value) {
        value = initialValue
        lock = .allocate(capacity: 1)
        ptlab_spin_init(lock)
    }

    deinit { lock.deallocate() }

    func withLock<Result: ~Copyable, E: Error>(_ body: (inout Value) throws(E) -> Result) throws(E) -> Result {
        _ = ptlab_spin_lock(lock)   // never killed: always alive
        ptlab_tsan_acquire(lock)
        defer {
            ptlab_tsan_release(lock)
            ptlab_spin_unlock(lock)
        }
        return try body(&value)
    }
}
