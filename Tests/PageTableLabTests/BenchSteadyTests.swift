import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// `ptlab bench`'s steady-state runs, too short to measure anything: what
/// is checked is that every path frees all it takes and keeps its bound.
final class BenchSteadyTests: XCTestCase {
    /// Two gather batches: past the worker's pace, a producer must wait a
    /// grace period and free inline.
    private let window = Bench.SteadyWindow(warmupSeconds: 0.005, seconds: 0.02, boundTables: 1020)
    /// Under one batch page's worth: every full batch goes inline, whatever
    /// the worker's pace.
    private let windowUnderOneBatch = Bench.SteadyWindow(warmupSeconds: 0.005, seconds: 0.02, boundTables: 500)

    /// The kernel-shaped C gather takes every table and batch page from its
    /// pool's free list and gives every one back: the counts agree and the
    /// list is full again.
    func testKernelShapedCGatherFreesEveryTableItTakes() throws {
        let pool = try CPagePool(pages: window.boundTables + CPagePool.slackPages)
        XCTAssertEqual(pool.freePages, pool.pages)
        for _ in 0..<2 {
            let r = try pool.steadyGather(window)
            XCTAssertEqual(r.failed, 0)
            XCTAssertGreaterThan(r.handed, 0)
            XCTAssertGreaterThanOrEqual(r.allocated, r.handed + r.handed / 509, "a batch page per 509 tables")
            XCTAssertEqual(r.freed, r.allocated, "every page taken was given back")
            XCTAssertEqual(pool.freePages, pool.pages, "the free list is full again")
            XCTAssertGreaterThan(r.window_objects, 0)
            XCTAssertLessThanOrEqual(r.window_objects, r.handed)
        }
    }

    /// A bound under one batch page's worth sends every full batch inline,
    /// whatever the worker's pace (the path that frees onto the producer's
    /// own list, as the lab's inline free does), and the books still close.
    func testKernelShapedCGatherUnderABoundSmallerThanABatchFreesEveryBatchInline() throws {
        let pool = try CPagePool(pages: windowUnderOneBatch.boundTables + CPagePool.slackPages)
        let r = try pool.steadyGather(windowUnderOneBatch)
        XCTAssertEqual(r.failed, 0)
        XCTAssertGreaterThan(r.handed, 509)
        XCTAssertEqual(r.inline_frees, r.handed / 509, "every full batch freed inline, the open one by call_rcu")
        XCTAssertEqual(r.freed, r.allocated, "every page taken was given back")
        XCTAssertEqual(pool.freePages, pool.pages, "the free list is full again")
    }

    /// A pool too small for the bound (and the producer's open batch and
    /// per-CPU list) is refused before it could run dry.
    func testKernelShapedCGatherRefusesAPoolSmallerThanItsBound() throws {
        let pool = try CPagePool(pages: window.boundTables)
        XCTAssertThrowsError(try pool.steadyGather(window))
        XCTAssertEqual(pool.freePages, pool.pages)
    }

    /// The C table path with no grace period: every full batch freed at
    /// once, the last partial one at the end, every page back.
    func testKernelShapedCTablePathFreesEveryTableItTakes() throws {
        let pool = try CPagePool(pages: 4096)
        let r = try pool.tablePath(tables: 3000)
        XCTAssertEqual(r.failed, 0)
        XCTAssertEqual(r.window_objects, 3000)
        XCTAssertEqual(r.allocated, 3000 + 6, "a batch page per 509 tables, the last one partial")
        XCTAssertEqual(r.inline_frees, 5, "each full batch freed at once")
        XCTAssertEqual(r.freed, r.allocated)
        XCTAssertEqual(pool.freePages, pool.pages)
        XCTAssertGreaterThan(try Bench.tablePathNsC(3000, pool: pool), 0)
        XCTAssertThrowsError(try pool.tablePath(tables: 0))
    }

    /// A pool too small for the run: refused as failed, and every page it
    /// did take is back on the free list, so the pool still works.
    func testKernelShapedCTablePathThatRunsDryGivesEveryPageBack() throws {
        let pool = try CPagePool(pages: 100)
        XCTAssertThrowsError(try pool.tablePath(tables: 1000)) { error in
            XCTAssertTrue("\(error)".contains("C table path (failed)"), "\(error)")
        }
        XCTAssertEqual(pool.freePages, pool.pages, "a dry run's pages still go back")
        XCTAssertEqual(try pool.tablePath(tables: 10).window_objects, 10)
    }

    /// The model's table path with no grace period frees every table on
    /// this thread (withLab checks the allocator is whole and no free
    /// failed) and queues no callback; an mm whose policy waits for a grace
    /// period is refused, not measured as if it did not.
    func testSwiftTablePathFreesEveryTableWithoutAGracePeriod() throws {
        try withLab { allocator in
            let mm = try Bench.noGracePeriodMM(allocator: allocator)
            defer { _ = mm.exit() }
            let pagesBefore = allocator.totalAllocatedPages
            XCTAssertGreaterThan(try Bench.tablePathNs(3000, mm: mm, allocator: allocator), 0)
            XCTAssertEqual(allocator.totalAllocatedPages, pagesBefore, "every table and batch page back, with no barrier")
            let rcuMM = try MM(allocator: allocator)
            defer { _ = rcuMM.exit() }
            let pagesBeforeRefusal = allocator.totalAllocatedPages
            XCTAssertThrowsError(try Bench.tablePathNs(3000, mm: rcuMM, allocator: allocator))
            XCTAssertEqual(allocator.totalAllocatedPages, pagesBeforeRefusal, "refused before a table was taken")
        }
    }

    func testCCallRCUFreesEveryObject() throws {
        let r = try Bench.steadyCallRCUPerSecC(window)
        XCTAssertGreaterThan(r.objects, 0)
        XCTAssertGreaterThan(r.seconds, 0)
    }

    /// The Swift paths under the bound: every table freed (withLab checks
    /// the allocator is whole and no free failed), the bound restored.
    func testSwiftPathsFreeEveryTable() throws {
        let before = DeferredBound.bytes
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            defer { _ = mm.exit() }
            let deferred = try Bench.steadyDeferTablesPerSec(window, mm: mm, allocator: allocator)
            XCTAssertGreaterThan(deferred.objects, 0)
            let gathered = try Bench.steadyGatherTablesPerSec(window, mm: mm, allocator: allocator)
            XCTAssertGreaterThan(gathered.objects, 0)
        }
        XCTAssertEqual(DeferredBound.bytes, before)
    }

    /// The Swift gather under a bound smaller than one batch: every full
    /// batch waits a grace period and is freed inline, whatever the
    /// worker's pace, and every table still comes back.
    func testSwiftGatherUnderABoundSmallerThanABatchFreesEveryBatchInline() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            defer { _ = mm.exit() }
            let r = try Bench.steadyGatherTablesPerSec(windowUnderOneBatch, mm: mm, allocator: allocator)
            XCTAssertGreaterThan(r.handed, 509)
            XCTAssertGreaterThanOrEqual(r.inlineFrees, r.handed / 509, "every full batch freed inline")
        }
    }
}
