import XCTest
@testable import PageTableLab

/// Every scenario against real threads: safe modes must stay at zero with
/// no leaks over a fixed amount of work; unsafe modes must detect, which is
/// what proves each detector can fire. Unsafe runs stop at their first
/// detection; the duration is only a bound so a broken detector fails
/// instead of hanging.
final class StressScenarioTests: XCTestCase {
    private func run(_ scenario: String, _ mode: String, ops: Int? = nil) throws -> StressResult {
        try runStressForTest(scenario, mode, ops: ops) { options, allocator in
            try StressRunner(options).run(allocator: allocator)
        }
    }

    private func assertSafe(_ scenario: String, _ mode: String, ops: Int = 150) throws {
        let r = try run(scenario, mode, ops: ops)
        XCTAssertEqual(r.uafDetected, 0, "\(scenario)/\(mode): \(r.detections)")
        XCTAssertEqual(r.leakedPages, 0)
        XCTAssertGreaterThan(r.walks, 0)
        XCTAssertGreaterThan(r.tablesFreed, 0)
        XCTAssertTrue(r.pass, r.verdict)
    }

    private func assertDetects(_ scenario: String, _ mode: String) throws {
        let r = try run(scenario, mode)
        XCTAssertGreaterThan(r.uafDetected, 0, "\(scenario)/\(mode) ran \(r.ops) ops, \(r.walks) walks and saw nothing")
        XCTAssertEqual(r.leakedPages, 0)
        XCTAssertTrue(r.pass, r.verdict)
    }

    func testCollapseDeferIsSafe() throws { try assertSafe("collapse", "defer") }
    func testCollapseImmediateDetects() throws { try assertDetects("collapse", "immediate") }
    func testUnmapRCUTableFreeIsSafe() throws { try assertSafe("unmap", "rcu-table-free") }
    func testUnmapImmediateDetects() throws { try assertDetects("unmap", "immediate") }
    func testUnmapNoFlushDetectsStalePSC() throws {
        let r = try run("unmap", "no-flush")
        XCTAssertGreaterThan(r.detections.stalePSC + r.detections.freedTable, 0)
    }
    func testReclaimRCUTableFreeIsSafe() throws { try assertSafe("reclaim", "rcu-table-free") }
    func testReclaimImmediateDetects() throws { try assertDetects("reclaim", "immediate") }
    func testPTLockDtorAtFreeIsSafe() throws { try assertSafe("ptlock", "dtor-at-free") }
    func testPTLockDtorAtUnlinkDetectsFreedLock() throws {
        let r = try run("ptlock", "dtor-at-unlink")
        XCTAssertGreaterThan(r.detections.freedPTLock, 0, "\(r.detections)")
    }
    func testBatchFailFallbacksAreSafe() throws {
        for fallback in ["ipi-sync", "rcu-one", "synchronize"] { try assertSafe("batch-fail", fallback, ops: 40) }
    }

    func testUnknownScenarioAndModeAreErrors() {
        XCTAssertThrowsError(try StressRunner(StressOptions(scenario: "nope", mode: "defer"))) { error in
            XCTAssertTrue("\(error)".contains("unknown scenario 'nope'"))
        }
        XCTAssertThrowsError(try StressRunner(StressOptions(scenario: "collapse", mode: "rcu-one"))) { error in
            XCTAssertTrue("\(error)".contains("modes: defer, immediate"))
        }
    }
}
