internal import CSupport
import Synchronization

/// `Synchronization.Mutex`, with the ordering it provides spelled out for
/// ThreadSanitizer. The lab uses it wherever it would use `Mutex`.
///
/// Why: on Linux, `Mutex` takes a contended lock in the kernel
/// (FUTEX_LOCK_PI / FUTEX_UNLOCK_PI) or in a spin loop inside the
/// uninstrumented standard library; TSan sees the hand-off only when the
/// inlined uncontended compare-exchange wins. Under contention it misses the
/// unlock → lock edge and reports accesses made under the lock as races
/// (Swift 6.3.1: two threads appending to a `Mutex<[Int]>` are reported).
/// A suppression would hide real races on the same data too; a pthread
/// mutex (which TSan intercepts) would need a heap cell per lock. So the
/// edge is annotated, as for liburcu's call_rcu hand-off in rcu.c: acquire
/// on the mutex's address just after taking it, release just before giving
/// it back. Outside TSan the two hooks are empty C functions.
///
/// The address is the mutex's own storage: `Mutex` has a raw layout, so it
/// is never copied or moved while borrowed, and `withUnsafePointer(to:)`
/// yields where it lives — the same address on every call, one per lock.
public struct LabMutex<Value: ~Copyable>: ~Copyable, Sendable {
    private let mutex: Mutex<Value>

    public init(_ initialValue: consuming sending Value) {
        mutex = Mutex(initialValue)
    }

    public borrowing func withLock<Result: ~Copyable, E: Error>(
        _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result {
        let key = withUnsafePointer(to: mutex) { UnsafeMutableRawPointer(mutating: $0) }
        return try mutex.withLock { (value: inout sending Value) throws(E) -> sending Result in
            ptlab_tsan_acquire(key)
            defer { ptlab_tsan_release(key) }
            return try body(&value)
        }
    }
}
