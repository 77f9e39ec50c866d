#if canImport(Glibc)
import Glibc
#endif
import Foundation
import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// The comparison's kernel side, against the kernel this test runs on: the
/// shipped traces' stated values must be what this kernel really does.
final class LiveKernelCompareTests: XCTestCase {
    override func setUpWithError() throws {
        if let reason = LiveKernel.unavailableReason {
            throw XCTSkip("no live kernel to compare with: \(reason)")
        }
    }

    private func kernelRun(_ text: String, targets: Int = 1) throws -> TraceRun {
        let trace = try TraceParser.parse(text, file: "live.trace")
        return try runTolerantOfInterference(trace, targets: { try (0..<targets).map { _ in try LiveKernel() } },
                                             profile: .runningKernel())
    }

    /// Whether /proc/self/maps shows anything in `range`.
    private func mapped(_ range: Range<UInt64>) throws -> Bool {
        try ProcessMaps.current().mappings.contains { $0.range.overlaps(range) }
    }

    func testShippedTracesMatchThisKernel() throws {
        let profile = CompareProfile.runningKernel()
        let measuredOn = profile.modelKernel(asked: nil, comparingLive: false)
        guard runningKernel == measuredOn else {
            throw XCTSkip("the traces' values were measured on \(measuredOn) for \(profile.rawValue), and this kernel is \(runningKernel.map(String.init(describing:)) ?? "unknown"): DifferentialTraceTests and `ptlab compare` hold it to the model instead")
        }
        for url in try TraceParserTests.shippedTraces() {
            let trace = try TraceParser.parse(contentsOf: url.path)
            let name = url.lastPathComponent
            // This kernel without PT_RECLAIM runs the pre-6.14 traces.
            guard trace.skipReason(under: profile, kernel: runningKernel) == nil else { continue }
            let run = try runTolerantOfInterference(trace, targets: { [try LiveKernel()] }, profile: profile)
            XCTAssertNil(run.error, "\(run.error!)")
            XCTAssertEqual(run.checkpoints.count, trace.checkpoints.count, name)
            for checkpoint in run.checkpoints {
                XCTAssertNotNil(checkpoint.expected, "\(name):\(checkpoint.line) states no value")
                XCTAssertEqual(checkpoint.kilobytes, [checkpoint.expected ?? -1], "\(name):\(checkpoint.line)")
            }
            XCTAssertEqual(run.afterCleanup, [0], "\(name): tables left after cleanup")
            XCTAssertTrue(run.matches, name)
        }
    }

    /// KERNEL-NOTES §4, stated here rather than read from a trace file, so
    /// that a wrong file and a wrong runner cannot agree by accident.
    func testKernelNotesExample() throws {
        let run = try kernelRun("""
            mmap 0x10000000000 1G
            touch 0x10000000000 1G 2M
            expect
            dontneed 0x10000000000 512M
            expect
            munmap 0x10030000000 4K
            expect
            munmap 0x10000000000 1G
            expect
            """)
        XCTAssertNil(run.error)
        let reclaim = CompareProfile.runningKernel() == .ptReclaim
        XCTAssertEqual(run.checkpoints.map(\.kilobytes), [[2056], [reclaim ? 1032 : 2056], [reclaim ? 1032 : 2056], [0]])
        XCTAssertEqual(run.checkpoints.map(\.line), [3, 5, 7, 9])
    }

    /// The default profile must describe what this kernel does on DONTNEED.
    func testDetectedProfileMatchesTheKernelsBehaviour() throws {
        guard let hasPTReclaim = CompareProfile.kernelHasPTReclaim() else {
            throw XCTSkip("the kernel config is unreadable: the profile cannot be detected here")
        }
        let run = try kernelRun("mmap 0x10000000000 2M\ntouch 0x10000000000 2M 4K\ndontneed 0x10000000000 2M\nexpect")
        XCTAssertNil(run.error)
        XCTAssertEqual(run.checkpoints.first?.kilobytes, [hasPTReclaim ? 8 : 12])
        XCTAssertEqual(CompareProfile.runningKernel(), hasPTReclaim ? .ptReclaim : .prePTReclaim)
    }

    func testAStatedValueTheKernelMissesIsAMismatch() throws {
        let run = try kernelRun("mmap 0x10000000000 2M\ntouch 0x10000000000 4K 4K\nexpect 16\nexpect 12")
        XCTAssertNil(run.error)
        XCTAssertEqual(run.checkpoints.map(\.matches), [false, true])
        XCTAssertFalse(run.matches)
    }

    func testLeftoverMappingsAreUnmapped() throws {
        let region = UInt64(0x100_0000_0000)..<0x180_0000_0000
        let run = try kernelRun("mmap 0x10000000000 4M\nmmap 0x10040000000 4K\ntouch 0x10000000000 4M 4K\ntouch 0x10040000000 4K 1\nmunmap 0x10000100000 4K\nexpect 24")
        XCTAssertTrue(run.matches, "\(run.checkpoints) \(String(describing: run.error))")
        XCTAssertEqual(run.afterCleanup, [0])
        XCTAssertFalse(try mapped(region))
    }

    /// A mapping of the process in the trace's 512 GiB region stops the trace
    /// before any op runs, naming the op's line.
    func testForeignMappingInTheRegionIsRefusedBeforeAnythingRuns() throws {
        let foreign = UInt64(0x300_0000_0000)
        let page = Glibc.mmap(UnsafeMutableRawPointer(bitPattern: UInt(foreign)), 4096, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS | LiveKernel.mapFixedNoreplace, -1, 0)
        XCTAssertEqual(page, UnsafeMutableRawPointer(bitPattern: UInt(foreign)))
        defer { Glibc.munmap(page, 4096) }

        let run = try kernelRun("mmap 0x10000000000 4K\ntouch 0x10000000000 4K 4K\nexpect\nmmap 0x37fc0000000 4K\nexpect")
        let error = try XCTUnwrap(run.error)
        XCTAssertEqual(error.line, 4)
        XCTAssertTrue(error.message.contains("512 GiB region 0x30000000000-0x38000000000"), error.message)
        XCTAssertTrue(error.message.contains("30000000000-30000001000"), error.message)
        XCTAssertTrue(run.checkpoints.isEmpty)
        XCTAssertFalse(try mapped(0x100_0000_0000..<0x100_0000_1000), "line 1 ran although line 4 was refused")
    }

    /// Huge PMDs counted from PAGEMAP_SCAN agree with smaps', on memory
    /// MADV_COLLAPSE made huge (where the kernel could: both must then see
    /// it) and on small pages beside it.
    func testHugePMDCountsAgreeWithSmaps() throws {
        // Not measuring: this is about counting, and a THP fault's deposit
        // is more than the quiet check allows a touch.
        let kernel = try LiveKernel(measuring: false)
        let base: UInt64 = 0x100_0000_0000
        try kernel.mmap(address: base, length: 4 << 20, shared: false)
        defer { try? kernel.munmap(address: base, length: 4 << 20) }
        try kernel.madviseHugepage(address: base, length: 2 << 20)
        try kernel.touch(address: base, length: 4 << 20, stride: 4096)
        let collapsed = (try? kernel.madviseCollapse(address: base, length: 2 << 20)) != nil
        let region = [base..<base + (512 << 30)]
        let counted = try kernel.hugePMDs(in: region)
        XCTAssertEqual(counted, try kernel.hugePMDsFromSmaps(in: region))
        if collapsed { XCTAssertEqual(counted, 1) }
    }

    /// A MAP_FIXED_NOREPLACE collision names the address and line, stops the
    /// trace, and what was mapped is cleaned up. The collision is made by a
    /// kernel target that has another mapping appear at the address just
    /// before its mmap, as another thread's would after the preflight.
    func testCollisionNamesTheAddressAndStopsTheTrace() throws {
        let trace = try TraceParser.parse("mmap 0x10000000000 1M\ntouch 0x10000000000 1M 4K\nexpect", file: "live.trace")
        let squatted = try SquattedKernel()
        let run = CompareRunner(targets: [squatted], profile: .runningKernel()).run(trace)
        squatted.leave()
        let error = try XCTUnwrap(run.error)
        XCTAssertEqual(error.line, 1)
        XCTAssertTrue(error.message.contains("kernel: mmap at 0x10000000000"), error.message)
        XCTAssertTrue(error.message.contains("EEXIST"), error.message)
        XCTAssertTrue(run.checkpoints.isEmpty)
        XCTAssertFalse(run.matches)
        XCTAssertFalse(try mapped(0x100_0000_0000..<0x100_0010_0000))

        let kernel = try LiveKernel()
        try kernel.mmap(address: 0x100_0000_0000, length: 4096, shared: false)
        defer { try? kernel.munmap(address: 0x100_0000_0000, length: 4096) }
        XCTAssertThrowsError(try kernel.mmap(address: 0x100_0000_0000, length: 8192, shared: false)) { error in
            XCTAssertEqual(error as? LiveKernelError, .collision(address: 0x100_0000_0000, length: 8192))
        }
    }

    /// Model and kernel side by side: checkpoints carry both values in
    /// target order, leftovers are unmapped on both, and a model that does
    /// not return to zero after cleanup fails the trace although every
    /// checkpoint matched.
    func testTwoSidedRunCleansUpBothAndCatchesALeakingModel() throws {
        let model = LeakingModel()
        let trace = try TraceParser.parse("mmap 0x10000000000 4M\ntouch 0x10000000000 4K 4K\nexpect 12\nmunmap 0x10000100000 4K\nexpect", file: "two.trace")
        let run = CompareRunner(targets: [model, try LiveKernel()], profile: .runningKernel()).run(trace)
        XCTAssertNil(run.error)
        XCTAssertEqual(run.targetNames, ["model", "kernel"])
        XCTAssertEqual(run.checkpoints.map(\.kilobytes), [[12, 12], [12, 12]])
        XCTAssertTrue(run.checkpoints.allSatisfy(\.matches))
        XCTAssertEqual(model.unmapped, [0x100_0010_0000..<0x100_0010_1000, 0x100_0000_0000..<0x100_0010_0000, 0x100_0010_1000..<0x100_0040_0000])
        XCTAssertEqual(run.afterCleanup, [12, 0])
        XCTAssertFalse(run.matches)
        XCTAssertFalse(try mapped(0x100_0000_0000..<0x100_0040_0000))

        let report = CompareReport(profile: .ptReclaim, runs: [run])
        XCTAssertEqual(report.traces[0].checkpoints.map { [$0.modelKB, $0.kernelKB] }, [[12, 12], [12, 12]])
        XCTAssertEqual(report.traces[0].afterCleanup, TraceReport.Sides(modelKB: 12, kernelKB: 0))
        XCTAssertFalse(report.matches)
    }

    /// `--json` keys: a side that did not run is null, not missing.
    func testJSONReportKeepsTheKeys() throws {
        let run = try kernelRun("mmap 0x10000000000 4K\ntouch 0x10000000000 4K 4K\nexpect 12")
        let data = try JSONEncoder().encode(CompareReport(profile: .ptReclaim, runs: [run]))
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
        let trace = try XCTUnwrap((object["traces"] as? [[String: Any]])?.first)
        XCTAssertEqual(trace["file"] as? String, "live.trace")
        XCTAssertEqual(trace["match"] as? Bool, true)
        let checkpoint = try XCTUnwrap((trace["checkpoints"] as? [[String: Any]])?.first)
        XCTAssertEqual(checkpoint["line"] as? Int, 3)
        XCTAssertEqual(checkpoint["kernel_kb"] as? Int, 12)
        XCTAssertTrue(checkpoint["model_kb"] is NSNull)
        XCTAssertEqual(checkpoint["expected_kb"] as? Int, 12)
    }

    /// The bound of the noise check: the tables whose spans meet a range.
    func testTableBoundOfARange() {
        XCTAssertEqual(LiveKernel.tableKilobytes(0x100_0000_0000..<0x100_4000_0000), 2056)
        XCTAssertEqual(LiveKernel.tableKilobytes(0x100_0000_0000..<0x100_0000_1000), 12)
        XCTAssertEqual(LiveKernel.tableKilobytes(0x17f_ffe0_0000..<0x180_0020_0000), 24)
        XCTAssertEqual(LiveKernel.tableKilobytes(0x100_001f_f000..<0x100_0020_1000, levels: [.pte]), 8)
    }

    func testVmPTEParsing() throws {
        func parse(_ text: String) throws -> Int {
            try Array(text.utf8).withUnsafeBytes { try VmPTEReader.parse($0) }
        }
        XCTAssertEqual(try parse("Name:\tx\nVmLib:\t 1 kB\nVmPTE:\t      48 kB\nVmSwap:\t0 kB\n"), 48)
        XCTAssertEqual(try parse("VmPTE:\t2056 kB"), 2056)
        XCTAssertThrowsError(try parse("Name:\tVmPTE:\t4 kB\n"))
        XCTAssertEqual(try parse("Name:\tVmPTE:\t4 kB\nVmPTE:\t8 kB\n"), 8, "only at the start of a line")
        XCTAssertThrowsError(try parse("VmPTE:\t kB\n"))
        XCTAssertThrowsError(try parse(""))
        XCTAssertGreaterThan(try VmPTEReader().kilobytes(), 0)
    }

    /// /proc/vmstat's THP and NUMA-hinting counters, one pass per first
    /// byte: a key that another one starts with is told apart by the space
    /// after it.
    func testTHPCounterParsing() {
        let text = "nr_free_pages 10\nnuma_huge_pte_updates 7\nthp_collapse_alloc_failed 3\nthp_fault_alloc 9\nthp_collapse_alloc 5\nthp_fault_fallback 2\n"
        let keys = THPVMStat.keys.map { Array(($0 + " ").utf8) }
        XCTAssertEqual(Array(text.utf8).withUnsafeBytes { ProcReader.parse($0, keys: keys) }, [2, nil, 5, 3, 7])
        XCTAssertEqual(Array("".utf8).withUnsafeBytes { ProcReader.parse($0, keys: keys) }, [nil, nil, nil, nil, nil])
        let now = THPVMStat.read(ProcReader("/proc/vmstat"))
        XCTAssertNotNil(now)
    }
}

/// A model side that allocates 12 kB on a write and never frees: enough to
/// see the runner compare, clean up and judge.
private final class LeakingModel: TraceTarget {
    let name = "model"
    private var kilobytes = 0
    private(set) var unmapped: [Range<UInt64>] = []

    func mmap(address: UInt64, length: UInt64, shared: Bool) throws {}
    func touch(address: UInt64, length: UInt64, stride: UInt64) throws { kilobytes = 12 }
    func madviseDontneed(address: UInt64, length: UInt64) throws {}
    func munmap(address: UInt64, length: UInt64) throws { unmapped.append(address..<address + length) }
    func madviseHugepage(address: UInt64, length: UInt64) throws {}
    func madviseCollapse(address: UInt64, length: UInt64) throws {}
    func mremap(from old: UInt64, length: UInt64, to new: UInt64) throws {}
    func mprotect(address: UInt64, length: UInt64, protection: Protection) throws {}
    func hugePMDs(in regions: [Range<UInt64>]) throws -> Int { 0 }
    func thpEvents() throws -> THPEventCount { THPEventCount(collapses: 0, fallbacks: 0) }
    func vmPTEKilobytes() throws -> Int { kilobytes }
}

/// The live kernel, with a page of someone else's mapped where each mmap of
/// the trace goes, just before it: a collision on cue.
private final class SquattedKernel: TraceTarget, MeasuresThisProcess {
    let name = "kernel"
    private let kernel: LiveKernel
    private var squats: [UnsafeMutableRawPointer] = []

    init() throws { kernel = try LiveKernel() }

    /// Unmap the squatters' pages.
    func leave() {
        for page in squats { Glibc.munmap(page, 4096) }
        squats = []
    }

    var lastOpChangeKilobytes: Int { kernel.lastOpChangeKilobytes }

    func mmap(address: UInt64, length: UInt64, shared: Bool) throws {
        let page = Glibc.mmap(UnsafeMutableRawPointer(bitPattern: UInt(address)), 4096, PROT_READ,
                              MAP_PRIVATE | MAP_ANONYMOUS | LiveKernel.mapFixedNoreplace, -1, 0)
        if let page, page != MAP_FAILED { squats.append(page) }
        try kernel.mmap(address: address, length: length, shared: shared)
    }
    func touch(address: UInt64, length: UInt64, stride: UInt64) throws { try kernel.touch(address: address, length: length, stride: stride) }
    func madviseDontneed(address: UInt64, length: UInt64) throws { try kernel.madviseDontneed(address: address, length: length) }
    func munmap(address: UInt64, length: UInt64) throws { try kernel.munmap(address: address, length: length) }
    func madviseHugepage(address: UInt64, length: UInt64) throws { try kernel.madviseHugepage(address: address, length: length) }
    func madviseCollapse(address: UInt64, length: UInt64) throws { try kernel.madviseCollapse(address: address, length: length) }
    func mremap(from old: UInt64, length: UInt64, to new: UInt64) throws { try kernel.mremap(from: old, length: length, to: new) }
    func mprotect(address: UInt64, length: UInt64, protection: Protection) throws {
        try kernel.mprotect(address: address, length: length, protection: protection)
    }
    func vmPTEKilobytes() throws -> Int { try kernel.vmPTEKilobytes() }
    func hugePMDs(in regions: [Range<UInt64>]) throws -> Int { try kernel.hugePMDs(in: regions) }
    func thpEvents() throws -> THPEventCount { try kernel.thpEvents() }
}
