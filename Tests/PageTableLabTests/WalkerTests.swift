import CSupport
import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// Single-threaded checks of what each walker reports; the racing cases
/// are in StressScenarioTests.
final class WalkerTests: XCTestCase {
    func testWalkersSeeMappedAndUnmapped() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.touch(address: tib, length: 4096)
            let cpu = CPU(id: 0, tlb: mm.tlb)
            var c = WalkCounters()
            mm.gupFast(tib, counters: &c)
            mm.pteOffsetMapLock(tib, cpu: cpu, counters: &c)
            mm.hardwareAccess(tib, cpu: cpu, counters: &c)
            mm.gupFast(tib + 4 * gib, counters: &c)
            XCTAssertEqual(c.walks, 4)
            XCTAssertEqual(c.mapped, 3)
            XCTAssertEqual(c.notMapped, 1)
            XCTAssertEqual(c.useAfterFree, 0)
            // The CPU is this thread: exit's flushes are local, not a wait.
            mm.exit()
            cpu.offline()
        }
    }

    /// A CPU whose tables were freed without a flush walks into the freed
    /// table through its paging-structure cache; after a flush it does not.
    func testStalePagingStructureCacheIsDetected() throws {
        var profile = MMProfile()
        profile.gatherSkipsFlush = true
        try withLab(profile: profile) { allocator in
            let mm = try MM(allocator: allocator, profile: profile)
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.touch(address: tib, length: 4096)
            let cpu = CPU(id: 0, tlb: mm.tlb)
            var c = WalkCounters()
            mm.hardwareAccess(tib, cpu: cpu, counters: &c)   // fills the PSC
            try mm.munmap(address: tib, length: 2 * mib)
            try RCU.barrier()
            mm.hardwareAccess(tib, cpu: cpu, counters: &c)
            XCTAssertEqual(c[.stalePSC], 1, "the cached PDE pointed at a freed table")
            mm.tlb.flush()
            mm.hardwareAccess(tib, cpu: cpu, counters: &c)
            XCTAssertEqual(c[.stalePSC], 1, "after the flush the CPU walks afresh")
            XCTAssertEqual(c.notMapped, 1)
            cpu.offline()
            mm.exit()
        }
    }

    /// The rcu walkers hold the mmap read lock (LockContext.rcu), as every
    /// kernel caller of pte_offset_map holds it or a lock like it: while a
    /// writer holds the lock (collapse_huge_page unlinking the table it
    /// deposits, which zap_huge_pmd frees without a grace period) they do
    /// not walk, where GUP-fast, which holds nothing, does.
    func testRCUWalkersGiveWayToTheMMapWriteLock() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.touch(address: tib, length: 4096)
            let cpu = CPU(id: 0, tlb: mm.tlb)
            var c = WalkCounters()
            mm.mmapLock.withWriteLock {
                mm.pteOffsetMap(tib, context: .rcu, cpu: cpu, counters: &c)
                mm.pteOffsetMapLock(tib, cpu: cpu, counters: &c)
                mm.gupFast(tib, counters: &c)
            }
            XCTAssertEqual(c.walks, 1, "GUP-fast alone walked")
            mm.pteOffsetMap(tib, context: .rcu, cpu: cpu, counters: &c)
            mm.pteOffsetMapLock(tib, cpu: cpu, counters: &c)
            XCTAssertEqual(c.walks, 3)
            XCTAssertEqual(c.mapped, 3)
            mm.exit()
            cpu.offline()
        }
    }

    func testLockedWalkerSeesDeadPTLock() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.touch(address: tib, length: 4096)
            let (_, _, table) = try XCTUnwrap(mm.findPTETable(tib))
            // What the pre-6.14 gather did at unlink, while the PMD still
            // pointed at the table for a racing walker.
            PageTables.dtor(table, allocator: allocator)
            var c = WalkCounters()
            mm.pteOffsetMapLock(tib, cpu: nil, counters: &c)
            XCTAssertEqual(c[.freedPTLock], 1)
            ptlab_ptl_init(table.desc)
            ptlab_page_set_flags(table.desc, PTLAB_PG_TABLE)
            allocator.accountPageTable(table, delta: 1)
            mm.exit()
        }
    }
}
