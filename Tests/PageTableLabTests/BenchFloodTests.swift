import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// The bounded-memory flood of `ptlab bench`: producers queue page frees
/// while a reader stalls in a read section, under a DeferredBound.
final class BenchFloodTests: XCTestCase {
    func testFloodPastAStalledReaderStaysWithinTheBound() throws {
        try withLab { allocator in
            let bound: UInt64 = 1 << 20
            let before = DeferredBound.bytes
            let result = try Bench.flood(bound: bound, producers: 2, callsPerProducer: 2048, allocator: allocator)
            XCTAssertEqual(result.calls, 4096, "every producer call was made")
            XCTAssertGreaterThan(result.peakBytes, 0, "the flood left nothing outstanding: the stall did not hold")
            XCTAssertLessThanOrEqual(result.peakBytes, Int64(bound))
            XCTAssertEqual(DeferredBound.bytes, before, "the bound is restored after the flood")
        }
    }

    /// The bench's check can fail: with admission off, the same flood
    /// passes the bound and the flood's monitor reports it.
    func testFloodWithoutAdmissionIsSeenPassingTheBound() throws {
        try withLab { allocator in
            let bound: UInt64 = 1 << 20
            DeferredBound.disableAdmissionForTesting(true)
            defer { DeferredBound.disableAdmissionForTesting(false) }
            let result = try Bench.flood(bound: bound, producers: 2, callsPerProducer: 2048, allocator: allocator)
            XCTAssertEqual(result.inlineFallbacks, 0)
            XCTAssertGreaterThan(result.peakBytes, Int64(bound), "the monitor missed a flood that admission never held back")
        }
    }

    func testAFloodTooSmallToFillTheStallIsRefused() throws {
        try withLab { allocator in
            XCTAssertThrowsError(try Bench.flood(bound: 1 << 20, producers: 1, callsPerProducer: 10, allocator: allocator))
        }
    }
}
