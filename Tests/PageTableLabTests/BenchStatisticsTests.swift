import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// How `ptlab bench` turns rounds into the numbers its targets judge.
final class BenchStatisticsTests: XCTestCase {
    /// A ratio pairs the two sides of each round: a slow round's Swift is
    /// held against that round's C, never against a fast round's.
    func testRatiosArePairedByRound() {
        let swift: [Double] = [10, 5, 5]     // fast round, then two slow ones
        let c: [Double] = [10, 10, 5]        // the machine slowed one round later for C
        XCTAssertEqual(Bench.pairedRatio(swift, c), 1.0)
        XCTAssertEqual(Bench.median(swift) / Bench.median(c), 0.5, "the unpaired ratio this replaces")
    }

    func testMedianOfEvenAndOddCounts() {
        XCTAssertEqual(Bench.median([3, 1, 2]), 2)
        XCTAssertEqual(Bench.median([4, 1, 3, 2]), 2.5)
    }
}
