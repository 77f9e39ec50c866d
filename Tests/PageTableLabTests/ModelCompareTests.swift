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
            guard trace.skipReason(under: profile, kernel: nil) == nil else {
                XCTAssertNotNil(run.skipped, "\(name) ran under \(profile.rawValue), which its profiles line leaves out")
                XCTAssertFalse(run.matches, name)
                continue
            }
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

    /// A trace the model runs out of memory in stops at that line with an
    /// error naming the parameter to raise; and the tables its failed touch
    /// did allocate are counted, so the cleanup brings the model's growth
    /// back to zero, not below it.
    func testATraceOutOfMemoryStopsThereAndCleansUpToZero() throws {
        try withLab(budgetPages: 1024) { _ in
            let model = try ModelTarget(profile: .ptReclaim, thp: Self.tracesTHP)
            let trace = try TraceParser.parse("mmap 0x10000000000 64M\ntouch 0x10000000000 64M 4K\nexpect\n", file: "oom.trace")
            let run = CompareRunner(targets: [model], profile: .ptReclaim).run(trace)
            let error = try XCTUnwrap(run.error)
            XCTAssertEqual(error.line, 2)
            XCTAssertTrue(error.message.contains("out of memory") && error.message.contains("node_budget_pages"), error.message)
            XCTAssertFalse(error.message.contains("out of memory: out of memory"), error.message)
            XCTAssertEqual(run.afterCleanup, [0], "the model's growth after cleanup")
        }
    }

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

/// The runner's passes: every trace on the live kernel first, in a process
/// whose model has settled, then the model, which settles once more at the
/// end — never between a model op and a kernel op.
final class ComparePassOrderTests: XCTestCase {
    final class Log: @unchecked Sendable { var events: [String] = [] }

    /// A target that only logs what it is asked to do.
    class Logging: TraceTarget {
        let name: String
        let log: Log
        init(_ name: String, _ log: Log) { self.name = name; self.log = log }
        func mmap(address: UInt64, length: UInt64, shared: Bool) throws { log.events.append("\(name) mmap") }
        func touch(address: UInt64, length: UInt64, stride: UInt64) throws { log.events.append("\(name) touch") }
        func madviseDontneed(address: UInt64, length: UInt64) throws {}
        func munmap(address: UInt64, length: UInt64) throws { log.events.append("\(name) munmap") }
        func madviseHugepage(address: UInt64, length: UInt64) throws {}
        func madviseCollapse(address: UInt64, length: UInt64) throws {}
        func mremap(from old: UInt64, length: UInt64, to new: UInt64) throws {}
        func mprotect(address: UInt64, length: UInt64, protection: Protection) throws {}
        func vmPTEKilobytes() throws -> Int { 0 }
        func hugePMDs(in regions: [Range<UInt64>]) throws -> Int { 0 }
        func thpEvents() throws -> THPEventCount { THPEventCount(collapses: 0, fallbacks: 0) }
    }

    final class Kernel: Logging, MeasuresThisProcess {
        var lastOpChangeKilobytes: Int { 0 }
    }

    final class Model: Logging, TraceSettling {
        func settle() throws { log.events.append("model settle") }
    }

    func testKernelPassesRunFirstAndTheModelSettlesAroundThem() throws {
        let log = Log()
        let traces = try (1...2).map { i in
            try TraceParser.parse("mmap 0x10000000000 4K\ntouch 0x10000000000 4K 4K\nmunmap 0x10000000000 4K\nexpect", file: "t\(i).trace")
        }
        let runs = CompareRunner(targets: [Model("model", log), Kernel("kernel", log)], profile: .ptReclaim).run(traces)
        XCTAssertTrue(runs.allSatisfy(\.matches))
        XCTAssertEqual(runs[0].targetNames, ["model", "kernel"], "results keep the targets' order")
        let kernelOps = ["kernel mmap", "kernel touch", "kernel munmap"]
        let modelOps = ["model mmap", "model touch", "model munmap"]
        XCTAssertEqual(log.events, ["model settle"] + kernelOps + kernelOps + modelOps + modelOps + ["model settle"])
        XCTAssertEqual(runs[0].seconds.count, 2)
    }
}

/// TraceReplay times a trace's ops alone and leaves nothing mapped.
final class TraceReplayTests: XCTestCase {
    func testChurnReplaysOnTheModelAndTheKernelAndLeavesNothing() throws {
        let trace = TraceReplay.churn(cycles: 4)
        XCTAssertEqual(trace.opCount, 12)
        let model = try ModelTarget(profile: .runningKernel())
        XCTAssertGreaterThan(try TraceReplay.seconds(trace, on: model), 0)
        XCTAssertEqual(model.mm.vmPTEKilobytes, 0, "the churn's last munmap took its tables")
        if LiveKernel.unavailableReason == nil {
            let kernel = try LiveKernel(measuring: false)
            XCTAssertGreaterThan(try TraceReplay.seconds(trace, on: kernel), 0)
            XCTAssertFalse(try ProcessMaps.current().mappings.contains { $0.range.overlaps(0x1000_0000_0000..<0x1000_0020_0000) })
        }
    }
}

/// clear_page on an anonymous fault: kept for concurrent runs (it is part
/// of the fault's race window), off for a one-thread replay.
final class ClearsFaultedPagesTests: XCTestCase {
    func testAFaultClearsItsPageUnlessTheProfileSaysNot() throws {
        try withLab { allocator in
            for clears in [true, false] {
                var profile = MMProfile()
                profile.clearsFaultedPages = clears
                let mm = try MM(allocator: allocator, profile: profile)
                try mm.mmap(address: tib, length: 8192)
                try mm.fault(at: tib + 4096)    // the tables, so the next fault allocates its page only
                // A dirty page on this thread's list is the next one a fault gets.
                let dirty = try allocator.alloc()
                allocator.address(of: dirty).storeBytes(of: 0xAB, toByteOffset: 100, as: UInt8.self)
                try allocator.free(dirty)
                let page = try mm.fault(at: tib)
                XCTAssertEqual(page.load(fromByteOffset: 100, as: UInt8.self) == 0, clears)
                try mm.munmap(address: tib, length: 8192)
                mm.exit()
            }
        }
        let replay = try ModelTarget(profile: .runningKernel()).mm.profile
        XCTAssertFalse(replay.clearsFaultedPages)
        XCTAssertFalse(replay.perVMALock, "one thread: nothing for the per-VMA locks to decide")
    }
}

/// Huge PMDs the targets disagree on: a mismatch, unless the kernel's count
/// could not see some (NUMA balancing's PROT_NONE huge PMDs, which smaps
/// missed on Debian's 6.1 in the two-node VM): then no verdict.
final class HugePMDVerdictTests: XCTestCase {
    final class Side: TraceTarget {
        let name: String
        let huge: Int
        let hintedPerReading: Int
        private var readings = 0

        init(_ name: String, huge: Int, hintedPerReading: Int = 0) {
            self.name = name
            self.huge = huge
            self.hintedPerReading = hintedPerReading
        }

        func mmap(address: UInt64, length: UInt64, shared: Bool) throws {}
        func touch(address: UInt64, length: UInt64, stride: UInt64) throws {}
        func madviseDontneed(address: UInt64, length: UInt64) throws {}
        func munmap(address: UInt64, length: UInt64) throws {}
        func madviseHugepage(address: UInt64, length: UInt64) throws {}
        func madviseCollapse(address: UInt64, length: UInt64) throws {}
        func mremap(from old: UInt64, length: UInt64, to new: UInt64) throws {}
        func mprotect(address: UInt64, length: UInt64, protection: Protection) throws {}
        func vmPTEKilobytes() throws -> Int { 0 }
        func hugePMDs(in regions: [Range<UInt64>]) throws -> Int { huge }
        /// The count rises by `hintedPerReading` from one reading to the next.
        func thpEvents() throws -> THPEventCount {
            defer { readings += 1 }
            return THPEventCount(collapses: 0, fallbacks: 0, unseenNUMAHinted: readings * hintedPerReading)
        }
    }

    func testHugePMDsHiddenByNUMAHintingGiveNoVerdict() throws {
        let trace = try TraceParser.parse("mmap 0x10000000000 2M\nhugepage 0x10000000000 2M\nexpect", file: "t.trace")
        let hidden = CompareRunner(targets: [Side("model", huge: 1), Side("kernel", huge: 0, hintedPerReading: 1)],
                                   profile: .ptReclaim).run(trace)
        XCTAssertTrue(hidden.notComparable, "\(String(describing: hidden.error))")
        XCTAssertTrue(hidden.error?.message.contains("NUMA balancing") == true, "\(String(describing: hidden.error))")
        // Hidden huge PMDs make the kernel's count short, never long.
        let long = CompareRunner(targets: [Side("model", huge: 0), Side("kernel", huge: 1, hintedPerReading: 1)],
                                 profile: .ptReclaim).run(trace)
        XCTAssertFalse(long.notComparable, "\(String(describing: long.error))")
        XCTAssertEqual(long.error?.message, "huge PMDs differ: model maps 0, kernel maps 1")
        let plain = CompareRunner(targets: [Side("model", huge: 1), Side("kernel", huge: 0)], profile: .ptReclaim).run(trace)
        XCTAssertFalse(plain.notComparable)
        XCTAssertEqual(plain.error?.message, "huge PMDs differ: model maps 1, kernel maps 0")
    }
}
