import CSupport
import Synchronization
import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// The walker detectors that no unsafe stress mode names (mmu_walk,
/// iommu_walk, pte_offset_map_lock), each shown to fire on the
/// use-after-free it is for: a PTE table freed while its PMD still names
/// it. Their zeros in safe runs mean something only if they can fire.
final class DetectorTests: XCTestCase {
    private let base = 4 * tib

    /// An MMU with a cold paging-structure cache walks from the PGD into
    /// the freed table.
    func testMMUWalkCatchesATableFreedUnderItsPMD() throws {
        try withTableFreedUnderItsPMD { mm, _ in
            let cpu = CPU(id: 0, tlb: mm.tlb)
            defer { cpu.offline() }
            var c = WalkCounters()
            mm.hardwareAccess(base, cpu: cpu, counters: &c)
            XCTAssertEqual(c[.mmuWalk], 1, "\(c)")
        }
    }

    /// The IOMMU's own walk, no cache involved (iommu_walk, not
    /// iommu_from_cache).
    func testIOMMUWalkCatchesATableFreedUnderItsPMD() throws {
        try withLab { allocator in
            let iommu = try IntelIOMMU(allocator: allocator)
            defer { _ = iommu.shutdown() }
            let sva = SVA(iommu: iommu)
            try withTableFreedUnderItsPMD(allocator) { mm, _ in
                let bond = try sva.bind(mm, pasid: 1, did: 1)
                defer { try? sva.unbind(bond) }
                var c = WalkCounters()
                iommu.translate(DMARequest(pasid: 1, address: base), counters: &c)
                XCTAssertEqual(c[.iommuWalk], 1, "\(c)")
                XCTAssertEqual(c[.iommuFromCache], 0)
            }
        }
    }

    /// pte_offset_map_lock found the table, and before it took the lock
    /// the table was freed and handed out again as a PTE table with a live
    /// ptlock: the lock is taken, the PMD is unchanged, and only the
    /// generation says the table is not the one the walk found.
    func testPteOffsetMapLockCatchesATableReusedBeforeItsLockWasTaken() throws {
        try withLab { allocator in
            let (mm, slot, table) = try mmWithAnEmptyTable(allocator)
            let reused = Mutex<Page?>(nil)
            mm.raceWindowHook = { window, _ in
                guard window == .pteOffsetMapLockBeforeLock else { return }
                PageTables.dtorFree(table, allocator: allocator)
                reused.withLock { $0 = try? PageTables.alloc(.pte, mm: mm, node: .local, allocator: allocator) }
            }
            var c = WalkCounters()
            mm.pteOffsetMapLock(base, cpu: nil, counters: &c)
            mm.raceWindowHook = nil
            let again = try XCTUnwrap(reused.withLock { $0 })
            XCTAssertEqual(again.pfn, table.pfn, "the freed table's page was handed out again")
            XCTAssertEqual(c[.pteOffsetMapLock], 1, "\(c)")
            XCTAssertEqual(c[.freedPTLock], 0, "the reused table's ptlock is live")
            // The reused page is the table the PMD names again.
            XCTAssertEqual(Entry(rawValue: ptlab_pte_read(slot)).pfn, UInt64(again.pfn))
            XCTAssertEqual(mm.exit(), 0)
        }
    }

    /// An mm with an empty PTE table at `base` (PT_RECLAIM leaves it: the
    /// DONTNEED did not cover it), its PMD slot and the table; the table
    /// 2 MiB up keeps the tables above.
    private func mmWithAnEmptyTable(_ allocator: PageAllocator) throws -> (MM, UnsafeMutablePointer<UInt64>, Page) {
        let mm = try MM(allocator: allocator)
        try mm.mmap(address: base, length: 4 * mib)
        try mm.touch(address: base, length: 4096)
        try mm.touch(address: base + 2 * mib, length: 4096)
        try mm.madviseDontneed(address: base, length: 4096)
        let (_, slot, table) = try XCTUnwrap(mm.findPTETable(base))
        return (mm, slot, table)
    }

    /// An mm whose PTE table at `base` (empty; its neighbour keeps the
    /// upper tables) is freed while its PMD still names it, the bug every
    /// walker detector is for; afterwards the PMD is cleared and VmPTE
    /// corrected, so the mm exits clean.
    private func withTableFreedUnderItsPMD(_ allocator: PageAllocator? = nil,
                                           _ body: (MM, Page) throws -> Void) throws {
        func run(_ allocator: PageAllocator) throws {
            let (mm, slot, table) = try mmWithAnEmptyTable(allocator)
            PageTables.dtorFree(table, allocator: allocator)
            try body(mm, table)
            ptlab_pte_write(slot, 0)
            mm.accountTable(.pte, -1)
            XCTAssertEqual(mm.exit(), 0)
        }
        if let allocator { try run(allocator) } else { try withLab(run) }
    }
}
