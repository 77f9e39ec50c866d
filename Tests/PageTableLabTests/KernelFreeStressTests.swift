import XCTest
@testable import PageTableLab

/// The SVA bug of seeds 000–002 end to end: DMA walkers translating kernel
/// addresses while kernel tables are freed and reused.
final class KernelFreeStressTests: XCTestCase {
    private func run(_ mode: String, ops: Int? = nil, faults: Bool = false) throws -> StressResult {
        try runStressForTest(faults ? "iommu-faults" : "kernel-free", mode, ops: ops) { options, allocator in
            try KernelFreeStress(options, injectFaults: faults).run(allocator: allocator)
        }
    }

    func testNoInvalidateReproducesTheBug() throws {
        let r = try run("no-invalidate")
        XCTAssertEqual(r.expectedDetector, .iommuFromCache)
        XCTAssertGreaterThan(r.detections[.iommuFromCache], 0,
                             "ran \(r.ops) ops, \(r.walks) translations and no stale IOMMU cache entry was caught: \(r.detections)")
        XCTAssertTrue(r.pass, r.verdict)
        XCTAssertEqual(r.leakedPages, 0)
        XCTAssertEqual(r.invalidationsPerTable, 0)
    }

    func testDeferredIsSafeAndBatches() throws {
        let r = try run("deferred", ops: 400)
        XCTAssertEqual(r.uafDetected, 0)
        XCTAssertEqual(r.leakedPages, 0)
        XCTAssertGreaterThan(r.tablesFreed, 0)
        XCTAssertLessThanOrEqual(r.invalidationsPerTable ?? 1, 1, "never more than one invalidation per table")
        XCTAssertTrue(r.pass, r.verdict)
    }

    func testPerPageIsSafeWithOneInvalidationPerTable() throws {
        let r = try run("per-page", ops: 200)
        XCTAssertEqual(r.uafDetected, 0)
        XCTAssertEqual(r.invalidationsPerTable, 1)
        XCTAssertTrue(r.pass, r.verdict)
    }

    func testEveryInjectedFaultIsSurvived() throws {
        let r = try run("deferred", ops: 160, faults: true)
        let f = try XCTUnwrap(r.faultsInjected)
        XCTAssertGreaterThan(f.iqe, 0)
        XCTAssertGreaterThan(f.ite, 0)
        XCTAssertGreaterThan(f.ice, 0)
        XCTAssertGreaterThan(f.queueFull, 0)
        XCTAssertEqual(r.uafDetected, 0)
        XCTAssertEqual(r.leakedPages, 0)
        XCTAssertTrue(r.pass, r.verdict)
    }
}
