import Synchronization
import XCTest
@testable import PageTableLab

/// MADV_GUARD_INSTALL and MADV_GUARD_REMOVE: markers that allocate page
/// tables, keep them from PT_RECLAIM, and go only with munmap and exit.
final class GuardRegionTests: XCTestCase {
    private let base = tib

    private func error(_ body: () throws(MMError) -> Void) -> MMError? {
        do {
            try body()
            return nil
        } catch {
            return error
        }
    }

    func testInstallingAllocatesTablesAndAnAccessGetsSIGSEGV() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            defer { mm.exit() }
            try mm.mmap(address: base, length: 2 * mib)
            try mm.madviseGuardInstall(address: base, length: 64 << 10)
            XCTAssertEqual(mm.vmPTEKilobytes, 12, "a PTE, a PMD and a PUD table for the markers")
            XCTAssertEqual(error { () throws(MMError) in try mm.touch(address: base + 4096, length: 4096) },
                           .guardRegion(address: base + 4096))
            XCTAssertNil(error { () throws(MMError) in try mm.touch(address: base + (64 << 10), length: 4096) },
                         "the page past the guard region faults as ever")
        }
    }

    func testDontneedKeepsTheMarkersAndTheirTable() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            defer { mm.exit() }
            try mm.mmap(address: base, length: 4 * mib)
            try mm.touch(address: base, length: 4 * mib, stride: 64 << 10)
            try mm.madviseGuardInstall(address: base, length: 4096)
            XCTAssertEqual(mm.vmPTEKilobytes, 16)
            try mm.madviseDontneed(address: base, length: 4 * mib)
            XCTAssertEqual(mm.vmPTEKilobytes, 12, "PT_RECLAIM frees the table without markers, not the one with")
            XCTAssertEqual(error { () throws(MMError) in try mm.touch(address: base, length: 4096) }, .guardRegion(address: base))
        }
    }

    func testInstallingOverMappedPagesZapsThemAndRemovingLeavesTheTable() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            defer { mm.exit() }
            try mm.mmap(address: base, length: 2 * mib)
            try mm.touch(address: base, length: 2 * mib, stride: 4096)
            try mm.madviseGuardInstall(address: base, length: 2 * mib)
            XCTAssertEqual(allocator.totalAllocatedPages, 4, "every data page zapped: the PGD and three tables are left")
            try mm.madviseGuardRemove(address: base, length: 2 * mib)
            XCTAssertEqual(mm.vmPTEKilobytes, 12, "removing markers frees no table")
            try mm.touch(address: base, length: 4096)
            try mm.madviseDontneed(address: base, length: 2 * mib)
            XCTAssertEqual(mm.vmPTEKilobytes, 8, "with the markers gone PT_RECLAIM takes the table")
        }
    }

    func testInstallingOverAHugePMDZapsIt() throws {
        try withLab(profile: .thpAlways()) { allocator in
            let mm = try MM(allocator: allocator, profile: .thpAlways())
            defer { mm.exit() }
            try mm.mmap(address: base, length: 2 * mib)
            try mm.touch(address: base, length: 4096)
            XCTAssertTrue(mm.isHugePMD(base))
            try mm.madviseGuardInstall(address: base + (1 << 20), length: 4096)
            XCTAssertFalse(mm.isHugePMD(base))
            XCTAssertEqual(error { () throws(MMError) in try mm.touch(address: base + (1 << 20), length: 4096) },
                           .guardRegion(address: base + (1 << 20)))
        }
    }

    func testMunmapAndExitTakeTheMarkersWithTheTables() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: base, length: 2 * mib)
            try mm.madviseGuardInstall(address: base, length: 2 * mib)
            try mm.munmap(address: base, length: 2 * mib)
            XCTAssertEqual(mm.vmPTEKilobytes, 0)
            try mm.mmap(address: base, length: 2 * mib)
            XCTAssertNil(error { () throws(MMError) in try mm.touch(address: base, length: 4096) }, "a marker outlived munmap")
            try mm.madviseGuardInstall(address: base + 4096, length: 4096)
            XCTAssertEqual(mm.exit(), 0)
        }
    }

    func testMremapMovesTheMarkers() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            defer { mm.exit() }
            try mm.mmap(address: base, length: 2 * mib)
            try mm.madviseGuardInstall(address: base + 4096, length: 4096)
            try mm.mremap(from: base, length: 2 * mib, to: base + gib)
            XCTAssertEqual(error { () throws(MMError) in try mm.touch(address: base + gib + 4096, length: 4096) },
                           .guardRegion(address: base + gib + 4096))
        }
    }

    func testACollapseRefusesATableWithAMarker() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            defer { mm.exit() }
            try mm.mmap(address: base, length: 2 * mib)
            try mm.touch(address: base, length: 2 * mib, stride: 4096)
            try mm.madviseGuardInstall(address: base + 4096, length: 4096)
            guard case .collapseRefused(_, .einval, let why)? = error({ () throws(MMError) in
                try mm.madviseCollapse(address: base, length: 2 * mib)
            }) else { return XCTFail("MADV_COLLAPSE went through a guard marker") }
            XCTAssertTrue(why.contains("guard marker"), why)
            XCTAssertEqual(error { () throws(MMError) in try mm.touch(address: base + 4096, length: 4096) },
                           .guardRegion(address: base + 4096))
        }
    }

    /// PT_RECLAIM takes the table MADV_GUARD_INSTALL has just put in, before
    /// the install locks it: pte_offset_map_lock's re-check finds the PMD
    /// changed, and the install puts in a table again.
    func testInstallingAgainAfterPTReclaimTookTheTable() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            defer { mm.exit() }
            try mm.mmap(address: base, length: 2 * mib)
            let reclaimed = Mutex(false)
            mm.raceWindowHook = { window, _ in
                guard window == .guardTableReached, !reclaimed.withLock({ $0 }) else { return }
                reclaimed.withLock { $0 = true }
                do { try mm.madviseDontneed(address: tib, length: 2 * mib) } catch { XCTFail("\(error)") }
            }
            try mm.madviseGuardInstall(address: base, length: 2 * mib)
            mm.raceWindowHook = nil
            XCTAssertTrue(reclaimed.withLock { $0 })
            XCTAssertEqual(mm.vmPTEKilobytes, 12)
            for page in stride(from: base, to: base + 2 * mib, by: 64 << 10) {
                XCTAssertEqual(error { () throws(MMError) in try mm.touch(address: page, length: 4096) }, .guardRegion(address: page))
            }
        }
    }

    /// A marker ends MADV_COLLAPSE's call where it stands (SCAN_FAIL, up to
    /// 6.18): a 2 MiB block after it stays small, one before it is huge.
    func testACollapseEndsAtTheBlockWithAMarker() throws {
        for (guarded, hugeAfter) in [(UInt64(0), [false, false]), (2 * mib, [true, false])] {
            try withLab { allocator in
                let mm = try MM(allocator: allocator)
                defer { mm.exit() }
                try mm.mmap(address: base, length: 4 * mib)
                try mm.touch(address: base, length: 4 * mib, stride: 4096)
                try mm.madviseGuardInstall(address: base + guarded + 4096, length: 4096)
                guard case .collapseRefused(let at, .einval, _)? = error({ () throws(MMError) in
                    try mm.madviseCollapse(address: base, length: 4 * mib)
                }) else { return XCTFail("collapse went on") }
                XCTAssertEqual(at, base + guarded)
                XCTAssertEqual([mm.isHugePMD(base), mm.isHugePMD(base + 2 * mib)], hugeAfter, "guard at +\(guarded >> 20) MiB")
            }
        }
    }

    /// Guards in shmem (6.15+): MADV_COLLAPSE collapses the file, and the
    /// retract leaves the guarded mapping's table alone (the install gave
    /// the VMA an anon_vma), so the marker survives; collapse_pte_mapped_thp
    /// then finds it (SCAN_PTE_NON_PRESENT) and goes on to the next 2 MiB,
    /// which is mapped huge. Measured the same on Linux 6.18: EINVAL,
    /// VmPTE 16 to 12 kB, the guard still faulting, the second 2 MiB
    /// ShmemPmdMapped.
    func testTheShmemRetractLeavesAGuardedTable() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            defer { mm.exit() }
            try mm.mmap(address: base, length: 4 * mib, shared: true)
            try mm.touch(address: base, length: 4 * mib, stride: 4096)
            try mm.madviseGuardInstall(address: base + 4096, length: 4096)
            XCTAssertEqual(mm.vmPTEKilobytes, 16)
            guard case .collapseRefused(let at, .einval, _)? = error({ () throws(MMError) in
                try mm.madviseCollapse(address: base, length: 4 * mib)
            }) else { return XCTFail("the collapse did not refuse the guarded block") }
            XCTAssertEqual(at, base)
            XCTAssertEqual(mm.vmPTEKilobytes, 12, "the second block's table retracted, the guarded one kept")
            XCTAssertEqual([mm.isHugePMD(base), mm.isHugePMD(base + 2 * mib)], [false, true])
            XCTAssertEqual(error { () throws(MMError) in try mm.touch(address: base + 4096, length: 4096) },
                           .guardRegion(address: base + 4096), "the retract took the guard with the table")
        }
    }

    func testFileMappingsBefore615AndKernelsBefore613AreRefused() throws {
        var profile = MMProfile.v6_14
        profile.guardFileMappings = false
        try withLab(profile: profile) { allocator in
            let mm = try MM(allocator: allocator, profile: profile)
            defer { mm.exit() }
            try mm.mmap(address: base, length: 2 * mib, shared: true)
            guard case .guardRefused? = error({ () throws(MMError) in try mm.madviseGuardInstall(address: base, length: 4096) })
            else { return XCTFail("guard on shared memory before 6.15") }
            let old = try MM(allocator: allocator, profile: .pre6_14)
            defer { old.exit() }
            try old.mmap(address: base, length: 2 * mib)
            guard case .guardRefused? = error({ () throws(MMError) in try old.madviseGuardInstall(address: base, length: 4096) })
            else { return XCTFail("guard on 6.1") }
        }
    }

    func testAHoleIsReportedAfterTheRestIsGuarded() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            defer { mm.exit() }
            try mm.mmap(address: base, length: 64 << 10)
            try mm.mmap(address: base + (128 << 10), length: 64 << 10)
            XCTAssertEqual(error { () throws(MMError) in try mm.madviseGuardInstall(address: base, length: 192 << 10) },
                           .notMapped(address: base + (64 << 10)))
            XCTAssertEqual(error { () throws(MMError) in try mm.touch(address: base + (128 << 10), length: 4096) },
                           .guardRegion(address: base + (128 << 10)))
        }
    }
}
