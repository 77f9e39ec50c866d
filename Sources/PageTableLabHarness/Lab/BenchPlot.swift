import PageTableLab
/// `ptlab bench --plot DIR`: two hand-written SVG line charts, so that the
/// lab needs no plotting dependency. Axes start at zero (no chart should
/// exaggerate a difference); the x axis is categorical.
public enum BenchPlot {
    public struct Series {
        public var name: String
        public var values: [Double]
    }

    /// Throughput against producer threads: one line per path and workers.
    public static func scalingSVG(_ points: [Bench.ScalingPoint]) -> String? {
        let threads = Array(Set(points.map(\.threads))).sorted()
        guard !threads.isEmpty else { return nil }
        var series: [Series] = []
        for workers in ["default", "per-cpu"] {
            for path in Bench.scalingPaths {
                let line = threads.map { t in
                    points.first { $0.workers == workers && $0.path == path && $0.threads == t }.map { $0.perSec / 1e6 } ?? 0
                }
                series.append(Series(name: "\(path), \(workers) workers", values: line))
            }
        }
        return lineChart(title: "Deferred-free throughput against producer threads",
                         xLabel: "producer threads", yLabel: "million objects / s (barrier included)",
                         categories: threads.map(String.init), series: series)
    }

    /// pte_free_defer's queue-to-free latency at each percentile.
    public static func latencySVG(_ percentiles: [BenchReport.LatencyPercentile]) -> String? {
        guard !percentiles.isEmpty else { return nil }
        return lineChart(title: "pte_free_defer: queue-to-free latency distribution",
                         xLabel: "percentile", yLabel: "milliseconds",
                         categories: percentiles.map { label($0.percentile) },
                         series: [Series(name: "queue → free (grace period + worker)", values: percentiles.map { $0.us / 1000 })])
    }

    private static func label(_ p: Double) -> String {
        p == p.rounded() ? "p\(Int(p))" : "p\(p)"
    }

    static let colours = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"]

    static func lineChart(title: String, xLabel: String, yLabel: String, categories: [String], series: [Series]) -> String {
        let width = 720.0, height = 440.0
        let left = 80.0, right = 24.0, top = 48.0, bottom = 120.0
        let plotW = width - left - right, plotH = height - top - bottom
        let yMax = niceCeiling(series.flatMap(\.values).max() ?? 1)
        // Points stand clear of the axes by `pad` on each side.
        let pad = 36.0
        func x(_ i: Int) -> Double {
            categories.count == 1 ? left + plotW / 2 : left + pad + (plotW - 2 * pad) * Double(i) / Double(categories.count - 1)
        }
        func y(_ v: Double) -> Double { top + plotH * (1 - v / yMax) }

        var svg = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" \
            viewBox="0 0 \(Int(width)) \(Int(height))" font-family="sans-serif" font-size="12">
            <rect width="100%" height="100%" fill="white"/>
            <text x="\(width / 2)" y="24" text-anchor="middle" font-size="15">\(escape(title))</text>

            """
        for tick in 0...5 {
            let v = yMax * Double(tick) / 5
            svg += "<line x1=\"\(left)\" y1=\"\(y(v))\" x2=\"\(left + plotW)\" y2=\"\(y(v))\" stroke=\"#ddd\"/>\n"
            svg += "<text x=\"\(left - 6)\" y=\"\(y(v) + 4)\" text-anchor=\"end\">\(format(v))</text>\n"
        }
        for (i, c) in categories.enumerated() {
            svg += "<text x=\"\(x(i))\" y=\"\(top + plotH + 18)\" text-anchor=\"middle\">\(escape(c))</text>\n"
        }
        svg += "<line x1=\"\(left)\" y1=\"\(top + plotH)\" x2=\"\(left + plotW)\" y2=\"\(top + plotH)\" stroke=\"black\"/>\n"
        svg += "<line x1=\"\(left)\" y1=\"\(top)\" x2=\"\(left)\" y2=\"\(top + plotH)\" stroke=\"black\"/>\n"
        svg += "<text x=\"\(left + plotW / 2)\" y=\"\(top + plotH + 38)\" text-anchor=\"middle\">\(escape(xLabel))</text>\n"
        svg += "<text transform=\"translate(18 \(top + plotH / 2)) rotate(-90)\" text-anchor=\"middle\">\(escape(yLabel))</text>\n"
        for (s, line) in series.enumerated() {
            let colour = colours[s % colours.count]
            let dash = s >= colours.count ? " stroke-dasharray=\"6 4\"" : ""
            let pointsAttr = line.values.enumerated().map { "\(x($0.offset)),\(y($0.element))" }.joined(separator: " ")
            svg += "<polyline points=\"\(pointsAttr)\" fill=\"none\" stroke=\"\(colour)\" stroke-width=\"2\"\(dash)/>\n"
            for (i, v) in line.values.enumerated() {
                svg += "<circle cx=\"\(x(i))\" cy=\"\(y(v))\" r=\"3.5\" fill=\"\(colour)\"/>\n"
            }
            let ly = top + plotH + 58 + Double(s / 2) * 18
            let lx = left + Double(s % 2) * plotW / 2
            svg += "<line x1=\"\(lx)\" y1=\"\(ly - 4)\" x2=\"\(lx + 24)\" y2=\"\(ly - 4)\" stroke=\"\(colour)\" stroke-width=\"2\"\(dash)/>\n"
            svg += "<text x=\"\(lx + 30)\" y=\"\(ly)\">\(escape(line.name))</text>\n"
        }
        return svg + "</svg>\n"
    }

    /// The smallest 1, 2 or 5 × 10^k at or above `v`, so the ticks are round.
    static func niceCeiling(_ v: Double) -> Double {
        guard v > 0 else { return 1 }
        var step = 1.0
        while step * 10 <= v { step *= 10 }
        while step > v { step /= 10 }
        for m in [1.0, 2, 5, 10] where step * m >= v { return step * m }
        return step * 10
    }

    private static func format(_ v: Double) -> String {
        v == v.rounded() ? String(Int(v)) : String((v * 100).rounded() / 100)
    }

    private static func escape(_ s: String) -> String {
        s.map { c -> String in
            switch c {
            case "&": "&amp;"
            case "<": "&lt;"
            case ">": "&gt;"
            default: String(c)
            }
        }.joined()
    }
}
