import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

final class RCUTortureTests: XCTestCase {
    func testNoReaderOutlivesAGracePeriod() {
        let r = RCUTorture(writer: .synchronize, readers: 2, updates: 5_000).run()
        XCTAssertEqual(r.updates, 5_000)
        XCTAssertGreaterThan(r.reads, 0)
        XCTAssertEqual(r.failures, 0, "a reader saw an object retired a grace period ago")
        XCTAssertTrue(r.pass)
    }

    /// The checker itself: without the wait, readers must catch it.
    func testSkippedGracePeriodIsCaught() {
        let r = RCUTorture(writer: .noGracePeriod, readers: 2, updates: 5_000_000).run()
        XCTAssertGreaterThan(r.failures, 0, "\(r.updates) updates, \(r.reads) reads and nothing seen")
        XCTAssertGreaterThanOrEqual(r.maxAge, 1)
        XCTAssertTrue(r.pass)
    }
}
