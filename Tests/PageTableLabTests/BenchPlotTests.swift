import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// `ptlab bench --plot`: the hand-written SVG charts.
final class BenchPlotTests: XCTestCase {
    func testScalingChartHasOneLinePerPathAndWorkers() throws {
        let points = ["default", "per-cpu"].flatMap { w in
            Bench.scalingPaths.flatMap { p in
                [1, 2].map { Bench.ScalingPoint(workers: w, path: p, threads: $0, perSec: Double($0) * 3e6) }
            }
        }
        let svg = try XCTUnwrap(BenchPlot.scalingSVG(points))
        XCTAssertTrue(svg.hasPrefix("<svg xmlns=\"http://www.w3.org/2000/svg\""))
        XCTAssertTrue(svg.hasSuffix("</svg>\n"))
        XCTAssertEqual(svg.components(separatedBy: "<polyline").count - 1, 4)
        XCTAssertTrue(svg.contains("pte_free_defer, per-cpu workers"))
        // 6 M/s at most: the axis tops out at the next round number, 10.
        XCTAssertTrue(svg.contains(">10</text>"))
    }

    func testLatencyChartEscapesAndNeedsData() throws {
        XCTAssertNil(BenchPlot.latencySVG([]))
        let svg = try XCTUnwrap(BenchPlot.latencySVG([.init(percentile: 50, us: 1500), .init(percentile: 99.9, us: 9000)]))
        XCTAssertTrue(svg.contains(">p50<") && svg.contains(">p99.9<"))
        let escaped = BenchPlot.lineChart(title: "a<b & c>d", xLabel: "x", yLabel: "y", categories: ["1"],
                                          series: [.init(name: "s", values: [1])])
        XCTAssertTrue(escaped.contains("a&lt;b &amp; c&gt;d"))
    }

    func testNiceCeilingRoundsUpToOneTwoOrFive() {
        XCTAssertEqual(BenchPlot.niceCeiling(0), 1)
        XCTAssertEqual(BenchPlot.niceCeiling(0.37), 0.5)
        XCTAssertEqual(BenchPlot.niceCeiling(1.2), 2)
        XCTAssertEqual(BenchPlot.niceCeiling(7.3), 10)
        XCTAssertEqual(BenchPlot.niceCeiling(100), 100)
        XCTAssertEqual(BenchPlot.niceCeiling(101), 200)
    }
}
