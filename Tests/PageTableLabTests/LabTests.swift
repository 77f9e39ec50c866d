import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

final class LabTests: XCTestCase {
    func testUnloadDrainsDeferredFreesAndFindsLeaks() throws {
        let lab = try Lab(parameters: try ModuleParameters(["node_budget_pages=4096"]))
        let node = lab.allocator.topology.nodeIDs[0]
        try RCU.withRegisteredThread {
            let mm = try MM(allocator: lab.allocator)
            try mm.mmap(address: tib, length: 4 * mib)
            try mm.touch(address: tib, length: 4 * mib, stride: mib)
            // Tables still queued for RCU when module_exit starts: it must
            // wait for them, not call them leaks.
            try mm.munmap(address: tib, length: 4 * mib)
            mm.exit()
        }
        _ = try lab.allocator.alloc(node: .node(node))   // forgotten on purpose
        let report = try lab.unload()
        XCTAssertEqual(report.leakedPages, [node: 1], "exactly the one forgotten page")
        XCTAssertEqual(report.outstandingCallbacks, 0)
        XCTAssertFalse(report.clean)
        XCTAssertNil(PageAllocator.current, "unloaded")
    }

    func testBadParameterIsAnErrorNamingIt() {
        XCTAssertThrowsError(try ModuleParameters(["node_budget_pages=lots"])) {
            XCTAssertTrue("\($0)".contains("node_budget_pages"))
        }
    }
}
