import CSupport
import Dispatch
import Synchronization
import XCTest
@testable import PageTableLab

/// The windows where an updater acts on what it saw before taking (or
/// retaking) the lock that guards it. Another updater's change is made in
/// the window, on another thread, every time (MM.raceWindowHook), and the
/// updater must find it as the kernel does: by looking again under the lock.
final class RaceWindowTests: XCTestCase {
    /// zap_huge_pmd looks at the PMD again under its lock
    /// (__pmd_trans_huge_lock): a huge PMD that a partial MADV_DONTNEED on
    /// another thread split after zap_pmd_range saw it is zapped as the PTE
    /// table it now is (and PT_RECLAIM frees that table), not unlinked with
    /// its 511 pages still mapped and leaked.
    func testAZapGoesOnToThePTETableOfAHugePMDSplitMeanwhile() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator, profile: .thpAlways())
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.touch(address: tib, length: 4096)
            XCTAssertTrue(mm.isHugePMD(tib))
            XCTAssertEqual(mm.vmPTEKilobytes, 12, "PUD + PMD + the deposit")
            let split = RacingChange(mm, in: .zapHugePMDUnlocked) { address in
                try mm.madviseDontneed(address: address, length: 4096)
            }
            try mm.madviseDontneed(address: tib, length: 2 * mib)
            mm.raceWindowHook = nil
            XCTAssertEqual(split.passes, 1)
            XCTAssertEqual(mm.thpEvents.splitPMD.load(ordering: .relaxed), 1, "the racing DONTNEED split the huge PMD")
            XCTAssertFalse(mm.isHugePMD(tib))
            XCTAssertNil(mm.findPTETable(tib))
            XCTAssertEqual(mm.vmPTEKilobytes, 8, "the split's table was zapped and reclaimed, not unlinked and lost")
            XCTAssertEqual(mm.exit(), 0)
        }
    }

    /// __split_huge_pmd_locked invalidates an anonymous huge PMD and fills
    /// its PTE table under the PMD lock, the entry still trans-huge: a
    /// DONTNEED of the whole 2 MiB on another thread meanwhile takes the
    /// PMD lock, waits, and zaps the table the split made. Had the split
    /// emptied the PMD, that DONTNEED would skip it and return with 511
    /// pages still mapped.
    func testADontneedBesideASplitWaitsForTheSplitAndZapsItsTable() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator, profile: .thpAlways())
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.touch(address: tib, length: 4096)
            XCTAssertTrue(mm.isHugePMD(tib))
            // The whole-range DONTNEED has either reached zap_huge_pmd's
            // lock or, skipping the PMD, returned.
            let waitingOrDone = DispatchSemaphore(value: 0)
            let racer = Mutex<RCUThread?>(nil)
            mm.raceWindowHook = { window, _ in
                switch window {
                case .splitHugePMDInvalidated:
                    let thread = RCUThread {
                        do {
                            try mm.madviseDontneed(address: tib, length: 2 * mib)
                        } catch {
                            XCTFail("the racing DONTNEED failed: \(error)")
                        }
                        waitingOrDone.signal()
                    }
                    racer.withLock { $0 = thread }
                    waitingOrDone.wait()
                case .zapHugePMDUnlocked:
                    waitingOrDone.signal()
                default:
                    break
                }
            }
            try mm.madviseDontneed(address: tib + 4096, length: 4096)
            racer.withLock { $0?.join() }
            mm.raceWindowHook = nil
            XCTAssertEqual(mm.thpEvents.splitPMD.load(ordering: .relaxed), 1)
            XCTAssertFalse(mm.isHugePMD(tib))
            XCTAssertNil(mm.findPTETable(tib), "the whole-range DONTNEED zapped the split's table and PT_RECLAIM freed it")
            XCTAssertEqual(mm.vmPTEKilobytes, 8)
            XCTAssertEqual(mm.exit(), 0)
        }
    }

    /// munmap splits a huge PMD its range cuts while it still holds the
    /// mmap write lock (__split_vma's vma_adjust_trans_huge), so that by
    /// the downgrade the huge PMD is a PTE table, and the zap under the
    /// read lock, beside faults and DONTNEEDs, meets no split of its own.
    func testMunmapSplitsAHugePMDItCutsBeforeItDowngrades() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator, profile: .thpAlways())
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.touch(address: tib, length: 2 * mib, stride: 64 << 10)
            XCTAssertTrue(mm.isHugePMD(tib))
            let hugeAtDowngrade = Mutex<Bool?>(nil)
            mm.raceWindowHook = { window, _ in
                guard window == .munmapDetached else { return }
                hugeAtDowngrade.withLock { $0 = mm.isHugePMD(tib) }
            }
            try mm.munmap(address: tib + mib, length: mib)
            mm.raceWindowHook = nil
            XCTAssertEqual(hugeAtDowngrade.withLock { $0 }, false, "split under the write lock")
            XCTAssertEqual(mm.thpEvents.splitPMD.load(ordering: .relaxed), 1)
            let (_, _, table) = try XCTUnwrap(mm.findPTETable(tib))
            let entries = (0..<512).map { Entry(rawValue: ptlab_pte_read(mm.entry(in: table, level: .pte, address: tib + UInt64($0) << 12))) }
            XCTAssertTrue(entries[..<256].allSatisfy(\.isPresent), "the half still mapped")
            XCTAssertTrue(entries[256...].allSatisfy(\.isNone), "the half unmapped")
            XCTAssertEqual(mm.exit(), 0)
        }
    }

    /// collapse_pte_mapped_thp looks the VMA up again once madvise_collapse
    /// has retaken the mmap lock, and takes the folio through the file it
    /// maps now: after a munmap and an mmap of another memfd in the window,
    /// the new file's small page stays mapped (SCAN_PAGE_COMPOUND: EINVAL),
    /// and the collapsed file's huge folio is mapped nowhere.
    func testCollapseTakesTheFolioFromTheFileMappedWhenTheLockIsRetaken() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: tib, length: 4 * mib, shared: true)
            try mm.touch(address: tib, length: 2 * mib, stride: 64 << 10)
            let collapsed = try XCTUnwrap(mm.vmas.first?.file)
            let remap = RacingChange(mm, in: .collapseMmapUnlocked) { address in
                // The collapsed file stays mapped above, so its cache stays.
                try mm.munmap(address: address, length: 2 * mib)
                try mm.mmap(address: address, length: 2 * mib, shared: true)
                try mm.touch(address: address, length: 4096)
            }
            XCTAssertThrowsError(try mm.madviseCollapse(address: tib, length: 2 * mib)) { error in
                guard case MMError.collapseRefused(_, let errno, _) = error else { return XCTFail("\(error)") }
                XCTAssertEqual(errno, .einval)
            }
            mm.raceWindowHook = nil
            XCTAssertEqual(remap.passes, 1)
            XCTAssertEqual(collapsed.lookup(0)?.huge, true, "collapse_file built the huge folio")
            let mapped = mm.vmas.first?.file
            XCTAssertFalse(mapped === collapsed)
            XCTAssertFalse(mm.isHugePMD(tib), "the collapsed file's folio mapped over another file")
            XCTAssertEqual(firstPTE(mm, tib)?.pfn, mapped?.lookup(0).map { UInt64($0.page.pfn) },
                           "the new file's page is still mapped")
            XCTAssertEqual(mm.exit(), 0)
        }
    }

    /// collapse_pte_mapped_thp checks, under the PTE lock, that every entry
    /// of the table it retracts maps the huge folio's own page: one that a
    /// uprobe (say) pointed at a page of its own while the mmap lock was
    /// dropped keeps the table, and the collapse fails (SCAN_FAIL: EINVAL)
    /// instead of freeing it with that page still mapped. SCAN_FAIL is not
    /// one madvise_collapse goes on from: the call ends there, and the next
    /// VMA (another memfd's) is not collapsed.
    func testCollapseKeepsATableThatMapsAPageNotTheFolios() throws {
        try withLab { allocator in
            let (mm, _) = try sharedMemoryMapped(allocator)
            try mm.mmap(address: tib + 2 * mib, length: 2 * mib, shared: true)
            try mm.touch(address: tib + 2 * mib, length: 2 * mib, stride: 64 << 10)
            let breakpoint = try allocator.alloc(node: .local, zero: true)
            let uprobe = RacingChange(mm, in: .collapseMmapUnlocked) { address in
                try mapPTE(mm, address, breakpoint)
            }
            XCTAssertThrowsError(try mm.madviseCollapse(address: tib, length: 4 * mib)) { error in
                guard case MMError.collapseRefused(let at, let errno, _) = error else { return XCTFail("\(error)") }
                XCTAssertEqual(errno, .einval)
                XCTAssertEqual(at, tib)
            }
            mm.raceWindowHook = nil
            XCTAssertEqual(uprobe.passes, 1, "the collapse went on to the next VMA")
            XCTAssertFalse(mm.isHugePMD(tib))
            XCTAssertFalse(mm.isHugePMD(tib + 2 * mib), "the collapse went on to the next VMA")
            XCTAssertEqual(firstPTE(mm, tib)?.pfn, UInt64(breakpoint.pfn), "the table and its entry stay")
            XCTAssertEqual(mm.vmPTEKilobytes, 16)
            XCTAssertEqual(mm.exit(), 0)
            PageTables.release(breakpoint, allocator: allocator)
        }
    }

    /// The same check lets through entries that map the folio's own pages
    /// (its small pages mapped by PTEs meanwhile): they are cleared with
    /// the table, and the folio is mapped by the PMD.
    func testCollapseRetractsATableThatMapsOnlyTheFoliosPages() throws {
        try withLab { allocator in
            let (mm, file) = try sharedMemoryMapped(allocator)
            let faults = RacingChange(mm, in: .collapseMmapUnlocked) { address in
                let folio = try XCTUnwrap(file.lookup(0))
                try mapPTE(mm, address + 3 * 4096, Page(folio.page.desc + 3))
            }
            try mm.madviseCollapse(address: tib, length: 2 * mib)
            mm.raceWindowHook = nil
            XCTAssertEqual(faults.passes, 1)
            XCTAssertTrue(mm.isHugePMD(tib))
            XCTAssertEqual(mm.vmPTEKilobytes, 8, "the table went")
            XCTAssertEqual(mm.exit(), 0)
        }
    }

    /// collapse_file looks at the page cache again under its lock. Here a
    /// first collapse (this thread) has passed its unlocked look and holds
    /// a huge folio of its own when a second (another thread) swaps its
    /// folio in, retracts the table and stops before installing; the first
    /// then goes on, and the second installs once the first is past its
    /// swap. The first must leave the second's folio in the cache, not
    /// take it for a small page, replace it and free it while the second's
    /// PMD is about to map it.
    func testCollapseFileLeavesAHugeFolioAnotherCollapseSwappedInMeanwhile() throws {
        try withLab { allocator in
            let (mm, file) = try sharedMemoryMapped(allocator)
            let choreography = TwoCollapses(mm, first: pthread_self())
            try mm.madviseCollapse(address: tib, length: 2 * mib)
            choreography.finish()
            mm.raceWindowHook = nil
            let folio = try XCTUnwrap(file.lookup(0))
            XCTAssertTrue(folio.huge)
            XCTAssertEqual(ptlab_page_state(folio.page.desc), PTLAB_PAGE_ALLOCATED.rawValue)
            let (_, slot) = try XCTUnwrap(mm.findPMD(tib))
            let pmd = Entry(rawValue: ptlab_pte_read(slot))
            XCTAssertTrue(pmd.isHugeLeaf)
            XCTAssertEqual(pmd.pfn, UInt64(folio.page.pfn), "the PMD maps a folio the page cache no longer holds")
            let mapped = try XCTUnwrap(allocator.descriptor(pfn: pmd.pfn))
            XCTAssertEqual(ptlab_page_state(mapped), PTLAB_PAGE_ALLOCATED.rawValue, "the PMD maps a freed folio")
            XCTAssertEqual(mm.exit(), 0)
        }
    }

    /// collapse_file unmaps the old pages everywhere before it copies
    /// them: a store made through the old mapping after the huge folio has
    /// gone into the page cache, but before the unmap, is in the huge folio
    /// afterwards, not lost with the small page it went into.
    func testCollapseFileCopiesAStoreMadeBeforeTheUnmap() throws {
        try withLab { allocator in
            let (mm, file) = try sharedMemoryMapped(allocator)
            let offset = 16 * 4096 + 123
            let store = RacingChange(mm, in: .collapseFileBeforeUnmap) { address in
                try mm.storeByte(0xa5, at: address + UInt64(offset))
            }
            try mm.madviseCollapse(address: tib, length: 2 * mib)
            mm.raceWindowHook = nil
            XCTAssertEqual(store.passes, 1)
            let folio = try XCTUnwrap(file.lookup(0))
            XCTAssertTrue(folio.huge)
            XCTAssertTrue(mm.isHugePMD(tib))
            XCTAssertEqual(allocator.address(of: folio.page).load(fromByteOffset: offset, as: UInt8.self), 0xa5,
                           "the store made before the unmap was lost: the page was copied before it")
            XCTAssertEqual(mm.exit(), 0)
        }
    }

    /// A fault on the range while collapse_file holds the huge folio
    /// locked, between the unmap and retract_page_tables, waits for the
    /// folio (shmem_fault's folio_lock), so the table the retract frees
    /// has nothing of the range in it; then it looks the page cache up
    /// again and maps the huge folio's page, not an old small one.
    func testAFaultOnTheRangeWaitsForTheCollapsedFolioUntilTheTablesAreRetracted() throws {
        try withLab { allocator in
            let (mm, file) = try sharedMemoryMapped(allocator)
            let small = try XCTUnwrap(file.lookup(16))
            let fault = FaultMeetsCollapse(mm, first: pthread_self(), at: tib + 16 * 4096)
            try mm.madviseCollapse(address: tib, length: 2 * mib)
            let mapped = fault.finish()
            mm.raceWindowHook = nil
            XCTAssertTrue(fault.waited, "the fault did not wait for the locked folio")
            XCTAssertEqual(fault.entriesBeforeRetract, 0, "retract_page_tables was about to free a table mapping the range")
            let folio = try XCTUnwrap(file.lookup(0))
            XCTAssertTrue(folio.huge)
            XCTAssertNotEqual(mapped, allocator.address(of: small.page), "the fault mapped the old small page")
            XCTAssertEqual(mapped, allocator.address(of: folio.page) + 16 * 4096, "the fault did not map the huge folio's page")
            XCTAssertTrue(mm.isHugePMD(tib))
            XCTAssertEqual(mm.vmPTEKilobytes, 8, "the table went")
            XCTAssertEqual(mm.exit(), 0)
        }
    }

    /// A fault at a hole of the range that found nothing in the page cache
    /// before a collapse (another thread) put its huge folio there does not
    /// put a small folio of its own inside the huge folio's range: the
    /// insert fails as on any slot the huge folio holds, and the fault
    /// looks again and maps the huge folio's page. A small folio slipped
    /// in would be mapped into a table the collapse's retract frees, or
    /// outlive it in the cache beside the huge folio.
    func testAFaultThatMissedTheCacheMapsTheHugeFolioACollapsePutThereMeanwhile() throws {
        try withLab { allocator in
            let (mm, file) = try sharedMemoryMapped(allocator)
            XCTAssertNil(file.lookup(5), "page 5 is a hole")
            let collapse = RacingChange(mm, in: .faultCacheMissed) { address in
                try mm.madviseCollapse(address: address & ~(2 * mib - 1), length: 2 * mib)
            }
            let mapped = try mm.fault(at: tib + 5 * 4096)
            mm.raceWindowHook = nil
            XCTAssertEqual(collapse.passes, 1)
            let folio = try XCTUnwrap(file.lookup(0))
            XCTAssertTrue(folio.huge)
            XCTAssertEqual(file.cachedPages, 512, "a small folio went into the huge folio's range")
            XCTAssertEqual(mapped, allocator.address(of: folio.page) + 5 * 4096)
            XCTAssertTrue(mm.isHugePMD(tib))
            XCTAssertEqual(mm.exit(), 0)
        }
    }

    /// set_huge_pmd fails where the PMD is no longer none (do_set_pmd): a
    /// fault that mapped a page with a new PTE table between the retract
    /// and the install keeps it, and the collapse reports SCAN_FAIL
    /// (EINVAL), not success, since no huge PMD maps the range.
    func testCollapseFailsWhenAFaultRefilledThePMDBeforeTheInstall() throws {
        try withLab { allocator in
            let (mm, file) = try sharedMemoryMapped(allocator)
            let fault = RacingChange(mm, in: .collapseBeforeInstall) { address in
                let folio = try XCTUnwrap(file.lookup(0))
                try mapPTE(mm, address, folio.page)
            }
            XCTAssertThrowsError(try mm.madviseCollapse(address: tib, length: 2 * mib)) { error in
                guard case MMError.collapseRefused(_, let errno, _) = error else { return XCTFail("\(error)") }
                XCTAssertEqual(errno, .einval)
            }
            mm.raceWindowHook = nil
            XCTAssertEqual(fault.passes, 1)
            XCTAssertFalse(mm.isHugePMD(tib))
            XCTAssertEqual(firstPTE(mm, tib)?.pfn, file.lookup(0).map { UInt64($0.page.pfn) }, "the fault's PTE stays")
            XCTAssertEqual(mm.exit(), 0)
        }
    }
    /// move_ptes looks at the new PTE table again under RCU and its lock.
    /// mremap holds no rmap lock to move entries of a copy of its own, so
    /// a collapse's retract_page_tables, reaching the copy through the
    /// rmap, may take the table move_page_tables has just allocated there
    /// (the copy lines up with its file pages; the source does not, so
    /// every extent moves entry by entry). The move then starts the extent
    /// again and allocates a new table, instead of putting the entries in
    /// the freed one, where they would be lost with their pages.
    func testMovePTEsStartsAgainWhenARetractTookTheNewTable() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            let source = tib + 64 << 10, copy = tib + gib
            try mm.mmap(address: source, length: 4 * mib, shared: true)
            try mm.touch(address: source, length: 64 << 10)
            let file = try XCTUnwrap(mm.vmas.first?.file)
            let retract = RacingChange(mm, in: .mremapBeforeMovePTEs) { address in
                XCTAssertEqual(address, copy)
                mm.retractPageTables(file, 0, target: (mm, copy))
                XCTAssertNil(mm.findPTETable(copy), "the retract took the new table")
                try RCU.barrier()
            }
            try mm.mremap(from: source, length: 4 * mib, to: copy)
            mm.raceWindowHook = nil
            XCTAssertEqual(retract.passes, 2, "the extent was started again")
            XCTAssertEqual(firstPTE(mm, copy)?.pfn, file.lookup(0).map { UInt64($0.page.pfn) },
                           "the moved entry is in a table linked at the new address")
            XCTAssertEqual(mm.exit(), 0)
        }
    }

    /// A munmap that has taken the VMA out of the tree but not zapped it
    /// yet, while collapse_file unmaps the range's old pages: the VMA is
    /// still in the file's rmap (free_pgtables unlinks it), so the unmap
    /// must still find it and clear its entries before the old pages are
    /// freed. Found through the tree alone, it was missed, and the pages
    /// were freed while its PTEs mapped them (a bad page state now).
    func testCollapseFileUnmapsAVMAAMunmapHasDetachedButNotZapped() throws {
        try withLab { allocator in
            let (mm, file) = try sharedMemoryMapped(allocator)
            let old = try XCTUnwrap(file.lookup(16)).page
            let munmap = MunmapMeetsCollapse(mm, collapse: pthread_self())
            do {
                try mm.madviseCollapse(address: tib, length: 2 * mib)
                XCTFail("collapse_pte_mapped_thp found the VMA the munmap took out")
            } catch let error as MMError {
                guard case .collapseRefused(let at, _, _) = error, at == tib else { return XCTFail("\(error)") }
            }
            munmap.finish()
            mm.raceWindowHook = nil
            XCTAssertEqual(munmap.oldPageState, PTLAB_PAGE_FREE.rawValue, "collapse_file could not free an old page")
            XCTAssertEqual(ptlab_page_state(old.desc), PTLAB_PAGE_FREE.rawValue)
            XCTAssertEqual(mm.exit(), 0)
        }
    }

    /// 6.17-rc1's collapse_huge_page checked the PMD before it write-locked
    /// the VMA. A DONTNEED under that VMA's lock alone (6.17+) then
    /// reclaims the table in between, and the collapse, past
    /// vma_start_write, finds the PMD none: a stale table write (the kernel
    /// put back page 0 as the table). In the fixed order the VMA is
    /// write-locked by the check, no DONTNEED can take it, and the same
    /// collapse runs whole.
    func testACollapseThatChecksBeforeLockingTheVMALosesItsTableToADontneed() throws {
        try withLab { allocator in
            for checksFirst in [true, false] {
                var profile = MMProfile()
                profile.collapseChecksBeforeVMAWrite = checksFirst
                let mm = try MM(allocator: allocator, profile: profile)
                try mm.mmap(address: tib, length: 2 * mib)
                try mm.touch(address: tib, length: 2 * mib, stride: 64 << 10)
                mm.raceWindowHook = { window, _ in
                    guard window == .collapseChecked else { return }
                    let lockable = mm.faultWouldLockVMA(at: tib)
                    XCTAssertEqual(lockable, checksFirst, "the checked VMA is write-locked only in the kernel's order")
                    guard lockable else { return }
                    do { try mm.madviseDontneed(address: tib, length: 2 * mib) } catch { XCTFail("DONTNEED: \(error)") }
                }
                do {
                    try mm.madviseCollapse(address: tib, length: 2 * mib)
                    XCTAssertFalse(checksFirst, "the collapse went on over a PMD the DONTNEED emptied")
                } catch {
                    XCTAssertTrue(checksFirst, "\(error)")
                }
                mm.raceWindowHook = nil
                XCTAssertEqual(mm.staleTableWrites.load(ordering: .relaxed), checksFirst ? 1 : 0)
                XCTAssertEqual(mm.isHugePMD(tib), !checksFirst)
                mm.exit()
            }
        }
    }
}

/// An mm with 2 MiB of shared memory at `tib`, a page in every 16 of it
/// faulted in (small pages, through a PTE table), and the file behind it.
private func sharedMemoryMapped(_ allocator: PageAllocator) throws -> (MM, ShmemFile) {
    let mm = try MM(allocator: allocator)
    try mm.mmap(address: tib, length: 2 * mib, shared: true)
    try mm.touch(address: tib, length: 2 * mib, stride: 64 << 10)
    return (mm, try XCTUnwrap(mm.vmas.first?.file))
}

/// Put `page` in the PTE for `address` under the mmap read lock, a PTE
/// table allocated if none is there: what a fault of a small page does, or
/// a uprobe replacing a file page with a copy of its own.
private func mapPTE(_ mm: MM, _ address: UInt64, _ page: Page) throws {
    try mm.mmapLock.withReadLock { () throws(MMError) in
        let (pmdTable, slot) = try mm.walkToPMD(address)
        _ = try mm.populate(slot, parent: pmdTable, level: .pmd, child: .pte)
        mm.withPTEOffsetMapLock(slot) { table in
            mm.setLeaf(mm.entry(in: table, level: .pte, address: address), Entry(pfn: page.pfn, flags: .userPage))
        }
    }
}

/// The first entry of the PTE table mapping `address`, nil without one.
private func firstPTE(_ mm: MM, _ address: UInt64) -> Entry? {
    guard let (_, _, table) = mm.findPTETable(address) else { return nil }
    return Entry(rawValue: ptlab_pte_read(mm.allocator.address(of: table).assumingMemoryBound(to: UInt64.self)))
}

/// A choreography's wait for another thread's step. The step comes within
/// microseconds; the bound only turns a regression that never makes it
/// into a failure instead of a test process that hangs.
private func waitForStep(_ step: DispatchSemaphore, _ failure: String) {
    if step.wait(timeout: .now() + 60) == .timedOut { XCTFail(failure) }
}

/// The two collapses of testCollapseFileLeavesAHugeFolioAnotherCollapse-
/// SwappedInMeanwhile, on `mm`'s race windows: the first thread, at its
/// swap, starts the second and waits until that one is about to install;
/// the first lets it install once past its own swap and free, then waits
/// for it.
private final class TwoCollapses: @unchecked Sendable {
    private let atInstall = DispatchSemaphore(value: 0)
    private let install = DispatchSemaphore(value: 0)
    private var second: RCUThread?

    init(_ mm: MM, first: pthread_t) {
        mm.raceWindowHook = { [self] window, address in
            let onFirst = pthread_equal(pthread_self(), first) != 0
            switch window {
            case .collapseFileBeforeSwap where onFirst && second == nil:
                second = RCUThread {
                    do { try mm.madviseCollapse(address: address, length: 2 * mib) } catch {
                        XCTFail("the second collapse failed: \(error)")
                    }
                }
                waitForStep(atInstall, "the second collapse never reached its install")
            case .collapseBeforeInstall where !onFirst:
                atInstall.signal()
                waitForStep(install, "the first collapse never went past its swap")
            case .collapseMmapUnlocked where onFirst && second != nil:
                install.signal()
                finish()
            default:
                break
            }
        }
    }

    /// Wait for the second collapse. Idempotent.
    func finish() { second?.join() }
}

/// The fault of testAFaultOnTheRangeWaitsForTheCollapsedFolioUntilThe-
/// TablesAreRetracted: started on another thread when the collapse (this
/// thread) is between collapse_file's unmap and its retract; the collapse
/// goes on once the fault is about to wait for the folio lock (or, with
/// no lock to wait for, has mapped its page), having counted the entries
/// of the table it is about to retract.
private final class FaultMeetsCollapse: @unchecked Sendable {
    private let met = DispatchSemaphore(value: 0)
    private var fault: RCUThread?
    private var mapped: UnsafeMutableRawPointer?
    /// The fault found the folio locked (written on its thread before it
    /// wakes the collapse, read after `finish`).
    private(set) var waited = false
    /// Present entries in the table at the fault's address as the collapse
    /// was about to retract it.
    private(set) var entriesBeforeRetract: Int?

    init(_ mm: MM, first: pthread_t, at address: UInt64) {
        mm.raceWindowHook = { [self] window, _ in
            let onFirst = pthread_equal(pthread_self(), first) != 0
            switch window {
            case .collapseFileBeforeRetract where onFirst && fault == nil:
                fault = RCUThread { [self] in
                    do { mapped = try mm.fault(at: address) } catch {
                        XCTFail("the fault failed: \(error)")
                    }
                    met.signal()
                }
                waitForStep(met, "the fault neither waited for the folio nor mapped its page")
                entriesBeforeRetract = mm.findPTETable(address).map { (_, _, table) in
                    let ptes = mm.allocator.address(of: table).assumingMemoryBound(to: UInt64.self)
                    return (0..<512).filter { Entry(rawValue: ptlab_pte_read(ptes + $0)).isPresent }.count
                }
            case .faultFolioLocked where !onFirst && !waited:
                waited = true
                met.signal()
            default:
                break
            }
        }
    }

    /// Wait for the fault; what it mapped.
    func finish() -> UnsafeMutableRawPointer? {
        fault?.join()
        return mapped
    }
}

/// The munmap of testCollapseFileUnmapsAVMAAMunmapHasDetachedButNotZapped:
/// started when the collapse (thread `collapse`) is about to unmap the old
/// pages, it stops once its VMA is out of the tree and nothing is zapped;
/// the collapse goes on through collapse_file, and when that is done (old
/// pages freed, or refused) notes the state of page 16's old page and lets
/// the munmap finish.
private final class MunmapMeetsCollapse: @unchecked Sendable {
    private let detached = DispatchSemaphore(value: 0)
    private let proceed = DispatchSemaphore(value: 0)
    private var munmap: RCUThread?
    /// The state of the old page at file page 16 once collapse_file was done.
    private(set) var oldPageState: UInt32?

    init(_ mm: MM, collapse: pthread_t) {
        let old = mm.vmas.first?.file?.lookup(16)?.page
        mm.raceWindowHook = { [self] window, _ in
            let onCollapse = pthread_equal(pthread_self(), collapse) != 0
            switch window {
            case .collapseFileBeforeUnmap where onCollapse && munmap == nil:
                munmap = RCUThread {
                    do { try mm.munmap(address: tib, length: 2 * mib) } catch {
                        XCTFail("the munmap failed: \(error)")
                    }
                }
                waitForStep(detached, "the munmap never took its VMA out of the tree")
            case .munmapDetached where !onCollapse:
                detached.signal()
                waitForStep(proceed, "the collapse never finished collapse_file")
            case .collapseMmapUnlocked where onCollapse:
                oldPageState = old.map { ptlab_page_state($0.desc) }
                proceed.signal()
            default:
                break
            }
        }
    }

    /// Wait for the munmap. Idempotent.
    func finish() { munmap?.join() }
}

/// A change another thread makes the first time an updater of `mm` passes
/// `window`; the updater waits there until it is made, as one preempted in
/// the window would.
final class RacingChange: Sendable {
    private let passed = Atomic<Int>(0)
    /// How many times an updater passed the window.
    var passes: Int { passed.load(ordering: .relaxed) }

    init(_ mm: MM, in window: RaceWindow, _ change: @escaping @Sendable (UInt64) throws -> Void) {
        mm.raceWindowHook = { [self] at, address in
            guard at == window, passed.add(1, ordering: .relaxed).newValue == 1 else { return }
            let other = RCUThread {
                do {
                    try change(address)
                } catch {
                    XCTFail("the racing change failed: \(error)")
                }
            }
            other.join()
        }
    }
}
