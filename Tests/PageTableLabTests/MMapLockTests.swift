import Synchronization
import XCTest
@testable import PageTableLab
import PageTableLabHarness

/// mmap_lock as a reader count and writer bits in one word: readers share
/// it, a writer excludes everyone, a waiting writer holds new readers back,
/// and the last reader out wakes it. Each test fails if the word's fast
/// paths ignore a bit, or a wake-up is lost (a bounded wait, not a hang:
/// a reader that got in where it must not leaves at once, and a writer
/// left asleep is woken by a write lock taken and dropped).
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

    /// A thread that takes the write lock and drops it, and whether it has.
    final class Writer: Sendable {
        let acquired = Atomic<Bool>(false)
        private let thread = Mutex<RCUThread?>(nil)

        static func start(_ lock: MMapLock) -> Writer {
            let writer = Writer()
            let thread = RCUThread {
                lock.lockWrite()
                writer.acquired.store(true, ordering: .releasing)
                lock.unlockWrite()
            }
            writer.thread.withLock { $0 = thread }
            return writer
        }

        var hasHadTheLock: Bool { acquired.load(ordering: .acquiring) }

        /// Wait until it has had the lock; if it never does (a lost
        /// wake-up), fail and rescue it.
        func finish(_ lock: MMapLock, _ message: String) throws {
            let thread = self.thread.withLock { $0.take()! }
            do {
                try waitUntil(message, seconds: 10) { hasHadTheLock }
            } catch {
                MMapLockTests.rescue(lock, [thread]) { hasHadTheLock }
                throw error
            }
            thread.join()
        }
    }

    func testReadersShareAndAWaitingWriterHoldsNewReadersBack() throws {
        let lock = MMapLock()
        lock.lockRead()
        XCTAssertTrue(readerGetsIn(lock), "a second reader shares the lock")
        XCTAssertFalse(lock.tryLockWrite(), "a writer cannot take a lock a reader holds")
        let writer = Writer.start(lock)
        try waitUntil("the writer waits for the reader") { lock.waiting.writers == 1 }
        XCTAssertFalse(readerGetsIn(lock), "a waiting writer holds new readers back")
        XCTAssertFalse(holdsWithin(milliseconds: 20) { writer.hasHadTheLock }, "the writer got in beside a reader")
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
        let writer = Writer.start(lock)
        try waitUntil("the writer waits for the downgraded reader") { lock.waiting.writers == 1 }
        XCTAssertFalse(holdsWithin(milliseconds: 20) { writer.hasHadTheLock }, "the writer got in beside a reader")
        lock.unlockRead()
        try writer.finish(lock, "the downgraded reader's unlock wakes the writer")
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
                    switch rng.next() % 8 {
                    case 0:
                        lock.lockWrite()
                        state.write()
                        lock.unlockWrite()
                    case 1:
                        lock.lockWrite()
                        state.write()
                        lock.downgrade()
                        state.read()
                        lock.unlockRead()
                    default:
                        lock.lockRead()
                        state.read()
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

        func write() {
            if writers.add(1, ordering: .relaxed).newValue != 1 || readers.load(ordering: .relaxed) != 0 {
                violations.add(1, ordering: .relaxed)
            }
            count += 1
            writes.add(1, ordering: .relaxed)
            writers.subtract(1, ordering: .relaxed)
        }

        func read() {
            readers.add(1, ordering: .relaxed)
            if writers.load(ordering: .relaxed) != 0 { violations.add(1, ordering: .relaxed) }
            _ = count
            readers.subtract(1, ordering: .relaxed)
        }
    }
}
