import Synchronization

/// mmap_lock: a reader/writer lock with the kernel's three uses — write for
/// mmap, munmap, mremap and mprotect; read for madvise, and for faults and
/// MADV_DONTNEEDs that cannot have their VMA's own lock (VMALocks); and a
/// write lock *downgraded* to read partway (munmap detaches its VMAs under
/// the write lock, then zaps and frees tables holding it for read, as
/// vms_complete_munmap_vmas does).
///
/// Waiting writers hold new readers back, so a stream of readers (walkers
/// that take it) cannot starve munmap. A walker that is a "CPU" must keep
/// answering IPIs while it waits, so it uses `tryLockRead` in a loop of its
/// own instead of sleeping here.
///
/// Like the kernel's rw_semaphore, one word says who holds it: a reader
/// count and two writer bits. An uncontended reader takes and drops the
/// lock with one atomic on that word, as down_read and up_read do (every
/// fault without a VMA lock of its own is such a reader); anyone who must
/// wait sleeps on the monitor, and a writer bit tells the last reader out
/// to wake it.
public final class MMapLock: @unchecked Sendable {
    private let monitor = Monitor()
    /// Readers in units of `reader`, `writerLocked`, and `writersWaiting`
    /// while any writer sleeps (new readers then queue behind it). The
    /// writer bits change only under the monitor; readers' counts come and
    /// go without it.
    private let state = Atomic<Int>(0)
    private static let writerLocked = 1
    private static let writersWaiting = 2
    private static let reader = 4
    /// Under the monitor: the sleepers, for `writersWaiting` and for tests.
    private var waitingWriters = 0
    private var waitingReaders = 0
    /// mm_lock_seq: odd while a writer holds the lock, bumped as it takes
    /// and as it drops or downgrades it; read without the lock. Bumped just
    /// after the state word changes, under the monitor, so a reader that
    /// gets in on the fast path right after a writer leaves may still see
    /// it odd: the sequence says when writers held the lock, not that a
    /// holder of the read lock sees it even.
    private let sequence = Atomic<Int>(0)

    /// Whether a writer held the lock at any time between two reads of
    /// the sequence, `start` and `end`, other than the one whose cycle is
    /// `except` (odd): one held it at the start (odd), or took it since
    /// (each odd value after `start` up to `end` is one that did).
    func writerHeld(between start: Int, and end: Int, except: Int?) -> Bool {
        var cycles = (end + 1) / 2 - (start + 1) / 2 + (start & 1)
        if let except, start <= except, except <= end { cycles -= 1 }
        return cycles > 0
    }

    /// The sequence now: odd while a writer holds the lock.
    var sequenceNow: Int { sequence.load(ordering: .acquiring) }

    public init() {}

    /// mmap_read_lock.
    public func lockRead() {
        if tryLockRead() { return }
        monitor.lock()
        waitingReaders += 1
        while !tryLockRead() { monitor.wait() }
        waitingReaders -= 1
        monitor.unlock()
    }

    /// mmap_read_trylock: in unless a writer holds the lock or waits for it.
    public func tryLockRead() -> Bool {
        var s = state.load(ordering: .relaxed)
        while s & (Self.writerLocked | Self.writersWaiting) == 0 {
            let (exchanged, found) = state.weakCompareExchange(expected: s, desired: s + Self.reader,
                                                               successOrdering: .acquiring, failureOrdering: .relaxed)
            if exchanged { return true }
            s = found
        }
        return false
    }

    /// mmap_read_unlock: the last reader out wakes the writers waiting.
    public func unlockRead() {
        let left = state.subtract(Self.reader, ordering: .releasing).newValue
        guard left == Self.writersWaiting else { return }
        monitor.lock()
        monitor.broadcast()
        monitor.unlock()
    }

    /// Writers and readers waiting for the lock now (for tests that must
    /// order them).
    var waiting: (writers: Int, readers: Int) {
        monitor.lock()
        defer { monitor.unlock() }
        return (waitingWriters, waitingReaders)
    }

    /// mmap_write_lock.
    public func lockWrite() {
        monitor.lock()
        waitingWriters += 1
        state.bitwiseOr(Self.writersWaiting, ordering: .relaxed)
        // The bit is set before the readers are looked at, in the same word:
        // the last reader out either sees it and wakes us, or left before.
        while !takeWrite(stillWaiting: waitingWriters > 1) { monitor.wait() }
        waitingWriters -= 1
        monitor.unlock()
    }

    /// Under the monitor: the write lock if no one holds the lock, with
    /// `writersWaiting` left as the sleepers still need it.
    private func takeWrite(stillWaiting: Bool) -> Bool {
        var s = state.load(ordering: .relaxed)
        while s & ~Self.writersWaiting == 0 {
            let desired = Self.writerLocked | (stillWaiting ? Self.writersWaiting : 0)
            let (exchanged, found) = state.weakCompareExchange(expected: s, desired: desired,
                                                               successOrdering: .acquiring, failureOrdering: .relaxed)
            if exchanged {
                sequence.add(1, ordering: .releasing)
                return true
            }
            s = found
        }
        return false
    }

    /// mmap_write_trylock: the write lock if no reader or writer holds it
    /// now. For a caller that already holds a lock which a holder of the
    /// mmap lock may wait for (the pre-6.6 retract holds the huge folio's
    /// lock, which a fault under the mmap read lock waits on).
    public func tryLockWrite() -> Bool {
        monitor.lock()
        defer { monitor.unlock() }
        return takeWrite(stillWaiting: waitingWriters > 0)
    }

    /// mmap_write_unlock.
    public func unlockWrite() {
        monitor.lock()
        state.bitwiseAnd(~Self.writerLocked, ordering: .releasing)
        sequence.add(1, ordering: .releasing)
        monitor.broadcast()
        monitor.unlock()
    }

    /// mmap_write_downgrade: the writer stays, as a reader; readers may
    /// come in (writers still wait).
    public func downgrade() {
        monitor.lock()
        state.add(Self.reader - Self.writerLocked, ordering: .releasing)
        sequence.add(1, ordering: .releasing)
        monitor.broadcast()
        monitor.unlock()
    }

    public func withReadLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        lockRead()
        defer { unlockRead() }
        return try body()
    }

    public func withWriteLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        lockWrite()
        defer { unlockWrite() }
        return try body()
    }

    /// The write lock for `exclusive`, then the same lock downgraded to read
    /// for `shared`, which gets what `exclusive` returned.
    public func withWriteLockDowngrading<T, R>(_ exclusive: () -> T, then shared: (T) -> R) -> R {
        lockWrite()
        let t = exclusive()
        downgrade()
        defer { unlockRead() }
        return shared(t)
    }
}
