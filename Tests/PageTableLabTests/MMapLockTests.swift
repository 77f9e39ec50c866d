import Synchronization
import XCTest
@testable import PageTableLab
import PageTableLabHarness

/// mmap_lock as a reader count and writer bits in one word: readers share
/// it, a writer excludes everyone, a waiting writer holds new readers back
/// (through a downgrade, and while another waiting writer goes first), and
/// the last reader out, a downgrade or an unlock wakes whoever sleeps.
/// Checked by planting one bug at a time, each failing every run: a fast
/// path that ignores either writer bit; the wake-up dropped from
/// unlockRead, downgrade or unlockWrite; lockWrite not setting the waiting
/// bit; the first of two waiting writers clearing it; a downgrade that
/// stores the word instead of adding. Not caught: tryLockWrite clearing
/// the bit, which needs it to land between the last reader's leaving and
/// the woken writer's taking the lock.
/// A failure is a bounded wait, not a hang: a reader that got in where it
/// must not leaves at once, and threads left asleep are woken by a write
/// lock taken and dropped, or, where that cannot wake them, left behind.
final class MMapLockTests: XCTestCase {
    /// Whether a reader gets in now; one that does leaves again.
    private func readerGetsIn(_ lock: MMapLock) -> Bool {
        guard lock.tryLockRead() else { return false }
        lock.unlockRead()
        return true
    }

    /// Threads a broken lock left asleep for good: kept, never joined, so
    /// that the test fails instead of hanging on them.
    private static let stuck = Mutex<[RCUThread]>([])

    /// After a failed wait for `threads`: wake them with write locks taken
    /// and dropped until `done`, for at most ten seconds; join them if that
    /// worked, or leave them asleep (`stuck`) if it did not.
    private static func rescue(_ lock: MMapLock, _ threads: [RCUThread], until done: () -> Bool) {
        do {
            try waitUntil("the threads woken by write locks taken and dropped", seconds: 10) {
                if lock.tryLockWrite() { lock.unlockWrite() }
                return done()
            }
        } catch {
            stuck.withLock { $0 += threads }
            return
        }
        threads.forEach { $0.join() }
    }

    /// A thread that takes the lock (to write, or to read) and drops it,
    /// and whether it has got in; a writer told to `hold` downgrades and
    /// stays a reader until released.
    final class LockThread: Sendable {
        let inside = Atomic<Bool>(false)
        private let released = Atomic<Bool>(false)
        private let thread = Mutex<RCUThread?>(nil)

        static func start(_ lock: MMapLock, write: Bool, hold: Bool = false) -> LockThread {
            let t = LockThread()
            let thread = RCUThread {
                guard write else {
                    lock.lockRead()
                    t.inside.store(true, ordering: .releasing)
                    lock.unlockRead()
                    return
                }
                lock.lockWrite()
                t.inside.store(true, ordering: .releasing)
                guard hold else { return lock.unlockWrite() }
                lock.downgrade()
                while !t.released.load(ordering: .acquiring) { sched_yield() }
                lock.unlockRead()
            }
            t.thread.withLock { $0 = thread }
            return t
        }

        var hasGotIn: Bool { inside.load(ordering: .acquiring) }

        /// A holding writer may leave.
        func release() { released.store(true, ordering: .releasing) }

        /// Wait until it has got in (and left, once released); if it never
        /// gets in (a lost wake-up), fail and rescue it.
        func finish(_ lock: MMapLock, _ message: String) throws {
            let thread = self.thread.withLock { $0.take()! }
            do {
                try waitUntil(message, seconds: 10) { hasGotIn }
            } catch {
                release()
                MMapLockTests.rescue(lock, [thread]) { hasGotIn }
                throw error
            }
            release()
            thread.join()
        }
    }

    func testReadersShareAndAWaitingWriterHoldsNewReadersBack() throws {
        let lock = MMapLock()
        lock.lockRead()
        XCTAssertTrue(readerGetsIn(lock), "a second reader shares the lock")
        XCTAssertFalse(lock.tryLockWrite(), "a writer cannot take a lock a reader holds")
        let writer = LockThread.start(lock, write: true)
        try waitUntil("the writer waits for the reader") { lock.waiting.writers == 1 }
        XCTAssertFalse(readerGetsIn(lock), "a waiting writer holds new readers back")
        XCTAssertFalse(holdsWithin(milliseconds: 20) { writer.hasGotIn }, "the writer got in beside a reader")
        lock.unlockRead()
        try writer.finish(lock, "the last reader out wakes the writer")
        XCTAssertTrue(readerGetsIn(lock), "the lock is free again")
    }

    /// A downgraded writer is a reader: others may read, a writer still
    /// waits, and the downgraded reader's unlock lets it in.
    func testADowngradeLetsReadersInAndKeepsWritersOut() throws {
        let lock = MMapLock()
        lock.lockWrite()
        XCTAssertFalse(readerGetsIn(lock), "a writer excludes readers")
        lock.downgrade()
        XCTAssertTrue(readerGetsIn(lock), "a downgraded lock admits readers")
        let writer = LockThread.start(lock, write: true)
        try waitUntil("the writer waits for the downgraded reader") { lock.waiting.writers == 1 }
        XCTAssertFalse(holdsWithin(milliseconds: 20) { writer.hasGotIn }, "the writer got in beside a reader")
        lock.unlockRead()
        try writer.finish(lock, "the downgraded reader's unlock wakes the writer")
    }

    /// A reader asleep behind the writer is woken by its downgrade.
    func testADowngradeWakesAReaderAsleepBehindTheWriter() throws {
        let lock = MMapLock()
        lock.lockWrite()
        let reader = LockThread.start(lock, write: false)
        try waitUntil("the reader sleeps behind the writer") { lock.waiting.readers == 1 }
        lock.downgrade()
        defer { lock.unlockRead() }
        try reader.finish(lock, "the downgrade wakes the reader")
    }

    /// A writer that waited on the write lock still waits after the
    /// downgrade, holding new readers back, and gets in once it is dropped.
    func testADowngradeKeepsAWriterThatWaitedForTheWriteLock() throws {
        let lock = MMapLock()
        lock.lockWrite()
        let writer = LockThread.start(lock, write: true)
        try waitUntil("the writer waits for the writer") { lock.waiting.writers == 1 }
        lock.downgrade()
        XCTAssertFalse(readerGetsIn(lock), "the waiting writer holds new readers back after the downgrade")
        lock.unlockRead()
        try writer.finish(lock, "the downgraded reader's unlock wakes the writer")
    }

    /// Two writers wait; the first one in leaves the waiting bit for the
    /// second, which holds readers back from the first's downgraded lock
    /// and gets in after it.
    func testTheFirstOfTwoWaitingWritersLeavesTheOtherWaiting() throws {
        let lock = MMapLock()
        lock.lockRead()
        let writers = [LockThread.start(lock, write: true, hold: true), LockThread.start(lock, write: true, hold: true)]
        defer { writers.forEach { $0.release() } }
        try waitUntil("both writers wait for the reader") { lock.waiting.writers == 2 }
        lock.unlockRead()
        try waitUntil("one writer gets in") { writers.contains { $0.hasGotIn } }
        let first = writers.first { $0.hasGotIn }!
        let second = writers.first { $0 !== first }!
        XCTAssertFalse(readerGetsIn(lock), "the second writer still holds readers back")
        XCTAssertFalse(holdsWithin(milliseconds: 20) { second.hasGotIn }, "the second writer got in beside the first")
        try first.finish(lock, "the first writer leaves")
        try second.finish(lock, "the first writer's unlock wakes the second")
    }

    /// Four threads on two CPUs take the lock every way at once. A writer
    /// must find no one inside, a reader no writer, and the writers' plain
    /// (non-atomic) count must come out whole.
    func testWritersExcludeEveryoneUnderContention() {
        let lock = MMapLock()
        let state = Shared()
        let perThread = 20_000
        let threads = (0..<4).map { id in
            RCUThread {
                defer { state.finished.add(1, ordering: .releasing) }
                var rng = SplitMix64(seed: UInt64(id + 1))
                for _ in 0..<perThread {
                    // Now and then a holder gives its CPU away, so that
                    // the others queue behind it and sleep.
                    let yield = rng.next() % 16 == 0
                    switch rng.next() % 8 {
                    case 0:
                        lock.lockWrite()
                        state.write(yield)
                        lock.unlockWrite()
                    case 1:
                        lock.lockWrite()
                        state.write(yield)
                        lock.downgrade()
                        state.read(yield)
                        lock.unlockRead()
                    case 2:
                        guard lock.tryLockWrite() else { continue }
                        state.write(yield)
                        lock.unlockWrite()
                    case 3:
                        guard lock.tryLockRead() else { continue }
                        state.read(yield)
                        lock.unlockRead()
                    default:
                        lock.lockRead()
                        state.read(yield)
                        lock.unlockRead()
                    }
                }
            }
        }
        // A lost wake-up leaves threads asleep: fail, and rescue them.
        let finished = { state.finished.load(ordering: .acquiring) == threads.count }
        do {
            try waitUntil("every thread finishes", seconds: 60, finished)
            threads.forEach { $0.join() }
        } catch {
            Self.rescue(lock, threads, until: finished)
        }
        XCTAssertEqual(state.violations.load(ordering: .relaxed), 0, "a writer shared the lock")
        XCTAssertEqual(state.count, state.writes.load(ordering: .relaxed), "a writer's increment was lost")
        XCTAssertGreaterThan(state.writes.load(ordering: .relaxed), 0)
    }

    /// Who is inside, as each holder says on entering and leaving.
    final class Shared: @unchecked Sendable {
        let readers = Atomic<Int>(0)
        let writers = Atomic<Int>(0)
        let violations = Atomic<Int>(0)
        let writes = Atomic<Int>(0)
        let finished = Atomic<Int>(0)
        /// Written only under the write lock.
        var count = 0

        func write(_ yield: Bool) {
            if writers.add(1, ordering: .relaxed).newValue != 1 || readers.load(ordering: .relaxed) != 0 {
                violations.add(1, ordering: .relaxed)
            }
            let before = count
            if yield { sched_yield() }
            count = before + 1
            writes.add(1, ordering: .relaxed)
            writers.subtract(1, ordering: .relaxed)
        }

        func read(_ yield: Bool) {
            readers.add(1, ordering: .relaxed)
            if yield { sched_yield() }
            if writers.load(ordering: .relaxed) != 0 { violations.add(1, ordering: .relaxed) }
            _ = count
            readers.subtract(1, ordering: .relaxed)
        }
    }
}
