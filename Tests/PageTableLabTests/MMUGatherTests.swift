import CSupport
import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

final class MMUGatherTests: XCTestCase {
    /// Tables as free_pgtables would hand them over: unlinked PTE tables.
    private func makeTables(_ n: Int, mm: MM) throws -> [Page] {
        try (0..<n).map { i in
            try PageTables.alloc(.pte, mm: mm, node: .local, allocator: mm.allocator)
        }
    }

    func testThousandTablesMakeTwoCallbacks() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            let tables = try makeTables(1000, mm: mm)
            let before = DeferredBound.snapshot().queued
            let tlb = MMUGather(mm: mm)
            for (i, t) in tables.enumerated() { tlb.freeTable(t, level: .pte, address: tib + UInt64(i) << 21) }
            tlb.finish()
            XCTAssertEqual(tlb.stats.rcuCallbacks, 2, "⌈1000/509⌉ callbacks")
            XCTAssertEqual(DeferredBound.snapshot().queued - before, 2)
            XCTAssertEqual(tlb.stats.tablesQueued, 1000)
            try RCU.barrier()
            XCTAssertTrue(tables.allSatisfy { $0.state == PageState.free })
            mm.exit()
        }
    }

    /// A policy asked per table (the default) sees every table; one that
    /// says it batches every table is not asked, and its tables still go
    /// through the batch and its freeBatch.
    func testPolicyIsAskedPerTableUnlessItBatchesEveryTable() throws {
        final class Asking: TableFreePolicy, @unchecked Sendable {
            let batches: Bool
            var asked = 0
            var batched = 0
            init(batches: Bool) { self.batches = batches }
            var name: String { "asking" }
            var batchesEveryTable: Bool { batches }
            func removeTable(_ table: Page, gather: MMUGather) -> TableDisposition {
                asked += 1
                return .batch
            }
            func freeBatch(_ batch: TableBatch, gather: MMUGather) {
                batched += batch.count
                batch.free(allocator: gather.mm.allocator)
            }
            func freeOne(_ table: Page, gather: MMUGather) { PageTables.dtorFree(table, allocator: gather.mm.allocator) }
        }
        try withLab { allocator in
            for batches in [false, true] {
                let policy = Asking(batches: batches)
                var profile = MMProfile.v6_14
                profile.tableFree = policy
                let mm = try MM(allocator: allocator, profile: profile)
                let tables = try makeTables(10, mm: mm)
                let tlb = MMUGather(mm: mm)
                for (i, t) in tables.enumerated() { tlb.freeTable(t, level: .pte, address: tib + UInt64(i) << 21) }
                tlb.finish()
                XCTAssertEqual(policy.asked, batches ? 0 : 10, "batchesEveryTable \(batches)")
                XCTAssertEqual(policy.batched, 10)
                XCTAssertTrue(tables.allSatisfy { $0.state == PageState.free })
                mm.exit()
            }
        }
    }

    func testNoTableIsFreedBeforeTheFlush() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            let tables = try makeTables(600, mm: mm)
            let generations = tables.map(\.generation)
            let tlb = MMUGather(mm: mm)
            withGracePeriodHeld {
                for (i, t) in tables.enumerated() { tlb.freeTable(t, level: .pte, address: tib + UInt64(i) << 21) }
                // The first batch filled at 509 and went out, after a flush.
                XCTAssertEqual(tlb.stats.tlbFlushes, 1)
                XCTAssertEqual(tlb.stats.rcuCallbacks, 1)
                // The other 91 wait in the open batch: not even queued to RCU.
                XCTAssertTrue(tables[509...].allSatisfy { $0.state == PageState.deferred })
                XCTAssertEqual(zip(tables, generations).filter { $0.0.generation != $0.1 }.count, 0,
                               "nothing freed before the grace period")
            }
            tlb.finish()
            XCTAssertEqual(tlb.stats.freedBeforeFlush, 0)
            XCTAssertEqual(tlb.stats.tlbFlushes, 2)
            try RCU.barrier()
            XCTAssertTrue(zip(tables, generations).allSatisfy { $0.0.generation == $0.1 + 1 })
            mm.exit()
        }
    }

    /// Ten tables through a gather that leaves its own flush out, with
    /// `beforeFree(i, mm)` run before the i-th: the gather's stats after
    /// tlb_finish_mmu.
    private func statsSkippingTheGathersFlush(beforeFree: (Int, MM) -> Void = { _, _ in }) throws -> GatherStats {
        var profile = MMProfile()
        profile.gatherSkipsFlush = true
        return try withLab { allocator in
            let mm = try MM(allocator: allocator, profile: profile)
            let tables = try makeTables(10, mm: mm)
            let tlb = MMUGather(mm: mm)
            for (i, t) in tables.enumerated() {
                beforeFree(i, mm)
                tlb.freeTable(t, level: .pte, address: tib + UInt64(i) << 21)
            }
            tlb.finish()
            mm.exit()
            return tlb.stats
        }
    }

    /// The checker itself: with the flush left out it must complain.
    func testMissingFlushIsCounted() throws {
        let stats = try statsSkippingTheGathersFlush()
        XCTAssertEqual(stats.freedBeforeFlush, 10)
        XCTAssertEqual(stats.tlbFlushes, 0)
    }

    /// A flush from elsewhere (another gather on the mm) in the middle of a
    /// batch covers the tables unlinked before it, not those after: the
    /// checker counts only the run since the last flush.
    func testFlushMidBatchCoversOnlyTheTablesBeforeIt() throws {
        let stats = try statsSkippingTheGathersFlush { i, mm in
            if i == 4 || i == 7 { mm.tlb.flush() }
        }
        XCTAssertEqual(stats.freedBeforeFlush, 3, "tables 7, 8 and 9 went without a flush after their unlink")
    }

    func testImmediateFreesAtUnlink() throws {
        var profile = MMProfile()
        profile.tableFree = .immediate
        try withLab { allocator in
            let mm = try MM(allocator: allocator, profile: profile)
            let tables = try makeTables(3, mm: mm)
            let tlb = MMUGather(mm: mm)
            tlb.freeTable(tables[0], level: .pte, address: tib)
            XCTAssertEqual(tables[0].state, PageState.free, "freed before any flush")
            for t in tables[1...] { tlb.freeTable(t, level: .pte, address: tib) }
            tlb.finish()
            XCTAssertEqual(tlb.stats.freedBeforeFlush, 3)
            mm.exit()
        }
    }

    func testBatchFailureTakesEachFallback() throws {
        for fallback in RCUTableFree.Fallback.allCases {
            var profile = MMProfile()
            profile.failBatchAllocation = true
            profile.tableFree = .rcu(fallback: fallback)
            profile.ptReclaim = fallback != .ipiSync
            try withLab { allocator in
                let mm = try MM(allocator: allocator, profile: profile)
                let tables = try makeTables(5, mm: mm)
                let syncsBefore = mm.tlb.syncIPIs.load(ordering: .relaxed)
                let tlb = MMUGather(mm: mm)
                switch fallback {
                case .rcuOne:
                    withGracePeriodHeld {
                        for t in tables { tlb.freeTable(t, level: .pte, address: tib) }
                        XCTAssertEqual(tlb.stats.rcuCallbacks, 5, "one call_rcu per table on its own head")
                        XCTAssertTrue(tables.allSatisfy { $0.state == PageState.deferred })
                    }
                case .noInvalidate:
                    let flushesBefore = mm.tlb.remoteFlushes.load(ordering: .relaxed)
                    for t in tables { tlb.freeTable(t, level: .pte, address: tib) }
                    XCTAssertEqual(mm.tlb.remoteFlushes.load(ordering: .relaxed), flushesBefore,
                                   "the bug: no tlb_table_invalidate before the free")
                    XCTAssertTrue(tables.allSatisfy { $0.state == PageState.free }, "freed after synchronize_rcu")
                case .ipiSync:
                    for t in tables { tlb.freeTable(t, level: .pte, address: tib) }
                    XCTAssertEqual(mm.tlb.syncIPIs.load(ordering: .relaxed) - syncsBefore, 5)
                    XCTAssertTrue(tables.allSatisfy { $0.state == PageState.free }, "freed at once after the IPI")
                case .synchronize:
                    for t in tables { tlb.freeTable(t, level: .pte, address: tib) }
                    XCTAssertEqual(tlb.stats.rcuCallbacks, 0)
                    XCTAssertTrue(tables.allSatisfy { $0.state == PageState.free }, "freed after synchronize_rcu")
                }
                XCTAssertEqual(tlb.stats.batchFallbacks, 5, "\(fallback)")
                tlb.finish()
                XCTAssertEqual(tlb.stats.freedBeforeFlush, fallback == .noInvalidate ? 5 : 0,
                               "\(fallback): flushed before the fallback (all but the unsafe one)")
                mm.exit()
            }
        }
    }

    func testNestedGatherForcesFullFlush() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: tib, length: 4 * mib)
            try mm.touch(address: tib, length: 4 * mib)
            let outer = MMUGather(mm: mm)
            let inner = MMUGather(mm: mm)
            inner.finish()
            XCTAssertEqual(inner.stats.nestedFlushes, 1, "another gather was in flight")
            XCTAssertEqual(inner.stats.tlbFlushes, 1, "nested: flush everything even with nothing gathered")
            XCTAssertTrue(inner.fullmm)
            outer.finish()
            XCTAssertEqual(outer.stats.nestedFlushes, 0)
            XCTAssertEqual(outer.stats.tlbFlushes, 0, "alone and empty: nothing to flush")
            mm.exit()
        }
    }

    /// More pages than 19 batches hold: the zap must flush on the way.
    func testFullPageBatchesForceFlush() throws {
        try withLab(budgetPages: 32_768) { allocator in
            let mm = try MM(allocator: allocator)
            let pages: UInt64 = 12_000
            try mm.mmap(address: tib, length: pages * 4096)
            try mm.touch(address: tib, length: pages * 4096)
            try mm.munmap(address: tib, length: pages * 4096)
            let capacity = 7 + PageBatches.maxGatherBatchCount * (PageBatches.maxGatherBatch - 1)
            XCTAssertEqual(PageBatches.maxGatherBatch, 510)
            XCTAssertEqual(PageBatches.maxGatherBatchCount, 19)
            XCTAssertEqual(TableBatch.maxTableBatch, 509)
            XCTAssertGreaterThan(Int(pages), capacity)
            XCTAssertEqual(mm.lastGather.pagesFreed, Int(pages))
            XCTAssertGreaterThanOrEqual(mm.lastGather.tlbFlushes, 2, "one forced flush mid-zap, one at the end")
            mm.exit()
        }
    }
}
