import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// The model against every shipped trace: alone under both profiles (the
/// traces state each profile's value, measured on 6.18 and on 6.1), and side
/// by side with the kernel this test runs on.
final class ModelCompareTests: XCTestCase {
    /// The THP settings the shipped traces' values assume (VM_HUGEPAGE
    /// ranges fault huge pages; shmem faults do not), whatever this host has.
    static let tracesTHP = THPSettings(enabled: .madvise, shmemEnabled: .never)

    private func assertModelMeetsTraces(_ profile: CompareProfile) throws {
        let model = try ModelTarget(profile: profile, thp: Self.tracesTHP)
        for url in try TraceParserTests.shippedTraces() {
            let trace = try TraceParser.parse(contentsOf: url.path)
            let run = CompareRunner(targets: [model], profile: profile).run(trace)
            let name = url.lastPathComponent
            XCTAssertNil(run.error, "\(name): \(String(describing: run.error))")
            for checkpoint in run.checkpoints {
                XCTAssertEqual(checkpoint.kilobytes, [checkpoint.expected ?? -1], "\(name):\(checkpoint.line) [\(profile.rawValue)]")
            }
            XCTAssertEqual(run.afterCleanup, [0], "\(name): the model kept tables after cleanup")
            XCTAssertTrue(run.matches, "\(name) [\(profile.rawValue)]")
        }
    }

    func testModelMeetsEveryTraceUnderPTReclaim() throws { try assertModelMeetsTraces(.ptReclaim) }
    func testModelMeetsEveryTraceBefore614() throws { try assertModelMeetsTraces(.prePTReclaim) }

    func testModelMatchesThisKernelSideBySide() throws {
        if let reason = LiveKernel.unavailableReason { throw XCTSkip("no live kernel to compare with: \(reason)") }
        let profile = CompareProfile.runningKernel()
        let model = try ModelTarget(profile: profile)
        for url in try TraceParserTests.shippedTraces() {
            let trace = try TraceParser.parse(contentsOf: url.path)
            let run = try runTolerantOfInterference(trace, targets: { [model, try LiveKernel()] }, profile: profile)
            XCTAssertNil(run.error, "\(url.lastPathComponent): \(String(describing: run.error))")
            XCTAssertTrue(run.matches, "\(url.lastPathComponent): \(run.checkpoints.map(\.kilobytes))")
        }
    }
}
