import CSupport
import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// A data page's mapcount, and the allocator's check of it at free
/// (free_pages_prepare's "Bad page state ... nonzero mapcount"): a page
/// that user entries still map cannot be freed, whoever frees it, so a
/// model bug of that kind is caught at the free rather than by a store
/// that may never come. Each test counts what the paths that map and unmap
/// leave, then frees a mapped page by hand: the free must be refused, the
/// page stay allocated, and the unmap that follows free it as usual.
final class MapcountTests: XCTestCase {
    func testAMappedPageCannotBeFreed() throws {
        try withLab(expecting: .counting(badPageStates: 1)) { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.touch(address: tib, length: 2 * 4096)
            let page = try mappedPage(mm, tib)
            XCTAssertEqual(ptlab_page_mapcount(page.desc), 1)
            XCTAssertThrowsError(try allocator.free(page)) { error in
                XCTAssertEqual(error as? PageAllocError, .stillMapped(pfn: page.pfn, mapcount: 1))
            }
            XCTAssertFalse(PageTables.release(page, allocator: allocator), "a mapped page was freed")
            XCTAssertEqual(ptlab_page_state(page.desc), PTLAB_PAGE_ALLOCATED.rawValue)
            try mm.madviseDontneed(address: tib, length: 4096)
            XCTAssertEqual(ptlab_page_mapcount(page.desc), 0)
            XCTAssertEqual(ptlab_page_state(page.desc), PTLAB_PAGE_FREE.rawValue, "the zap's gather did not free it")
            XCTAssertEqual(mm.exit(), 0)
        }
    }

    /// A move keeps the count: the page is mapped once, at its new address.
    func testMremapKeepsTheCount() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.touch(address: tib, length: 4096)
            let page = try mappedPage(mm, tib)
            try mm.mremap(from: tib, length: 2 * mib, to: tib + 64 * mib + 64 * 1024)
            XCTAssertEqual(try mappedPage(mm, tib + 64 * mib + 64 * 1024), page)
            XCTAssertEqual(ptlab_page_mapcount(page.desc), 1)
            XCTAssertEqual(mm.exit(), 0)
        }
    }

    /// A huge PMD counts on its folio's head; a split moves that count to
    /// each of the 512 pages, which are mapped and freed one by one after.
    func testAHugePMDCountsOnItsHeadAndASplitOnEachPage() throws {
        let profile = MMProfile.thpAlways()
        try withLab(profile: profile, expecting: .counting(badPageStates: 2)) { allocator in
            let mm = try MM(allocator: allocator, profile: profile)
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.touch(address: tib, length: 4096)
            let folio = try hugeFolio(mm, tib)
            XCTAssertEqual(ptlab_page_mapcount(folio.desc), 1)
            XCTAssertFalse(PageTables.release(folio, allocator: allocator), "a PMD-mapped folio was freed")

            try mm.madviseDontneed(address: tib + 4096, length: 4096)
            XCTAssertFalse(mm.isHugePMD(tib))
            XCTAssertEqual(mapcounts(folio), [1, 0] + Array(repeating: 1, count: 510))
            XCTAssertEqual(ptlab_page_state(folio.desc + 1), PTLAB_PAGE_FREE.rawValue)
            XCTAssertFalse(PageTables.release(Page(folio.desc + 200), allocator: allocator), "a PTE-mapped page of a split folio was freed")
            XCTAssertEqual(mm.exit(), 0)
        }
    }

    /// Shared memory: the page cache holds the page, its mapping counts on
    /// it (through a move too), and the cache frees it once the mapping
    /// goes.
    func testASharedPageIsCountedByItsMappingAndFreedWithTheCache() throws {
        try withLab(expecting: .counting(badPageStates: 1)) { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: tib, length: 2 * mib, shared: true)
            try mm.touch(address: tib, length: 4096)
            let page = try mappedPage(mm, tib)
            try mm.mremap(from: tib, length: 2 * mib, to: tib + 64 * mib)
            XCTAssertEqual(ptlab_page_mapcount(page.desc), 1)
            XCTAssertFalse(PageTables.release(page, allocator: allocator), "a page of a mapped file was freed")
            try mm.munmap(address: tib + 64 * mib, length: 2 * mib)
            XCTAssertEqual(ptlab_page_mapcount(page.desc), 0)
            XCTAssertEqual(ptlab_page_state(page.desc), PTLAB_PAGE_FREE.rawValue, "the last unmap left the page cache")
            XCTAssertEqual(mm.exit(), 0)
        }
    }

    /// A shmem huge folio: mapped by a PMD (on its head), split by a
    /// partial MADV_DONTNEED (the PMD goes, the page cache keeps the folio),
    /// then mapped page by page through PTEs (on each page), made PROT_NONE
    /// and moved (the counts stay), and freed with the cache at the end.
    func testAShmemHugeFolioMappedByAPMDThenByPTEs() throws {
        let profile = MMProfile.thpAlways(shmem: .always)
        try withLab(profile: profile) { allocator in
            let mm = try MM(allocator: allocator, profile: profile)
            try mm.mmap(address: tib, length: 4 * mib, shared: true)
            try mm.touch(address: tib, length: 4096)
            let folio = try hugeFolio(mm, tib)
            XCTAssertEqual(ptlab_page_mapcount(folio.desc), 1)
            try mm.madviseDontneed(address: tib + 4096, length: 4096)
            XCTAssertEqual(ptlab_page_mapcount(folio.desc), 0)
            try mm.madviseHugepage(address: tib, length: 4 * mib, enable: false)
            try mm.touch(address: tib, length: 2 * mib, stride: 4096)
            XCTAssertEqual(mapcounts(folio), Array(repeating: 1, count: 512))
            try mm.mprotect(address: tib, length: 2 * mib, protection: .none)
            let moved = tib + 64 * mib + 64 * 1024
            try mm.mremap(from: tib, length: 2 * mib, to: moved)
            XCTAssertEqual(mapcounts(folio), Array(repeating: 1, count: 512))
            try mm.munmap(address: moved, length: 2 * mib)
            XCTAssertEqual(mapcounts(folio), Array(repeating: 0, count: 512))
            try mm.munmap(address: tib + 2 * mib, length: 2 * mib)
            XCTAssertEqual(ptlab_page_state(folio.desc), PTLAB_PAGE_FREE.rawValue, "the cache did not free the folio")
            XCTAssertEqual(mm.exit(), 0)
        }
    }

    /// Both collapses leave the new folio counted once, on its head: the
    /// anonymous one after a PROT_NONE huge PMD was split (its small
    /// pages, each counted, are freed as they are copied), the shmem one
    /// after collapse_file unmapped the old pages and the retract.
    func testACollapseCountsItsFolioOnceOnItsHead() throws {
        let anonymous = MMProfile.thpAlways()
        try withLab(profile: anonymous) { allocator in
            let mm = try MM(allocator: allocator, profile: anonymous)
            try mm.mmap(address: tib, length: 4 * mib)
            try mm.touch(address: tib, length: 4096)
            try mm.mprotect(address: tib, length: 2 * mib, protection: .none)
            try mm.mprotect(address: tib, length: 4096, protection: .rw)
            XCTAssertFalse(mm.isHugePMD(tib))
            try mm.mprotect(address: tib, length: 2 * mib, protection: .rw)
            try mm.madviseCollapse(address: tib, length: 2 * mib)
            try assertCountedOnHead(mm, tib)
            XCTAssertEqual(mm.exit(), 0)
        }
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: tib, length: 2 * mib, shared: true)
            try mm.touch(address: tib, length: 2 * mib, stride: 64 << 10)
            try mm.madviseCollapse(address: tib, length: 2 * mib)
            try assertCountedOnHead(mm, tib)
            XCTAssertEqual(mm.exit(), 0)
        }
    }

    /// A user entry naming a page table (a model bug) is a bad page state,
    /// and the table's owning-mm word, which the count would share, stays.
    func testAnEntryNamingAPageTableIsABadPageState() throws {
        try withLab(expecting: .counting(badPageStates: 2)) { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.touch(address: tib, length: 4096)
            let (_, _, table) = try XCTUnwrap(mm.findPTETable(tib))
            mm.addRmap(Entry(pfn: table.pfn, flags: .userPage))
            mm.removeRmap(Entry(pfn: table.pfn, flags: .userPage))
            XCTAssertEqual(ptlab_page_mm(table.desc), mm.token)
            XCTAssertEqual(mm.exit(), 0)
        }
    }

    /// An unmap of a page no entry maps is the other bad page state: it is
    /// counted once, and the count stays at zero so the page can go.
    func testUnmappingAnUnmappedPageIsABadPageState() throws {
        try withLab(expecting: .counting(badPageStates: 1)) { allocator in
            let mm = try MM(allocator: allocator)
            let page = try allocator.alloc()
            mm.removeRmap(Entry(pfn: page.pfn, flags: .userPage))
            XCTAssertEqual(ptlab_page_mapcount(page.desc), 0)
            XCTAssertTrue(PageTables.release(page, allocator: allocator))
            XCTAssertEqual(mm.exit(), 0)
        }
    }
}

/// A stress run whose model frees a mapped page (refused, and counted) and
/// whose updater then fails: the error says what the run had counted before,
/// since refused frees leak pages until an allocation fails, and an ENOMEM
/// alone would point away from the bug.
final class StressFailureAfterBadPageTests: XCTestCase {
    func testAnUpdaterFailureNamesTheBadPageStatesCountedBeforeIt() throws {
        let scenario = Scenario(
            name: "frees-a-mapped-page", summary: "a model bug by hand", modes: [.safe("kernel") { _ in }],
            walkers: [Scenario.Walker(kind: .gupFast, context: .irqsOff)],
            setUp: { mm, region in
                try mm.mmap(address: region.base, length: MM.pmdSize)
                try mm.touch(address: region.base, length: 4096)
            },
            step: { mm, region, _ in
                let page = try mappedPage(mm, region.base)
                PageTables.release(page, allocator: mm.allocator)
                throw MMError.mmGone
            })
        var options = StressOptions(scenario: scenario.name, mode: "kernel")
        options.walkers = 1
        options.duration = 30
        var params = PageAllocator.Parameters()
        params.nodeBudgetPages = 16_384
        let allocator = try PageAllocator(parameters: params)
        defer { allocator.unload() }
        let before = Integrity.snapshot()
        XCTAssertThrowsError(try StressRunner(options, scenario: scenario).run(allocator: allocator)) { error in
            guard case StressError.failedAfterIntegrityProblems(let failure, let problems) = error else {
                return XCTFail("\(error)")
            }
            XCTAssertEqual(failure, MMError.mmGone.description)
            XCTAssertEqual(problems, ["1 bad page states (data pages freed while still mapped, or unmapped once too often)"])
        }
        assertIntegrity(since: before, expecting: .counting(badPageStates: 1))
        XCTAssertEqual(allocator.totalAllocatedPages, 0, "the exit's zap did not free the page the model refused")
    }
}

/// The huge PMD at `address` maps a folio counted once, on its head.
private func assertCountedOnHead(_ mm: MM, _ address: UInt64, line: UInt = #line) throws {
    XCTAssertEqual(mapcounts(try hugeFolio(mm, address, line: line)), [1] + Array(repeating: 0, count: 511), line: line)
}

/// The folio the huge PMD at `address` maps.
private func hugeFolio(_ mm: MM, _ address: UInt64, line: UInt = #line) throws -> Page {
    XCTAssertTrue(mm.isHugePMD(address), line: line)
    let (_, slot) = try XCTUnwrap(mm.findPMD(address), line: line)
    return try XCTUnwrap(mm.allocator.pfnToPage(Entry(rawValue: ptlab_pte_read(slot)).pfn), line: line)
}

/// The mapcounts of a 2 MiB folio's 512 pages.
private func mapcounts(_ folio: Page) -> [Int64] {
    (0..<512).map { ptlab_page_mapcount(folio.desc + $0) }
}

/// The page the PTE for `address` maps.
private func mappedPage(_ mm: MM, _ address: UInt64) throws -> Page {
    let (_, _, table) = try XCTUnwrap(mm.findPTETable(address))
    let e = Entry(rawValue: ptlab_pte_read(mm.entry(in: table, level: .pte, address: address)))
    XCTAssertTrue(e.isPresent)
    return try XCTUnwrap(mm.allocator.pfnToPage(e.pfn))
}
