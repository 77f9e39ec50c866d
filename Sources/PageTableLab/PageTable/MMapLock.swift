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
public final class MMapLock: @unchecked Sendable {
    private let monitor = Monitor()
    private var readers = 0
    private var writer = false
    private var waitingWriters = 0
    private var waitingReaders = 0
    /// mm_lock_seq: odd while a writer holds the lock, bumped as it takes
    /// and as it drops or downgrades it; read without the lock.
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
        monitor.lock()
        waitingReaders += 1
        while writer || waitingWriters > 0 { monitor.wait() }
        waitingReaders -= 1
        readers += 1
        monitor.unlock()
    }

    /// mmap_read_trylock.
    public func tryLockRead() -> Bool {
        monitor.lock()
        defer { monitor.unlock() }
        guard !writer && waitingWriters == 0 else { return false }
        readers += 1
        return true
    }

    /// mmap_read_unlock.
    public func unlockRead() {
        monitor.lock()
        readers -= 1
        if readers == 0 { monitor.broadcast() }
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
        while writer || readers > 0 { monitor.wait() }
        waitingWriters -= 1
        writer = true
        sequence.add(1, ordering: .releasing)
        monitor.unlock()
    }

    /// mmap_write_trylock: the write lock if no reader or writer holds it
    /// now. For a caller that already holds a lock which a holder of the
    /// mmap lock may wait for (the pre-6.6 retract holds the huge folio's
    /// lock, which a fault under the mmap read lock waits on).
    public func tryLockWrite() -> Bool {
        monitor.lock()
        defer { monitor.unlock() }
        guard !writer && readers == 0 else { return false }
        writer = true
        sequence.add(1, ordering: .releasing)
        return true
    }

    /// mmap_write_unlock.
    public func unlockWrite() {
        monitor.lock()
        writer = false
        sequence.add(1, ordering: .releasing)
        monitor.broadcast()
        monitor.unlock()
    }

    /// mmap_write_downgrade: the writer stays, as a reader; readers may
    /// come in (writers still wait).
    public func downgrade() {
        monitor.lock()
        writer = false
        sequence.add(1, ordering: .releasing)
        readers += 1
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
