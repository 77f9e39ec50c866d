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

    /// The steady ratios round by round, in the order the rounds ran, and
    /// the reported ratios their medians: a C that is fastest in its first
    /// round shows there, not in the median.
    func testSteadyRatiosRoundByRound() {
        let samples: [String: [Double]] = [
            "steady_gather_tables_per_sec": [30, 30, 30],
            "steady_c_gather_tables_per_sec": [50, 40, 30],
            "steady_defer_tables_per_sec": [8, 6, 9],
            "steady_call_rcu_per_sec_c": [4, 4, 3],
            "table_path_ns": [20, 18, 24],
            "table_path_ns_c": [10, 10, 8],
        ]
        let byRound = Bench.steadyRoundRatios(samples)
        XCTAssertEqual(byRound["steady_gather_ratio"], [0.6, 0.75, 1.0])
        XCTAssertEqual(byRound["steady_defer_ratio"], [2.0, 1.5, 3.0])
        XCTAssertEqual(byRound["table_path_cost_ratio"], [2.0, 1.8, 3.0], "the model's ns over the C's")
        XCTAssertEqual(Bench.steadyRoundRatioKeys, ["steady_gather_ratio", "steady_defer_ratio", "table_path_cost_ratio"])
        XCTAssertEqual(Set(byRound.keys), Set(Bench.steadyRoundRatioKeys), "the keys a report lists are the ones computed")
        let ratios = Bench.steadyRatios(samples)
        XCTAssertEqual(ratios.gather, 0.75)
        XCTAssertEqual(ratios.defer, 2.0)
        XCTAssertEqual(ratios.tablePathCost, 2.0)
        XCTAssertEqual(Bench.steadyRoundRatios([:])["steady_gather_ratio"], [], "a side missing: no rounds, no crash")
    }

    func testMedianOfEvenAndOddCounts() {
        XCTAssertEqual(Bench.median([3, 1, 2]), 2)
        XCTAssertEqual(Bench.median([4, 1, 3, 2]), 2.5)
    }
}
