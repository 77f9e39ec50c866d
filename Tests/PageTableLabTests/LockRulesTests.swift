import CSupport
import Synchronization
import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// The kernel's lock rules, one at a time (KERNEL-NOTES §9): two updaters
/// on one PTE table, each under the lock its operation takes; munmap's
/// downgrade of the mmap lock; the sync IPI that waits but flushes nothing;
/// and the profile no kernel shipped. A race test runs both updaters for a
/// fixed number of rounds; its unsafe twin (no pmd_same re-check) must see
/// the bug within the same bound, or the test could not fail.
final class LockRulesTests: XCTestCase {
    /// Rounds the leading updater runs (a collapse round costs a hundred
    /// faults) while the other races it; an unsafe twin stops at its first
    /// stale write.
    private let faultRounds = 40_000
    /// The unsafe race stops at its first stale write; this bounds a run in
    /// which the window never opens (a fault's PMD read to its ptlock is a
    /// page allocation and clear_page wide).
    private let unsafeFaultRounds = 400_000
    private let collapseRounds = 2_000

    /// Run `a` for `rounds` rounds and `b` for as long as `a` runs, on two
    /// registered threads (both stop early when `stop` says so), with the
    /// MMError refusals a racing updater meets (its range unmapped
    /// meanwhile) ignored.
    private func race(rounds: Int, _ a: @escaping @Sendable (Int) throws -> Void, _ b: @escaping @Sendable (Int) throws -> Void,
                      stop: @escaping @Sendable () -> Bool) {
        let failures = LabMutex<[String]>([])
        let aDone = LabMutex(false)
        let loop: @Sendable (Int, @escaping @Sendable () -> Bool, @escaping @Sendable (Int) throws -> Void) -> Void = { rounds, done, body in
            for i in 0..<rounds {
                if stop() || done() { break }
                do {
                    try body(i)
                } catch MMError.notMapped, MMError.mappingExists, MMError.collapseRefused {
                    continue
                } catch {
                    failures.withLock { $0.append("\(error)") }
                    return
                }
            }
        }
        let threads = [
            RCUThread {
                loop(rounds, { false }, a)
                aDone.withLock { $0 = true }
            },
            RCUThread { loop(.max, { aDone.withLock { $0 } }, b) },
        ]
        for t in threads { t.join() }
        XCTAssertEqual(failures.withLock { $0 }, [])
    }

    /// A fault and MADV_DONTNEED (PT_RECLAIM) on the same table, both under
    /// the VMA's read lock (or the mmap read lock): the DONTNEED may unlink
    /// the table between the fault's PMD read and its ptlock, and only the
    /// re-check sends the fault back to allocate a new one.
    private func faultRacingDontneed(recheck: Bool, rounds: Int) throws -> (staleWrites: Int, leaked: Int) {
        var profile = MMProfile()
        profile.skipPMDRecheck = !recheck
        return try withLoadedAllocator { allocator in
            let mm = try MM(allocator: allocator, profile: profile)
            try mm.mmap(address: tib, length: 2 * mib)
            let stale: @Sendable () -> Bool = { !recheck && mm.staleTableWrites.load(ordering: .relaxed) > 0 }
            race(rounds: rounds, { i in try mm.touch(address: tib + UInt64(i % 512) << 12, length: 4096) },
                 { _ in try mm.madviseDontneed(address: tib, length: 2 * mib) },
                 stop: stale)
            XCTAssertEqual(mm.pgtablesBytes, mm.tableBytesHeld, "VmPTE against the tables held")
            let staleWrites = mm.staleTableWrites.load(ordering: .relaxed)
            try mm.munmap(address: tib, length: 2 * mib)
            mm.exit()
            return staleWrites
        }
    }

    func testAFaultRacingDontneedRechecksThePMD() throws {
        let (stale, leaked) = try faultRacingDontneed(recheck: true, rounds: faultRounds)
        XCTAssertEqual(stale, 0)
        XCTAssertEqual(leaked, 0)
    }

    /// Without the re-check the fault fills the reclaimed table: the PTE is
    /// lost with it, and so is the page it mapped, one page per stale write.
    func testAFaultRacingDontneedWithoutTheRecheckLosesItsPage() throws {
        let (stale, leaked) = try faultRacingDontneed(recheck: false, rounds: unsafeFaultRounds)
        XCTAssertGreaterThan(stale, 0, "no fault filled a reclaimed table in \(unsafeFaultRounds) rounds")
        XCTAssertEqual(leaked, stale, "each stale write loses the page it mapped")
    }

    /// The retract of a shmem collapse (no mmap lock) against faults and
    /// DONTNEED zaps of the same table under the read lock: a fault that
    /// found the table before the retract cleared the PMD must not fill it.
    private func retractRacingFaultsAndZaps(recheck: Bool) throws -> Int {
        var profile = MMProfile()
        profile.skipPMDRecheck = !recheck
        return try withLoadedAllocator { allocator in
            let mm = try MM(allocator: allocator, profile: profile)
            try mm.mmap(address: tib, length: 2 * mib, shared: true)
            let stale: @Sendable () -> Bool = { !recheck && mm.staleTableWrites.load(ordering: .relaxed) > 0 }
            race(rounds: collapseRounds, { _ in
                if mm.isHugePMD(tib) {
                    try mm.munmap(address: tib, length: 2 * mib)
                    try mm.mmap(address: tib, length: 2 * mib, shared: true)
                }
                try mm.touch(address: tib, length: 2 * mib, stride: 64 << 10)
                try mm.madviseCollapse(address: tib, length: 2 * mib)
            }, { i in
                if i & 1 == 0 {
                    try mm.touch(address: tib + UInt64(i % 512) << 12, length: 4096)
                } else {
                    try mm.madviseDontneed(address: tib + UInt64(i % 32) << 16, length: 64 << 10)
                }
            }, stop: stale)
            XCTAssertEqual(mm.pgtablesBytes, mm.tableBytesHeld, "VmPTE against the tables held")
            XCTAssertGreaterThan(mm.thpEvents.collapseAlloc.load(ordering: .relaxed), 0, "no collapse, so no retract")
            let staleWrites = mm.staleTableWrites.load(ordering: .relaxed)
            try mm.munmap(address: tib, length: 2 * mib)
            mm.exit()
            return staleWrites
        }.staleWrites
    }

    func testTheRetractRacingFaultsAndZapsIsRechecked() throws {
        XCTAssertEqual(try retractRacingFaultsAndZaps(recheck: true), 0)
    }

    /// Without the pmd_same re-check too, no fault fills a table the
    /// retract took: a fault maps a page of the range only while it holds
    /// that page's folio locked, and collapse_file and
    /// collapse_pte_mapped_thp hold the range's folios locked across their
    /// retracts ("page lock would prevent establishing any new ptes of the
    /// page", retract_page_tables). The race the re-check closes is
    /// PT_RECLAIM's (testAFaultRacingDontneedWithoutTheRecheckLosesItsPage).
    func testTheFolioLockKeepsFaultsOutOfARetractedTableEvenWithoutTheRecheck() throws {
        XCTAssertEqual(try retractRacingFaultsAndZaps(recheck: false), 0)
    }

    /// munmap detaches its VMAs under the write lock, then zaps and frees
    /// their tables under the read lock: while it does, other readers get
    /// in, and a walker under the read lock no longer finds the range.
    func testMunmapZapsWithItsLockDowngraded() throws {
        final class Probe: MMUNotifier, @unchecked Sendable {
            var calls = 0
            var readLockTaken = 0
            var walkerFoundTheRange = 0
            func invalidateSecondaryTLBs(mm: MM, start: UInt64, end: UInt64) {
                calls += 1
                guard mm.mmapLock.tryLockRead() else { return }
                mm.mmapLock.unlockRead()
                readLockTaken += 1
                let cpu = CPU(id: 0, tlb: mm.tlb)
                var counters = WalkCounters()
                mm.pteOffsetMap(tib, context: .mmapRead, cpu: cpu, counters: &counters)
                cpu.offline()
                if counters.notMapped == 0 { walkerFoundTheRange += 1 }
            }
        }
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: tib, length: 8 * mib)
            try mm.touch(address: tib, length: 8 * mib)
            let probe = Probe()
            mm.registerNotifier(probe)
            try mm.munmap(address: tib, length: 8 * mib)
            mm.unregisterNotifier(probe)
            XCTAssertGreaterThan(probe.calls, 0, "munmap flushed nothing")
            XCTAssertEqual(probe.readLockTaken, probe.calls, "a reader was shut out while munmap zapped")
            XCTAssertEqual(probe.walkerFoundTheRange, 0, "a walker under the read lock found a detached VMA")
            XCTAssertGreaterThan(mm.lastGather.tablesQueued, 0)
            mm.exit()
        }
    }

    /// mmap, mremap and mprotect keep the write lock: no reader meanwhile.
    func testMprotectHoldsTheWriteLock() throws {
        final class Probe: MMUNotifier, @unchecked Sendable {
            var calls = 0
            var readLockTaken = 0
            func invalidateSecondaryTLBs(mm: MM, start: UInt64, end: UInt64) {
                calls += 1
                if mm.mmapLock.tryLockRead() {
                    mm.mmapLock.unlockRead()
                    readLockTaken += 1
                }
            }
        }
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.touch(address: tib, length: 2 * mib)
            let probe = Probe()
            mm.registerNotifier(probe)
            try mm.mprotect(address: tib, length: 2 * mib, protection: .r)
            mm.unregisterNotifier(probe)
            XCTAssertGreaterThan(probe.calls, 0)
            XCTAssertEqual(probe.readLockTaken, 0)
            try mm.munmap(address: tib, length: 2 * mib)
            mm.exit()
        }
    }

    /// Before 6.6 the retract freed its table after the sync IPI alone,
    /// which is safe only because it held the mm's mmap write lock: no
    /// walker holding the read lock (every pte_offset_map user then) can
    /// be inside the table when it goes. Since 6.6 it holds none, and
    /// pte_free_defer's grace period covers them. Probed at each free.
    func testThePre6_6RetractFreesUnderTheMMapWriteLock() throws {
        for (profile, inner, locked) in [(MMProfile.pre6_14, SyncIPIRetractFree() as any RetractFreePolicy, true),
                                         (MMProfile.v6_14, PteFreeDefer(), false)] {
            try withLab(profile: profile) { allocator in
                let probe = RetractProbe(inner)
                var profile = profile
                profile.collapseFree = probe
                let mm = try MM(allocator: allocator, profile: profile)
                try mm.mmap(address: tib, length: 2 * mib, shared: true)
                try mm.touch(address: tib, length: 2 * mib, stride: 64 << 10)
                try mm.madviseCollapse(address: tib, length: 2 * mib)
                XCTAssertTrue(mm.isHugePMD(tib))
                XCTAssertEqual(probe.frees, 1, inner.name)
                XCTAssertEqual(probe.readerGotIn, locked ? 0 : 1,
                               "\(inner.name): a reader of the mmap lock could be in the table as it was freed")
                XCTAssertEqual(mm.exit(), 0)
            }
        }
    }

    /// Before 6.6, retract_page_tables only trylocks the mmap write lock
    /// (it holds the huge folio's lock, which a fault under the mmap lock
    /// may be waiting for): where a reader holds it, the table stays, and
    /// collapse_pte_mapped_thp, under the write lock madvise_collapse takes
    /// once the reader is gone, retracts it. Since 6.6 the retract takes
    /// the table whoever holds the mmap lock.
    func testThePre6_6RetractLeavesATableWhoseMMapLockIsHeld() throws {
        for (profile, kept) in [(MMProfile.pre6_14, true), (MMProfile.v6_14, false)] {
            try withLab(profile: profile) { allocator in
                let mm = try MM(allocator: allocator, profile: profile)
                try mm.mmap(address: tib, length: 2 * mib, shared: true)
                try mm.touch(address: tib, length: 2 * mib, stride: 64 << 10)
                let tableAfterCollapseFile = LabMutex<Bool?>(nil)
                // A walker's read lock, taken once collapse_file has
                // unmapped the old pages and given up when it is done (the
                // lock has no owner: which thread holds it does not matter).
                mm.raceWindowHook = { window, address in
                    switch window {
                    case .collapseFileBeforeRetract:
                        mm.mmapLock.lockRead()
                    case .collapseMmapUnlocked:
                        tableAfterCollapseFile.withLock { $0 = mm.findPTETable(address) != nil }
                        mm.mmapLock.unlockRead()
                    default:
                        break
                    }
                }
                try mm.madviseCollapse(address: tib, length: 2 * mib)
                mm.raceWindowHook = nil
                XCTAssertEqual(tableAfterCollapseFile.withLock { $0 }, kept)
                XCTAssertTrue(mm.isHugePMD(tib))
                XCTAssertEqual(mm.vmPTEKilobytes, 8, "PUD + PMD: the table went, in the retract or in collapse_pte_mapped_thp")
                XCTAssertEqual(mm.exit(), 0)
            }
        }
    }

    /// mremap flushes what it moved before it drops the locks of the
    /// entries it moved (move_ptes, move_normal_pmd, move_huge_pmd): the
    /// new entry's lock held until the old translation is gone is what
    /// keeps a zap through the rmap of the new mapping from freeing the
    /// page while a CPU still reaches it through the old one
    /// (CVE-2018-18281). Probed at the move's flush (the first secondary
    /// TLB invalidation of each mremap), by trying the lock of the table
    /// holding the new entry.
    func testMremapFlushesBeforeDroppingTheLocksOfWhatMoved() throws {
        final class Probe: MMUNotifier, @unchecked Sendable {
            let newEntryLocked: (MM) -> Bool
            var firstFlushHeldTheLock: Bool?
            init(_ newEntryLocked: @escaping (MM) -> Bool) { self.newEntryLocked = newEntryLocked }
            func invalidateSecondaryTLBs(mm: MM, start: UInt64, end: UInt64) {
                if firstFlushHeldTheLock == nil { firstFlushHeldTheLock = newEntryLocked(mm) }
            }
        }
        func locked(_ table: Page?) -> Bool {
            guard let table else { return false }
            guard ptlab_ptl_trylock(table.desc) != 0 else { return true }
            ptlab_ptl_unlock(table.desc)
            return false
        }
        let new = tib + 64 * gib
        // (what moves, the range, where it lands, the table whose lock guards the new entry)
        let moves: [(String, UInt64, UInt64, UInt64, (MM) -> Page?)] = [
            ("move_ptes", tib + 64 << 10, 64 << 10, new + 64 << 10, { mm in mm.findPTETable(new).map { $0.2 } }),
            ("move_normal_pmd", tib, 2 * mib, new, { mm in mm.findPMD(new).map { $0.0 } }),
            ("move_huge_pmd", tib, 2 * mib, new, { mm in mm.findPMD(new).map { $0.0 } }),
        ]
        for (what, old, length, to, guardTable) in moves {
            var profile = MMProfile.v6_14
            profile.thp = THPSettings(enabled: what == "move_huge_pmd" ? .always : .never, shmemEnabled: .never)
            try withLab(profile: profile) { allocator in
                let mm = try MM(allocator: allocator, profile: profile)
                try mm.mmap(address: tib, length: 2 * mib)
                try mm.touch(address: tib, length: 2 * mib, stride: 64 << 10)
                XCTAssertEqual(mm.isHugePMD(tib), what == "move_huge_pmd", what)
                let probe = Probe { mm in locked(guardTable(mm)) }
                mm.registerNotifier(probe)
                try mm.mremap(from: old, length: length, to: to)
                mm.unregisterNotifier(probe)
                XCTAssertEqual(probe.firstFlushHeldTheLock, true, "\(what) flushed after dropping the new entry's lock")
                mm.exit()
            }
        }
    }

    /// mremap takes the rmap lock where the kernel does and nowhere else:
    /// always to move a whole table (move_normal_pmd: the collapse's
    /// retract reaches tables through the rmap alone), and to move entries
    /// or a huge PMD only when copy_vma says so (need_rmap_locks: the copy
    /// merged into a neighbour that may come before the source in rmap
    /// order). Where it is not taken, rmap order puts the source before
    /// the copy whatever their addresses. Probed at each move's flush: can
    /// an rmap walker get in, and in what order would it find the VMAs.
    func testMremapTakesTheRmapLockOnlyWhereTheKernelDoes() throws {
        final class Probe: MMUNotifier, @unchecked Sendable {
            var rmapReaderGotIn: Bool?
            var rmapOrder: [UInt64] = []
            func invalidateSecondaryTLBs(mm: MM, start: UInt64, end: UInt64) {
                guard rmapReaderGotIn == nil else { return }
                rmapReaderGotIn = mm.rmapLock.tryLockRead()
                if rmapReaderGotIn == true { mm.rmapLock.unlockRead() }
                if let file = mm.vmas.first(where: { $0.contains(start) })?.file {
                    rmapOrder = mm.vmaTree.withLock { $0.rmapOrder(of: file).map(\.start) }
                }
            }
        }
        let far = tib + 64 * gib
        for what in ["move_ptes", "move_normal_pmd", "move_huge_pmd", "move_ptes into a merge"] {
            var profile = MMProfile.v6_14
            profile.thp = THPSettings(enabled: what == "move_huge_pmd" ? .always : .never, shmemEnabled: .never)
            try withLab(profile: profile) { allocator in
                let mm = try MM(allocator: allocator, profile: profile)
                let shared = what.hasPrefix("move_ptes")
                try mm.mmap(address: far, length: 2 * mib, shared: shared)
                try mm.touch(address: far, length: 2 * mib, stride: 64 << 10)
                let probe = Probe()
                let expectedOrder: [UInt64]
                if what == "move_ptes into a merge" {
                    // The upper half goes away and comes back: the copy
                    // merges into the lower half, which starts at a lower
                    // file page than the source.
                    try mm.mremap(from: far + mib, length: mib, to: tib)
                    mm.registerNotifier(probe)
                    try mm.mremap(from: tib, length: mib, to: far + mib)
                    expectedOrder = [far, tib]
                } else {
                    // The copy of a shared mapping's first 64 KiB starts at
                    // the same file page as its source, at a lower address.
                    mm.registerNotifier(probe)
                    try mm.mremap(from: far, length: shared ? 64 << 10 : 2 * mib, to: tib)
                    expectedOrder = shared ? [far, tib] : []
                }
                mm.unregisterNotifier(probe)
                XCTAssertEqual(probe.rmapReaderGotIn, what == "move_ptes" || what == "move_huge_pmd",
                               "\(what): the rmap lock held where the kernel does not take it, or not where it does")
                XCTAssertEqual(probe.rmapOrder, expectedOrder, "\(what): rmap order")
                mm.exit()
            }
        }
    }

    /// A zap whose gather fills up (about 9,700 pages) forces a flush, and
    /// zap_pte_range makes its TLB part before dropping the PTE lock of
    /// the table it was zapping; only the pages wait until after. Probed at
    /// that first flush, by trying the lock of the table mapping the last
    /// page the gather took.
    func testAFullGatherFlushesTheTLBBeforeDroppingThePTELock() throws {
        final class Probe: MMUNotifier, @unchecked Sendable {
            var firstFlushHeldTheLock: Bool?
            func invalidateSecondaryTLBs(mm: MM, start: UInt64, end: UInt64) {
                guard firstFlushHeldTheLock == nil, let (_, _, table) = mm.findPTETable(end - 4096) else { return }
                let locked = ptlab_ptl_trylock(table.desc) == 0
                if !locked { ptlab_ptl_unlock(table.desc) }
                firstFlushHeldTheLock = locked
            }
        }
        var profile = MMProfile.v6_14
        profile.thp = THPSettings(enabled: .never, shmemEnabled: .never)
        try withLab(profile: profile, budgetPages: 32_768) { allocator in
            let mm = try MM(allocator: allocator, profile: profile)
            let length = 20 * 2 * mib
            try mm.mmap(address: tib, length: length)
            try mm.touch(address: tib, length: length)
            let probe = Probe()
            mm.registerNotifier(probe)
            try mm.munmap(address: tib, length: length)
            mm.unregisterNotifier(probe)
            XCTAssertEqual(probe.firstFlushHeldTheLock, true, "the forced flush came after the PTE lock was dropped")
            mm.exit()
        }
    }

    /// tlb_remove_table_sync_one is an empty IPI: it waits for IRQs-off
    /// walkers and flushes no cache. A flush does.
    func testTheSyncIPILeavesCachesIntact() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.touch(address: tib, length: 4096)
            let cpu = CPU(id: 0, tlb: mm.tlb)
            var counters = WalkCounters()
            mm.hardwareAccess(tib, cpu: cpu, counters: &counters)
            XCTAssertNotNil(cpu.psc.lookup(tib), "the walk cached the PDE")
            mm.tlb.syncOne()
            XCTAssertEqual(mm.tlb.syncIPIs.load(ordering: .relaxed), 1)
            XCTAssertNotNil(cpu.psc.lookup(tib), "the sync IPI dropped a cached PDE")
            mm.tlb.flush()
            XCTAssertNil(cpu.psc.lookup(tib), "a flush leaves no cached PDE")
            cpu.offline()
            try mm.munmap(address: tib, length: 2 * mib)
            mm.exit()
        }
    }

    /// PT_RECLAIM with the ipi-sync fallback, and the pre-6.6 retract's
    /// free without its locks, are refused as kernels, and run only as the
    /// unsafe modes that ask for them.
    func testAProfileNoKernelShippedIsRefused() throws {
        try withLab { allocator in
            /// Refused as it is, with `prefix` and a reason naming `why`;
            /// taken once deliberately unsafe.
            func assertRefused(_ profile: MMProfile, _ prefix: String, why: String) throws {
                XCTAssertThrowsError(try MM(allocator: allocator, profile: profile)) { error in
                    let text = "\(error)"
                    XCTAssertTrue(text.hasPrefix("refused profile: " + prefix), text)
                    XCTAssertTrue(text.contains(why), "the error says why: \(text)")
                }
                var unsafe = profile
                unsafe.deliberatelyUnsafe = true
                try MM(allocator: allocator, profile: unsafe).exit()
            }
            var profile = MMProfile()
            profile.ptReclaim = true
            profile.tableFree = .rcu(fallback: .ipiSync)
            try assertRefused(profile, "PT_RECLAIM with the ipi-sync fallback", why: "pte_offset_map")
            profile = .pre6_14
            try MM(allocator: allocator, profile: profile).exit()
            profile.collapseFree = .syncIPIUnlocked
            try assertRefused(profile, "the pre-6.6 retract's free", why: "mmap read lock")
        }
    }
}

/// A loaded allocator and a registered thread for `body`, which may leave
/// pages behind on purpose: the result comes back with the pages still
/// allocated once every deferred free ran.
private func withLoadedAllocator<R>(_ body: (PageAllocator) throws -> R) throws -> (staleWrites: R, leaked: Int) {
    var params = PageAllocator.Parameters()
    params.nodeBudgetPages = 16_384
    let allocator = try PageAllocator(parameters: params)
    defer { allocator.unload() }
    let integrityBefore = Integrity.snapshot()
    return try RCU.withRegisteredThread {
        let result = try body(allocator)
        try RCU.barrier()
        assertIntegrity(since: integrityBefore)
        return (result, allocator.totalAllocatedPages)
    }
}

/// A retract's free, passed on to `inner`, that first tries the mm's mmap
/// read lock as a walker would: whether one could be in the table now.
private final class RetractProbe: RetractFreePolicy, @unchecked Sendable {
    let inner: any RetractFreePolicy
    private let counts = LabMutex((frees: 0, readerGotIn: 0))
    var frees: Int { counts.withLock { $0.frees } }
    var readerGotIn: Int { counts.withLock { $0.readerGotIn } }

    init(_ inner: any RetractFreePolicy) { self.inner = inner }

    var name: String { "probe(\(inner.name))" }
    var takesMMapWriteLock: Bool { inner.takesMMapWriteLock }

    func free(_ table: Page, mm: MM) {
        let gotIn = mm.mmapLock.tryLockRead()
        if gotIn { mm.mmapLock.unlockRead() }
        counts.withLock {
            $0.frees += 1
            if gotIn { $0.readerGotIn += 1 }
        }
        inner.free(table, mm: mm)
    }
}
