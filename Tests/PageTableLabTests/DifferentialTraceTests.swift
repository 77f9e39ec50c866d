import XCTest
@testable import PageTableLab

/// Traces nobody wrote by hand: seeded random mmap/touch/dontneed/munmap
/// sequences aimed at table boundaries (2 MiB, 1 GiB, 512 GiB), run on the
/// model and the live kernel in lockstep with a checkpoint after every op.
/// Any disagreement names the seed, the op and both values.
final class DifferentialTraceTests: XCTestCase {
    /// Builds one random trace, tracking its own mappings so every touch and
    /// dontneed stays inside them and every mmap avoids them.
    struct Generator {
        var rng: SplitMix64
        var mapped: [(UInt64, UInt64)] = []
        let regions: [UInt64] = [0x100_0000_0000, 0x180_0000_0000]

        mutating func pick<T>(_ xs: [T]) -> T { xs[Int(rng.next() % UInt64(xs.count))] }

        mutating func address() -> UInt64 {
            let region = pick(regions)
            let gig: UInt64 = pick([0, 1, 2, 511])
            let mib2: UInt64 = pick([0, 1, 2, 255, 510, 511])
            let page: UInt64 = pick([0, 0, 1, 255, 256, 511])
            return region + gig << 30 + mib2 << 21 + page << 12
        }

        mutating func length() -> UInt64 {
            pick([4096, 8192, 1 << 20, 2 << 20, (2 << 20) + 4096, 4 << 20, 6 << 20, 64 << 20, 1 << 30])
        }

        func overlaps(_ a: UInt64, _ l: UInt64) -> Bool { mapped.contains { $0.0 < a + l && a < $0.0 + $0.1 } }

        mutating func subrange() -> (UInt64, UInt64)? {
            guard !mapped.isEmpty else { return nil }
            let (start, len) = pick(mapped)
            let pages = len >> 12
            let first = rng.next() % pages
            let count = 1 + rng.next() % (pages - first)
            return (start + first << 12, count << 12)
        }

        mutating func op() -> String? {
            switch rng.next() % 10 {
            case 0...2:
                let a = address(), l = length()
                guard !overlaps(a, l) else { return nil }
                mapped.append((a, l))
                return "mmap 0x\(String(a, radix: 16)) 0x\(String(l, radix: 16))"
            case 3...5:
                guard let (a, l) = subrange() else { return nil }
                let stride: UInt64 = l > 64 << 20 ? 2 << 20 : pick([4096, 64 << 10, 1 << 20])
                return "touch 0x\(String(a, radix: 16)) 0x\(String(l, radix: 16)) 0x\(String(stride, radix: 16))"
            case 6...7:
                guard let (a, l) = subrange() else { return nil }
                return "dontneed 0x\(String(a, radix: 16)) 0x\(String(l, radix: 16))"
            default:
                // munmap may span holes and several mappings.
                let a = address(), l = length()
                mapped = mapped.flatMap { (s, n) -> [(UInt64, UInt64)] in
                    let e = s + n, ue = a + l
                    guard s < ue && a < e else { return [(s, n)] }
                    var left: [(UInt64, UInt64)] = []
                    if s < a { left.append((s, a - s)) }
                    if e > ue { left.append((ue, e - ue)) }
                    return left
                }
                return "munmap 0x\(String(a, radix: 16)) 0x\(String(l, radix: 16))"
            }
        }

        mutating func trace(ops: Int) -> String {
            var lines: [String] = []
            while lines.count < ops * 2 {
                if let line = op() { lines += [line, "expect"] }
            }
            return lines.joined(separator: "\n") + "\n"
        }
    }

    func testRandomTracesMatchThisKernel() throws {
        if let reason = LiveKernel.unavailableReason { throw XCTSkip("no live kernel to compare with: \(reason)") }
        let profile = CompareProfile.runningKernel()
        let model = try ModelTarget(profile: profile)
        // PTLAB_DIFF_SEEDS widens the sweep for a long run; CI keeps 40.
        let seeds = ProcessInfo.processInfo.environment["PTLAB_DIFF_SEEDS"].flatMap(UInt64.init) ?? 40
        for seed in UInt64(1)...seeds {
            var generator = Generator(rng: SplitMix64(seed: seed))
            let text = generator.trace(ops: 30)
            let trace = try TraceParser.parse(text, file: "random-\(seed).trace")
            let run = try runTolerantOfInterference(trace, targets: { [model, try LiveKernel()] }, profile: profile)
            XCTAssertNil(run.error, "seed \(seed): \(String(describing: run.error))")
            if let c = run.checkpoints.first(where: { Set($0.kilobytes).count != 1 }) {
                // The whole trace, so the failure can be replayed with
                // `ptlab compare` as it stands.
                let lines = text.split(separator: "\n")
                XCTFail("seed \(seed) line \(c.line) (\(lines[c.line - 2])): model/kernel kB \(c.kilobytes)\n\(text)")
            }
            XCTAssertEqual(run.afterCleanup, [0, 0], "seed \(seed)")
        }
    }
}
