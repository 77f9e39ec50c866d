import CSupport
import XCTest
@testable import PageTableLab

final class MremapTests: XCTestCase {
    /// No THP: the moves are of PTE tables and their entries.
    private static let smallPages: MMProfile = {
        var profile = MMProfile.v6_14
        profile.thp = THPSettings(enabled: .never, shmemEnabled: .never)
        return profile
    }()

    /// MREMAP_DONTUNMAP of a whole VMA: the source VMA stays, its entries
    /// and its anon_vma gone (unlink_anon_vmas), and faults afresh; the
    /// data is at the destination.
    func testDontUnmapLeavesTheSourceMappedAndEmpty() throws {
        try withLab(profile: Self.smallPages) { allocator in
            let mm = try MM(allocator: allocator, profile: Self.smallPages)
            defer { mm.exit() }
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.touch(address: tib, length: 2 * mib, stride: 64 << 10)
            try mm.mremap(from: tib, length: 2 * mib, to: tib + gib, dontUnmap: true)
            XCTAssertEqual(mm.vmas.map(\.start), [tib, tib + gib])
            XCTAssertEqual(mm.vmas.first?.anonVMA, 0, "the source keeps its anon_vma")
            XCTAssertNil(mm.findPTETable(tib), "the PTE table moved whole")
            try mm.touch(address: tib, length: 4096)
            XCTAssertNotNil(mm.findPTETable(tib))
        }
    }

    /// MREMAP_DONTUNMAP of part of a VMA: the VMA keeps its anon_vma
    /// (move_vma unlinks it only when the whole VMA moved).
    func testDontUnmapOfPartOfAVMAKeepsItsAnonVMA() throws {
        try withLab(profile: Self.smallPages) { allocator in
            let mm = try MM(allocator: allocator, profile: Self.smallPages)
            defer { mm.exit() }
            try mm.mmap(address: tib, length: 4 * mib)
            try mm.touch(address: tib, length: 4 * mib, stride: 64 << 10)
            try mm.mremap(from: tib, length: 2 * mib, to: tib + gib, dontUnmap: true)
            XCTAssertNotEqual(mm.vmas.first { $0.start == tib }?.anonVMA, 0)
        }
    }

    /// A move that cannot allocate a table on the way fails with ENOMEM and
    /// leaves the old mapping as it was: copy_vma_and_data moves back what
    /// move_page_tables had moved and unmaps the new range instead. Going
    /// on as if the move had finished would unmap the old range with the
    /// entries it never moved, their data lost, and report success.
    func testAMoveThatRunsOutOfMemoryMovesBackAndFails() throws {
        try withLab(profile: Self.smallPages, budgetPages: 4096) { allocator in
            let mm = try MM(allocator: allocator, profile: Self.smallPages)
            try mm.mmap(address: tib, length: 4 * mib)
            try mm.touch(address: tib, length: 4 * mib)
            // Room for the new range's PMD table and its first PTE table:
            // 4 KiB off alignment, the move is entry by entry, and its
            // second PTE table is one too many.
            let held = try exhaust(allocator, leaving: 2)
            let new = tib + 64 * gib + 4096
            XCTAssertThrowsError(try mm.mremap(from: tib, length: 4 * mib, to: new)) { error in
                guard case MMError.outOfMemory = error else { return XCTFail("\(error)") }
            }
            XCTAssertEqual(mm.vmas.map { [$0.start, $0.end] }, [[tib, tib + 4 * mib]], "the old mapping, and nothing at the new address")
            XCTAssertEqual(presentPTEs(mm, tib, 4 * mib), 1024, "every page mapped where it was")
            XCTAssertEqual(presentPTEs(mm, new, 4 * mib), 0)
            for page in held { try allocator.free(page) }
            XCTAssertEqual(mm.exit(), 0)
        }
    }

    /// The move back is not checked, as in the kernel, and can need a
    /// table of its own: here the new range's second PTE table holds the
    /// last page of the old first 2 MiB, whose next PMD had no table, so
    /// moving back pte_allocs one there, and with memory still short it
    /// fails. The last 2 MiB's 511 pages, moved but not moved back, go with
    /// the new range: ENOMEM, and 513 of the 1024 pages left.
    func testTheMoveBackIsNotCheckedAsInTheKernel() throws {
        try withLab(profile: Self.smallPages, budgetPages: 4096) { allocator in
            let mm = try MM(allocator: allocator, profile: Self.smallPages)
            try mm.mmap(address: tib, length: 6 * mib)
            try mm.touch(address: tib, length: 2 * mib)
            try mm.touch(address: tib + 4 * mib, length: 2 * mib)
            // The new PMD table and three PTE tables; the fourth fails.
            let held = try exhaust(allocator, leaving: 4)
            let new = tib + 64 * gib + 4096
            XCTAssertThrowsError(try mm.mremap(from: tib, length: 6 * mib, to: new)) { error in
                guard case MMError.outOfMemory = error else { return XCTFail("\(error)") }
            }
            XCTAssertEqual(mm.vmas.map { [$0.start, $0.end] }, [[tib, tib + 6 * mib]])
            XCTAssertEqual(presentPTEs(mm, tib, 2 * mib), 512, "the first 2 MiB moved back")
            XCTAssertEqual(presentPTEs(mm, tib + 2 * mib, 4 * mib), 1, "of the last 2 MiB, only the page that never moved")
            XCTAssertEqual(presentPTEs(mm, new, 6 * mib), 0)
            for page in held { try allocator.free(page) }
            XCTAssertEqual(mm.exit(), 0)
        }
    }
}

/// Every page the allocator has, but `leaving`: the pages held, to free
/// when the test is done.
private func exhaust(_ allocator: PageAllocator, leaving: Int) throws -> [Page] {
    var held: [Page] = []
    while let page = try? allocator.alloc() { held.append(page) }
    for page in held.suffix(leaving) { try allocator.free(page) }
    return held.dropLast(leaving)
}

/// How many PTEs in [start, start + length) are present.
private func presentPTEs(_ mm: MM, _ start: UInt64, _ length: UInt64) -> Int {
    stride(from: start, to: start + length, by: 4096).filter { address in
        guard let (_, _, table) = mm.findPTETable(address) else { return false }
        return Entry(rawValue: ptlab_pte_read(mm.entry(in: table, level: .pte, address: address))).isPresent
    }.count
}
