import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// Two threads hand a plain (non-atomic) record back and forth through one
/// LabMutex. In any build the lock must exclude; under `scripts/sanitize
/// thread` TSan must also see each hand-off, or it reports the record's
/// fields as racing and the run fails (with a bare `Mutex` it does).
final class LabMutexTests: XCTestCase {
    struct Record {
        var count = 0
        var lastOwner = -1
        var handOffs = 0
        var history: [Int] = []
    }

    func testExcludesAndHandsOffBetweenThreads() {
        let lock = LabMutexBox()
        let perThread = 20_000
        let threads = (0..<2).map { id in
            RCUThread {
                for _ in 0..<perThread {
                    lock.mutex.withLock { r in
                        if r.lastOwner != id { r.handOffs += 1 }
                        r.lastOwner = id
                        let before = r.count
                        r.history.append(id)
                        if r.history.count == 64 { r.history.removeAll(keepingCapacity: true) }
                        r.count = before + 1
                    }
                }
            }
        }
        threads.forEach { $0.join() }
        let (count, handOffs) = lock.mutex.withLock { ($0.count, $0.handOffs) }
        XCTAssertEqual(count, 2 * perThread, "an increment was lost: the lock did not exclude")
        XCTAssertGreaterThan(handOffs, 1, "the threads never took turns, so nothing was checked")
    }
}

/// A class holds the lock, as the lab's objects do: its address is stable.
final class LabMutexBox: Sendable {
    let mutex = LabMutex(LabMutexTests.Record())
}
