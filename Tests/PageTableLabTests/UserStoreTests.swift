import CSupport
import XCTest
@testable import PageTableLab

/// The detector for data pages: no walker looks at one, so a page freed
/// while the page tables still map it (a model bug, such as a collapse
/// freeing a folio a PMD maps) is caught where a user store reaches it.
/// The store is counted in Integrity and not made. Each test makes the bug
/// by hand, pointing an entry at a page that is free (or is a page table
/// now), and puts the entry back afterwards.
final class UserStoreTests: XCTestCase {
    func testAStoreIntoAFreedPageIsCaughtAndNotMade() throws {
        try withLab(expecting: .counting(storesToFreedPages: 1)) { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.touch(address: tib, length: 4096)
            let freed = try allocator.alloc()
            try allocator.free(freed)
            try withPTE(mm, pointingAt: freed) { try mm.touch(address: tib, length: 4096) }
            try mm.touch(address: tib, length: 4096)
            XCTAssertEqual(mm.exit(), 0)
        }
    }

    /// Handed out again as a page table, the page must not take the store:
    /// it would be an entry of that table.
    func testAStoreIntoAPageNowAPageTableIsCaughtAndNotMade() throws {
        try withLab(expecting: .counting(storesToFreedPages: 1)) { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.touch(address: tib, length: 4096)
            let table = try PageTables.alloc(.pte, mm: nil, node: .local, allocator: allocator)
            try withPTE(mm, pointingAt: table) { try mm.touch(address: tib, length: 4096) }
            XCTAssertEqual(allocator.address(of: table).load(as: UInt8.self), 0, "the store went into the page table")
            PageTables.dtorFree(table, allocator: allocator)
            XCTAssertEqual(mm.exit(), 0)
        }
    }

    /// A huge PMD mapping a freed folio: the store into its 200th page is
    /// caught.
    func testAStoreThroughAHugePMDIntoAFreedFolioIsCaught() throws {
        let profile = MMProfile.thpAlways()
        try withLab(profile: profile, expecting: .counting(storesToFreedPages: 1)) { allocator in
            let mm = try MM(allocator: allocator, profile: profile)
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.touch(address: tib, length: 4096)
            XCTAssertTrue(mm.isHugePMD(tib))
            let freed = try allocator.alloc(order: 9)
            try allocator.free(freed)
            let (_, slot) = try XCTUnwrap(mm.findPMD(tib))
            let mapped = ptlab_pte_read(slot)
            ptlab_pte_write(slot, Entry(rawValue: mapped).rawValue & ~Entry.pfnMask | UInt64(freed.pfn) << 12)
            try mm.touch(address: tib + 200 * 4096, length: 1)
            ptlab_pte_write(slot, mapped)
            XCTAssertEqual(mm.exit(), 0)
        }
    }
}

/// `body` with the first PTE of the table mapping `tib` pointing at `page`
/// instead of what it maps; put back afterwards.
private func withPTE(_ mm: MM, pointingAt page: Page, _ body: () throws -> Void) throws {
    let (_, _, table) = try XCTUnwrap(mm.findPTETable(tib))
    let pte = mm.allocator.address(of: table).assumingMemoryBound(to: UInt64.self)
    let mapped = ptlab_pte_read(pte)
    ptlab_pte_write(pte, Entry(pfn: page.pfn, flags: .userPage).rawValue)
    defer { ptlab_pte_write(pte, mapped) }
    try body()
}
