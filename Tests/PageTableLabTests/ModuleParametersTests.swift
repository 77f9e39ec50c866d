import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// Module parameters: one table, strict parsing, errors that name the
/// parameter, and a printout that reproduces the run.
final class ModuleParametersTests: XCTestCase {
    override func tearDown() {
        DeferredBound.bytes = 0
    }

    func testDefaultsComeFromTheTableAndMatchTheLibrary() {
        let p = ModuleParameters()
        XCTAssertEqual(p.all.map(\.name), ModuleParameters.table.map(\.name))
        XCTAssertEqual(Set(ModuleParameters.table.map(\.name)).count, ModuleParameters.table.count, "duplicate names")
        for parameter in ModuleParameters.table {
            XCTAssertEqual(p.value(parameter.name), parameter.defaultValue)
        }
        XCTAssertEqual(p.allocator, PageAllocator.Parameters())
        XCTAssertEqual(p.rcuWorkers, .default)
        XCTAssertEqual(p.bytes("deferred_bound_bytes"), 0)
        XCTAssertEqual(p.commandLine, [])
    }

    func testEveryDefaultParsesBackToItself() throws {
        for parameter in ModuleParameters.table {
            var p = ModuleParameters()
            try p.set("\(parameter.name)=\(parameter.defaultValue)")
            XCTAssertEqual(p.value(parameter.name), parameter.defaultValue, parameter.name)
        }
    }

    func testSettingEachKind() throws {
        let p = try ModuleParameters([
            "node_budget_pages=8192", "chunk_order=4", "page_poison=y",
            "deferred_bound_bytes=64M", "rcu_workers=per-cpu",
        ])
        XCTAssertEqual(p.int("node_budget_pages"), 8192)
        XCTAssertEqual(p.int("chunk_order"), 4)
        XCTAssertTrue(p.bool("page_poison"))
        XCTAssertEqual(p.bytes("deferred_bound_bytes"), 64 << 20)
        XCTAssertEqual(p.rcuWorkers, .perCPU)
        XCTAssertEqual(p.allocator.nodeBudgetPages, 8192)
        XCTAssertEqual(p.allocator.chunkOrder, 4)
        XCTAssertTrue(p.allocator.poison)
    }

    func testBoolsAndByteSuffixesAcceptTheKernelsSpellings() throws {
        for (text, value) in [("y", true), ("Y", true), ("1", true), ("on", true), ("true", true),
                              ("n", false), ("N", false), ("0", false), ("off", false), ("false", false)] {
            XCTAssertEqual(try ModuleParameters(["page_poison=\(text)"]).bool("page_poison"), value, text)
        }
        for (text, value) in [("4096", UInt64(4096)), ("4K", 4096), ("4k", 4096), ("2M", 2 << 20), ("1G", 1 << 30)] {
            XCTAssertEqual(try ModuleParameters(["deferred_bound_bytes=\(text)"]).bytes("deferred_bound_bytes"), value, text)
        }
    }

    func testLaterAssignmentsWin() throws {
        let p = try ModuleParameters(["chunk_order=4", "chunk_order=6"])
        XCTAssertEqual(p.int("chunk_order"), 6)
    }

    func testUnknownParameterIsNamed() {
        XCTAssertThrowsError(try ModuleParameters(["nr_walkerz=8"])) {
            guard case .unknown(let name, let known) = $0 as? ModuleParameterError else { return XCTFail("\($0)") }
            XCTAssertEqual(name, "nr_walkerz")
            XCTAssertEqual(known, ModuleParameters.table.map(\.name))
            XCTAssertTrue("\($0)".contains("'nr_walkerz'"), "\($0)")
        }
    }

    func testBadValuesAreNamedWithWhatIsExpected() {
        let bad = [
            ("chunk_order", "19"), ("chunk_order", "-1"), ("chunk_order", "four"),
            ("node_budget_pages", "0"), ("node_budget_pages", ""),
            ("page_poison", "maybe"), ("rcu_workers", "all"),
            ("deferred_bound_bytes", "12Q"), ("deferred_bound_bytes", "-5"), ("deferred_bound_bytes", "99999999999G"),
        ]
        for (name, value) in bad {
            XCTAssertThrowsError(try ModuleParameters(["\(name)=\(value)"]), "\(name)=\(value)") {
                guard case .badValue(let n, let v, let expected) = $0 as? ModuleParameterError else { return XCTFail("\($0)") }
                XCTAssertEqual(n, name)
                XCTAssertEqual(v, value)
                XCTAssertEqual(expected, ModuleParameters.parameter(named: name)!.typeDescription)
                XCTAssertTrue("\($0)".contains(name), "\($0)")
            }
        }
    }

    /// Values each in range that the allocator would refuse together are
    /// refused when parsed, naming both, not when a command loads it.
    func testTheAllocatorsRuleBetweenItsParametersIsCheckedWhenParsed() throws {
        for assignments in [["node_budget_pages=1023"], ["chunk_order=18"], ["chunk_order=12", "node_budget_pages=6144"]] {
            XCTAssertThrowsError(try ModuleParameters(assignments), "\(assignments)") {
                guard case .inconsistent(let reason)? = $0 as? ModuleParameterError else { return XCTFail("\($0)") }
                XCTAssertTrue(reason.contains("node_budget_pages") && reason.contains("2^chunk_order"), reason)
            }
        }
        XCTAssertEqual(try ModuleParameters(["chunk_order=12", "node_budget_pages=8192"]).allocator.nodeBudgetPages, 8192)
    }

    func testMalformedAssignmentsAreErrors() {
        for text in ["chunk_order", "=4", ""] {
            XCTAssertThrowsError(try ModuleParameters([text])) {
                XCTAssertEqual($0 as? ModuleParameterError, .malformed(text))
            }
        }
    }

    /// The printout of a run is enough to repeat it.
    func testCommandLineReproducesTheValues() throws {
        let p = try ModuleParameters(["page_poison=y", "deferred_bound_bytes=1M", "chunk_order=10"])
        XCTAssertEqual(p.commandLine, ["--param page_poison=y", "--param deferred_bound_bytes=1048576"])
        let again = try ModuleParameters(p.commandLine.map { String($0.dropFirst("--param ".count)) })
        XCTAssertEqual(again, p)
    }

    func testApplyRCUSetsTheBound() throws {
        try ModuleParameters(["deferred_bound_bytes=2M"]).applyRCU()
        XCTAssertEqual(DeferredBound.bytes, 2 << 20)
        try ModuleParameters().applyRCU()
        XCTAssertEqual(DeferredBound.bytes, 0)
    }

    func testApplyRCUSetsTheFreeLatencySampling() throws {
        try ModuleParameters(["free_latency_sample_shift=3"]).applyRCU()
        XCTAssertEqual(FreeLatency.sampleEvery, 8)
        try ModuleParameters().applyRCU()
        XCTAssertEqual(FreeLatency.sampleShift, FreeLatency.defaultSampleShift)
        XCTAssertThrowsError(try ModuleParameters(["free_latency_sample_shift=17"])) { error in
            XCTAssertTrue("\(error)".contains("free_latency_sample_shift"), "\(error)")
        }
    }
}
