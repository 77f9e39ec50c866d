import Dispatch
import Synchronization
import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// schedule_work's contract, which the deferred kernel-table free relies
/// on: work already pending is not queued twice, and work scheduled while
/// it runs runs once more (the pending bit is cleared before the function
/// starts), so nothing added during a run is left behind.
final class WorkTests: XCTestCase {
    /// A work function that signals when it starts and, on its first run,
    /// holds until told to finish.
    private final class Gate: Sendable {
        let started = DispatchSemaphore(value: 0)
        let finish = DispatchSemaphore(value: 0)
        let runs = Atomic<Int>(0)
    }

    func testSchedulingWhileRunningRunsOnceMore() throws {
        let gate = Gate()
        let work = Work {
            if gate.runs.add(1, ordering: .relaxed).newValue == 1 {
                gate.started.signal()
                gate.finish.wait()
            }
        }
        defer { work.shutdown() }
        XCTAssertTrue(work.schedule())
        XCTAssertEqual(gate.started.wait(timeout: .now() + .seconds(30)), .success, "the work never ran")
        // Running, no longer pending: this schedule must take.
        XCTAssertTrue(work.schedule(), "a schedule during the run was dropped")
        XCTAssertFalse(work.schedule(), "pending work was queued twice")
        gate.finish.signal()
        work.flush()
        XCTAssertEqual(work.runs.load(ordering: .relaxed), 2, "work scheduled during its run did not run again")
    }

    func testSchedulingPendingWorkRunsItOnce() throws {
        let runs = Atomic<Int>(0)
        let work = Work { runs.add(1, ordering: .relaxed) }
        defer { work.shutdown() }
        work.freeze()
        XCTAssertTrue(work.schedule())
        for _ in 0..<10 { XCTAssertFalse(work.schedule()) }
        work.thaw()
        work.flush()
        XCTAssertEqual(runs.load(ordering: .relaxed), 1)
    }
}
