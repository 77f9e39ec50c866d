import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// mm->pgtables_bytes after every operation, against numbers measured on
/// the live kernel (KERNEL-NOTES §4, kernel 6.18, MADV_NOHUGEPAGE).
final class PgtablesBytesTests: XCTestCase {
    func testGigabyteOneBytePerTwoMegabytes() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: tib, length: gib)
            XCTAssertEqual(mm.vmPTEKilobytes, 0, "mmap allocates no tables")
            try mm.touch(address: tib, length: gib, stride: 2 * mib)
            XCTAssertEqual(mm.vmPTEKilobytes, 2056, "512 PTE + 1 PMD + 1 PUD tables")
            try mm.madviseDontneed(address: tib, length: gib / 2)
            XCTAssertEqual(mm.vmPTEKilobytes, 1032, "PT_RECLAIM frees the 256 emptied PTE tables")
            try mm.munmap(address: tib + gib - 4096, length: 4096)
            XCTAssertEqual(mm.vmPTEKilobytes, 1032, "a table still used by the VMA stays")
            try mm.munmap(address: tib, length: gib - 4096)
            XCTAssertEqual(mm.vmPTEKilobytes, 0)
            XCTAssertEqual(mm.exit(), 0)
        }
    }

    func testPre614KeepsTablesOnDontneed() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator, profile: .pre6_14)
            try mm.mmap(address: tib, length: gib)
            try mm.touch(address: tib, length: gib, stride: 2 * mib)
            try mm.madviseDontneed(address: tib, length: gib / 2)
            XCTAssertEqual(mm.vmPTEKilobytes, 2056, "no PT_RECLAIM: DONTNEED frees no tables")
            XCTAssertEqual(mm.exit(), 0)
        }
    }
}

final class FiveLevelPagingTests: XCTestCase {
    /// LA57: a real P4D level, which pgtables_bytes does not count.
    func testP4DTablesAreNotCounted() throws {
        var profile = MMProfile()
        profile.fiveLevel = true
        try withLab(profile: profile) { allocator in
            let mm = try MM(allocator: allocator, profile: profile)
            XCTAssertEqual(mm.levels, [.pgd, .p4d, .pud, .pmd, .pte])
            XCTAssertEqual(mm.taskSize, 1 << 56)
            let high: UInt64 = 1 << 50
            try mm.mmap(address: high, length: gib)
            try mm.touch(address: high, length: gib, stride: 2 * mib)
            XCTAssertEqual(mm.vmPTEKilobytes, 2056, "512 PTE + 1 PMD + 1 PUD; the P4D table is not counted")
            let tablesBefore = PageTables.stats.freed
            try mm.munmap(address: high, length: gib)
            XCTAssertEqual(mm.vmPTEKilobytes, 0)
            try RCU.barrier()
            XCTAssertEqual(PageTables.stats.freed - tablesBefore, 515, "P4D table freed too")
            mm.exit()
        }
    }
}
