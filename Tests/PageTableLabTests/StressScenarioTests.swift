import CSupport
import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// Every scenario against real threads: safe modes must stay at zero with
/// no leaks over a fixed amount of work; unsafe modes must detect, which is
/// what proves each detector can fire. Unsafe runs stop at their first
/// detection; the duration is only a bound so a broken detector fails
/// instead of hanging.
final class StressScenarioTests: XCTestCase {
    private func run(_ scenario: String, _ mode: String, ops: Int? = nil, path: String? = nil,
                     tlbFlush: TLBFlushKind = .ipi, updaters: Int? = nil, thp: THPSettings = THPSettings()) throws -> StressResult {
        try runStressForTest(scenario, mode, ops: ops) { options, allocator in
            var options = options
            options.path = path
            options.tlbFlush = tlbFlush
            options.updaters = updaters
            options.thp = thp
            return try StressRunner(options).run(allocator: allocator)
        }
    }

    private func assertSafe(_ scenario: String, _ mode: String, ops: Int = 150, path: String? = nil,
                            tlbFlush: TLBFlushKind = .ipi, updaters: Int? = nil) throws {
        let r = try run(scenario, mode, ops: ops, path: path, tlbFlush: tlbFlush, updaters: updaters)
        XCTAssertEqual(r.path, path ?? Scenario.named(scenario)?.path)
        XCTAssertNil(r.expectedDetector, "\(scenario)/\(mode) with tlb_flush=\(tlbFlush.rawValue) is not a safe mode")
        XCTAssertEqual(r.uafDetected, 0, "\(scenario)/\(mode): \(r.detections)")
        XCTAssertEqual(r.leakedPages, 0)
        XCTAssertGreaterThan(r.walks, 0)
        XCTAssertGreaterThan(r.tablesFreed, 0)
        XCTAssertEqual(r.vmPTEBytes, r.tableBytesHeld, "VmPTE against the tables held")
        XCTAssertTrue(r.integrity.isClean, "\(r.integrity.problems)")
        XCTAssertTrue(r.pass, r.verdict)
    }

    /// An unsafe mode must be caught by its own detector, the walker the
    /// bug is about: another walker firing proves nothing about this one.
    private func assertDetects(_ scenario: String, _ mode: String, by detector: Detector, path: String? = nil,
                               tlbFlush: TLBFlushKind = .ipi) throws {
        let r = try run(scenario, mode, path: path, tlbFlush: tlbFlush)
        XCTAssertEqual(r.expectedDetector, detector, "\(scenario)/\(mode) names the wrong detector")
        XCTAssertGreaterThan(r.detections[detector], 0,
                             "\(scenario)/\(mode) ran \(r.ops) ops, \(r.walks) walks and \(detector.rawValue) saw nothing: \(r.detections)")
        if !detector.losesPages { XCTAssertEqual(r.leakedPages, 0) }
        XCTAssertTrue(r.pass, r.verdict)
    }

    func testCollapseDeferIsSafe() throws { try assertSafe("collapse", "defer") }
    func testCollapseOfAnonymousMemoryIsSafe() throws {
        try assertSafe("collapse", "kernel", path: "anon")
        XCTAssertThrowsError(try StressRunner({ var o = StressOptions(scenario: "collapse", mode: "immediate"); o.path = "anon"; return o }())) {
            XCTAssertTrue("\($0)".contains("has no mode 'immediate'"), "\($0)")
        }
        XCTAssertThrowsError(try StressRunner({ var o = StressOptions(scenario: "collapse", mode: "defer"); o.path = "file"; return o }())) {
            XCTAssertEqual("\($0)", "scenario 'collapse' has no path 'file' (paths: shmem, shmem-pre-6.6, anon)")
        }
    }
    func testCollapseImmediateIsCaughtByPteOffsetMap() throws { try assertDetects("collapse", "immediate", by: .pteOffsetMap) }
    /// 6.1's retract: the sync IPI suffices under the mmap write lock; the
    /// same free without that lock is caught by the walker holding the
    /// read lock.
    func testCollapseBefore6_6IsSafeUnderItsMMapWriteLocks() throws {
        try assertSafe("collapse", "ipi-sync", path: "shmem-pre-6.6")
    }
    func testCollapseBefore6_6WithoutItsLocksIsCaughtByPteOffsetMap() throws {
        try assertDetects("collapse", "ipi-sync-unlocked", by: .pteOffsetMap, path: "shmem-pre-6.6")
    }
    func testUnmapRCUTableFreeIsSafe() throws { try assertSafe("unmap", "rcu-table-free") }
    func testUnmapImmediateIsCaughtByGUPFast() throws { try assertDetects("unmap", "immediate", by: .gupFast) }
    func testUnmapNoFlushIsCaughtByTheStalePSC() throws { try assertDetects("unmap", "no-flush", by: .stalePSC) }
    func testReclaimRCUTableFreeIsSafe() throws { try assertSafe("reclaim", "rcu-table-free") }
    func testReclaimImmediateIsCaughtByGUPFast() throws { try assertDetects("reclaim", "immediate", by: .gupFast) }
    func testPTLockDtorAtFreeIsSafe() throws { try assertSafe("ptlock", "dtor-at-free") }
    func testPTLockDtorAtUnlinkIsCaughtByTheFreedPTLock() throws {
        try assertDetects("ptlock", "dtor-at-unlink", by: .freedPTLock)
    }
    func testSVAAllLevelsIsSafe() throws { try assertSafe("sva", "all-levels") }
    func testSVALeafOnlyIsCaughtByTheIOMMUsCaches() throws { try assertDetects("sva", "leaf-only", by: .iommuFromCache) }
    func testBatchFailFallbacksAreSafe() throws {
        for fallback in ["ipi-sync", "rcu-one", "synchronize"] { try assertSafe("batch-fail", fallback, ops: 40) }
    }
    /// PT_RECLAIM's frees under the read lock, with the IPI fallback: the
    /// pte_offset_map walker under the read lock is not waited for.
    func testBatchFailIPISyncWithReclaimIsCaughtByPteOffsetMap() throws {
        try assertDetects("batch-fail", "ipi-sync-reclaim", by: .pteOffsetMap)
    }
    /// The fallback without tlb_table_invalidate: the sync IPI waits, but
    /// flushes nothing, so a CPU's paging-structure cache still names the table.
    func testBatchFailNoInvalidateIsCaughtByTheStalePSC() throws {
        try assertDetects("batch-fail", "no-invalidate", by: .stalePSC)
    }

    /// Tables freed right after the flush, with no grace period: the IPI
    /// of the flush waits out GUP-fast (x86 native)...
    func testUnmapNoRCUIsSafeWhenFlushesAreIPIs() throws { try assertSafe("unmap", "no-rcu", tlbFlush: .ipi) }
    /// ... and a flush without IPIs (INVLPGB, paravirt) does not.
    func testUnmapNoRCUIsCaughtByGUPFastWhenFlushesSendNoIPI() throws {
        try assertDetects("unmap", "no-rcu", by: .gupFast, tlbFlush: .noIPI)
    }
    /// Every mode whose kernel did not rely on the flush's IPI keeps its
    /// verdict without one.
    func testSafeModesStaySafeWithoutIPIs() throws {
        for (scenario, mode) in [("unmap", "rcu-table-free"), ("reclaim", "rcu-table-free"), ("collapse", "defer"),
                                 ("batch-fail", "ipi-sync")] {
            try assertSafe(scenario, mode, ops: 40, tlbFlush: .noIPI)
        }
    }

    func testRaceIsSafeWithTheKernelsLocks() throws {
        for (updaters, thp) in [(2, THPSettings()), (3, THPSettings(enabled: .always, shmemEnabled: .always))] {
            let r = try run("race", "kernel", ops: 600, updaters: updaters, thp: thp)
            XCTAssertEqual(r.thpEvents.faultAlloc > 0, thp.enabled == .always, "faults map huge PMDs as thp_enabled says: \(r.thpEvents)")
            XCTAssertEqual(r.updaters, updaters)
            XCTAssertEqual(Set(r.walkerContexts.map(\.context)), Set(LockContext.allCases), "race walks in every lock context")
            XCTAssertEqual(r.uafDetected, 0, "\(r.detections)")
            XCTAssertEqual(r.leakedPages, 0)
            XCTAssertGreaterThan(r.tablesFreed, 0)
            XCTAssertGreaterThan(r.thpEvents.collapseAlloc, 0, "race collapses private and shared memory")
            XCTAssertGreaterThan(r.thpEvents.splitPMD, 0, "race splits huge PMDs (partial DONTNEED, mprotect)")
            XCTAssertGreaterThan(r.vmaLocks.faultVMA, 0, "faults under their VMA's lock alone: \(r.vmaLocks)")
            XCTAssertGreaterThan(r.vmaLocks.dontneedVMA, 0, "DONTNEEDs under their VMA's lock alone: \(r.vmaLocks)")
            XCTAssertGreaterThan(r.vmaLocks.faultBesideWriter, 0, "a fault beside a writer of another VMA: \(r.vmaLocks)")
            XCTAssertGreaterThan(r.vmaLocks.dontneedBesideWriter, 0, "a DONTNEED beside a writer of another VMA: \(r.vmaLocks)")
            let kinds = try XCTUnwrap(r.opKinds)
            XCTAssertEqual(Set(kinds.filter { $0.value.done > 0 }.keys),
                           ["fault", "dontneed", "dontneed_part", "munmap_mmap", "mremap", "mremap_vmas", "mremap_shared", "collapse_anon",
                            "mprotect", "collapse_shmem", "munmap_mmap_shared", "guard"], "every kind of op done at least once: \(kinds)")
            XCTAssertEqual(r.vmPTEBytes, r.tableBytesHeld, "VmPTE against the tables held")
            XCTAssertTrue(r.pass, r.verdict)
        }
    }
    func testRaceWithoutThePMDRecheckIsCaughtByAStaleTableWrite() throws {
        try assertDetects("race", "no-pmd-recheck", by: .staleTableWrite)
    }
    func testRaceWithCollapseCheckingBeforeTheVMALockIsCaughtByAStaleTableWrite() throws {
        try assertDetects("race", "collapse-check-first", by: .staleTableWrite)
    }
    /// A safe verdict needs a table freed and a walk that met a mapped
    /// page: walks that all missed, or a run that freed nothing, tested
    /// nothing the verdict could be about.
    func testASafeRunThatFreedNothingOrMetNoMappedPageDoesNotPass() {
        var mapped = WalkCounters()
        mapped.walks = 100
        mapped.mapped = 1
        let tested = result(tablesFreed: 1, detections: mapped)
        XCTAssertTrue(tested.pass, tested.verdict)
        let freedNothing = result(tablesFreed: 0, detections: mapped)
        XCTAssertFalse(freedNothing.pass)
        XCTAssertTrue(freedNothing.verdict.contains("freed no page table"), freedNothing.verdict)
        var missed = WalkCounters()
        missed.walks = 100
        missed.notMapped = 100
        let metNothing = result(tablesFreed: 1, detections: missed)
        XCTAssertFalse(metNothing.pass)
        XCTAssertTrue(metNothing.verdict.contains("no walk of 100 reached a mapped page"), metNothing.verdict)
    }

    /// An op kind refused every time, twenty times or more, is one the
    /// run never tested; refused now and then, it is the race.
    func testASafeRunWhoseOpKindWasAlwaysRefusedDoesNotPass() {
        var mapped = WalkCounters()
        mapped.walks = 100
        mapped.mapped = 1
        var r = result(tablesFreed: 1, detections: mapped)
        r.opKinds = ["fault": OpTally.Count(done: 5, refused: 50), "mremap": OpTally.Count(done: 0, refused: 19)]
        r.judge()
        XCTAssertTrue(r.pass, r.verdict)
        r.opKinds?["mremap"]?.refused = 20
        r.judge()
        XCTAssertFalse(r.pass)
        XCTAssertEqual(r.verdict, "mremap was refused all 20 times: the run never tested it")
    }

    private func result(tablesFreed: Int, detections: WalkCounters) -> StressResult {
        var r = StressResult(scenario: "unmap", mode: "rcu-table-free", safe: true, expectedDetector: nil, seed: 1, walkers: 1,
                             durationSeconds: 1, ops: 10, walks: detections.walks, uafDetected: 0, leakedPages: 0,
                             tablesFreed: tablesFreed, rcuCallbacks: 0, tlbFlushes: 0, peakDeferredBytes: 0,
                             freeLatencyUs: FreeLatency.Summary(p50: 0, p99: 0, max: 0, count: 0), detections: detections,
                             integrity: Integrity(), pass: false, verdict: "")
        r.judge()
        return r
    }

    func testRaceRefusesARegionTooSmallToMoveBetweenPrivateTables() throws {
        var options = StressOptions(scenario: "race", mode: "kernel")
        options.tables = 2
        try withLab { allocator in
            XCTAssertThrowsError(try StressRunner(options).run(allocator: allocator)) {
                XCTAssertEqual("\($0)", "race needs at least 3 tables (2 private to move between, 1 shared), not 2")
            }
        }
    }

    func testOnlyRaceTakesSeveralUpdaters() {
        var options = StressOptions(scenario: "unmap", mode: "rcu-table-free")
        options.updaters = 2
        XCTAssertThrowsError(try StressRunner(options)) {
            XCTAssertEqual("\($0)", "scenario 'unmap' has one updater (its steps assume it); --updaters belongs to race")
        }
        options = StressOptions(scenario: "race", mode: "kernel")
        options.updaters = 0
        XCTAssertThrowsError(try StressRunner(options)) { XCTAssertEqual("\($0)", "--updaters must be 1...64") }
    }

    /// rcu_workers=per-cpu, as `--param` sets it: callbacks then run on
    /// the queueing CPU's own worker, and the grace periods must hold there
    /// too, for the gather's batches, pte_free_defer and PT_RECLAIM alike.
    func testScenariosHoldWithPerCPUCallRCUWorkers() throws {
        try usePerCPUWorkers()
        for (scenario, mode) in [("collapse", "defer"), ("unmap", "rcu-table-free"), ("reclaim", "rcu-table-free"),
                                 ("batch-fail", "rcu-one"), ("sva", "all-levels")] {
            try assertSafe(scenario, mode, ops: 60)
        }
    }

    /// ... and the detectors still fire there (an unsafe run, apart, since
    /// the sanitizer runs leave out what reads freed memory on purpose).
    func testAnUnsafeModeIsCaughtWithPerCPUCallRCUWorkers() throws {
        try usePerCPUWorkers()
        try assertDetects("collapse", "immediate", by: .pteOffsetMap)
    }

    private func usePerCPUWorkers() throws {
        var params = ModuleParameters()
        try params.set("rcu_workers", to: "per-cpu")
        try params.applyRCU()
        XCTAssertNotNil(urcu_memb_get_cpu_call_rcu_data(0), "no per-CPU call_rcu worker was made for CPU 0")
    }

    /// A verdict follows the flush: only unmap's no-rcu, the kernel that
    /// relied on the flush's IPI, changes with it.
    func testTheVerdictKnowsWhichModesRelyOnTheIPI() {
        for scenario in Scenario.all {
            for mode in scenario.modes where !(scenario.name == "unmap" && mode.name == "no-rcu") {
                XCTAssertEqual(mode.expectedDetector(under: .ipi), mode.expectedDetector(under: .noIPI),
                               "\(scenario.name)/\(mode.name)")
            }
        }
        let noRCU = Scenario.named("unmap")!.mode(named: "no-rcu")!
        XCTAssertNil(noRCU.expectedDetector(under: .ipi))
        XCTAssertEqual(noRCU.expectedDetector(under: .noIPI), .gupFast)
    }

    func testUnknownScenarioAndModeAreErrors() {
        XCTAssertThrowsError(try StressRunner(StressOptions(scenario: "nope", mode: "defer"))) { error in
            XCTAssertTrue("\(error)".contains("unknown scenario 'nope'"))
        }
        XCTAssertThrowsError(try StressRunner(StressOptions(scenario: "collapse", mode: "rcu-one"))) { error in
            XCTAssertTrue("\(error)".contains("modes: defer, immediate"))
        }
    }
}
