import CSupport
import XCTest
@testable import PageTableLab

final class MremapTests: XCTestCase {
    /// A move that cannot allocate a table on the way fails with ENOMEM and
    /// leaves the old mapping as it was: copy_vma_and_data moves back what
    /// move_page_tables had moved and unmaps the new range instead. Going
    /// on as if the move had finished would unmap the old range with the
    /// entries it never moved, their data lost, and report success.
    func testAMoveThatRunsOutOfMemoryMovesBackAndFails() throws {
        var profile = MMProfile.v6_14
        profile.thp = THPSettings(enabled: .never, shmemEnabled: .never)
        try withLab(profile: profile, budgetPages: 4096) { allocator in
            let mm = try MM(allocator: allocator, profile: profile)
            try mm.mmap(address: tib, length: 4 * mib)
            try mm.touch(address: tib, length: 4 * mib)
            var held: [Page] = []
            while let page = try? allocator.alloc() { held.append(page) }
            // Room for the new range's PMD table and its first PTE table:
            // 4 KiB off alignment, the move is entry by entry, and its
            // second PTE table is one too many.
            for page in held.suffix(2) { try allocator.free(page) }
            held.removeLast(2)
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
}

/// How many PTEs in [start, start + length) are present.
private func presentPTEs(_ mm: MM, _ start: UInt64, _ length: UInt64) -> Int {
    stride(from: start, to: start + length, by: 4096).filter { address in
        guard let (_, _, table) = mm.findPTETable(address) else { return false }
        return Entry(rawValue: ptlab_pte_read(mm.entry(in: table, level: .pte, address: address))).isPresent
    }.count
}
