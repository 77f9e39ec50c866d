import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// Traces nobody wrote by hand (RandomTrace): seeded random sequences of
/// every trace op, aimed at table boundaries (2 MiB, 1 GiB, 512 GiB), run on
/// the model and the live kernel in lockstep with a checkpoint after every
/// op. Any disagreement names the seed, the op and both values.
final class DifferentialTraceTests: XCTestCase {
    /// How many seeds the sweep runs: PTLAB_DIFF_SEEDS changes it (CI
    /// doubles it). The default, about 30 ms a seed in a debug build, keeps
    /// the whole `swift test --parallel` near a minute on two cores.
    static var seeds: UInt64 { ProcessInfo.processInfo.environment["PTLAB_DIFF_SEEDS"].flatMap(UInt64.init) ?? 2000 }
    /// The sweep is cut into parts, one test each, so that `swift test
    /// --parallel` runs them in processes of their own side by side (VmPTE
    /// is per process; within one, kernel passes never overlap).
    static let parts: UInt64 = 4

    /// The generator gives each release only what it can do: moves across
    /// mappings from 6.17, guard regions under 6.14+ only (in shared
    /// memory from 6.15).
    func testRandomTracesKeepToTheirRelease() throws {
        func needs(_ profile: CompareProfile, _ kernel: KernelVersion) throws -> Set<String> {
            Set(try (1...300 as ClosedRange<UInt64>).compactMap { seed in
                try RandomTrace.parsed(seed: seed, ops: 30, profile: profile, kernel: kernel).trace.needs.map { "\($0.release)" }
            })
        }
        XCTAssertEqual(try needs(.ptReclaim, KernelVersion(6, 18)), ["6.13", "6.15", "6.17"])
        XCTAssertEqual(try needs(.ptReclaim, KernelVersion(6, 16)), ["6.13", "6.15"])
        XCTAssertEqual(try needs(.ptReclaim, KernelVersion(6, 14)), ["6.13"])
        XCTAssertEqual(try needs(.prePTReclaim, KernelVersion(6, 12)), [])
    }

    func testRandomTracesMatchThisKernelPart1() throws { try sweep(part: 0) }
    func testRandomTracesMatchThisKernelPart2() throws { try sweep(part: 1) }
    func testRandomTracesMatchThisKernelPart3() throws { try sweep(part: 2) }
    func testRandomTracesMatchThisKernelPart4() throws { try sweep(part: 3) }

    /// Seeds part * seeds / parts + 1 through (part + 1) * seeds / parts.
    func sweep(part: UInt64) throws {
        if let reason = LiveKernel.unavailableReason { throw XCTSkip("no live kernel to compare with: \(reason)") }
        let first = part * Self.seeds / Self.parts + 1, last = (part + 1) * Self.seeds / Self.parts
        guard first <= last else { return }
        let profile = CompareProfile.runningKernel()
        let kernel = runningKernel ?? profile.modelKernel(asked: nil, comparingLive: false)
        var parameters = PageAllocator.Parameters()
        parameters.nodeBudgetPages = RandomTrace.modelNodeBudgetPages
        let model = try ModelTarget(profile: profile, kernel: kernel, parameters: parameters)
        var notComparable = 0
        // Batches of traces share a runner: one rcu_barrier before the
        // kernel's passes and one after, not two a trace.
        for batch in stride(from: first, through: last, by: Int(RandomTrace.batch)).map({ $0...min($0 + RandomTrace.batch - 1, last) }) {
            let parsed = try batch.map { try RandomTrace.parsed(seed: $0, ops: 30, profile: profile, kernel: kernel) }
            let texts = parsed.map(\.text), traces = parsed.map(\.trace)
            let runs = try runTolerantOfInterference(traces, targets: { [model, try LiveKernel()] }, profile: profile)
            for (seed, (text, run)) in zip(batch, zip(texts, runs)) {
                // The kernel fell back to small pages, or khugepaged (which
                // MADV_HUGEPAGE wakes) collapsed memory on its own: no
                // verdict past that point, but every checkpoint before it
                // still counts.
                if run.notComparable { notComparable += 1 } else {
                    XCTAssertNil(run.error, "seed \(seed): \(String(describing: run.error))\n\(text)")
                }
                if let c = run.checkpoints.first(where: { Set($0.kilobytes).count != 1 }) {
                    // The whole trace, so the failure can be replayed with
                    // `ptlab compare` as it stands.
                    let lines = text.split(separator: "\n")
                    XCTFail("seed \(seed) line \(c.line) (\(lines[c.line - 2])): model/kernel kB \(c.kilobytes)\n\(text)")
                }
                XCTAssertEqual(run.afterCleanup, [0, 0], "seed \(seed)")
            }
        }
        let count = Int(last - first + 1)
        XCTAssertLessThan(notComparable, count / 4 + 1, "seeds \(first)...\(last): too many traces had no verdict to prove anything")
    }
}
