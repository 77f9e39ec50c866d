import XCTest
import CSupport
@testable import PageTableLab
@testable import PageTableLabHarness

/// A process that exits with its device still bound (SVA): exit_mmap calls
/// mmu_notifier_release before it tears anything down and unhooks the
/// notifier, so the teardown's own flushes never reach the IOMMU. The
/// driver's release (intel_mm_release) must clear the PASID entry and flush
/// what the IOMMU cached of it; the unbind comes later, when the process's
/// files close. Each case runs with the kernel's release and with a driver
/// that has none, where a translation cached before the exit must lead into
/// a freed table.
final class SVAExitTests: XCTestCase {
    private let base = 4 * tib
    private let pasid: UInt32 = 1

    /// `body` with an IOMMU and its SVA on a lab of its own.
    private func withSVA(_ parameters: IntelIOMMU.Parameters = IntelIOMMU.Parameters(), expecting: Integrity = Integrity(),
                         _ body: (PageAllocator, IntelIOMMU, SVA) throws -> Void) throws {
        try withLab(expecting: expecting) { allocator in
            let iommu = try IntelIOMMU(allocator: allocator, parameters: parameters)
            defer { _ = iommu.shutdown() }
            try body(allocator, iommu, SVA(iommu: iommu))
        }
    }

    /// An mm bound under `pasid` and exited, the bond still held.
    private func exitedWhileBound(_ allocator: PageAllocator, _ sva: SVA) throws -> (MM, SVABond) {
        let mm = try MM(allocator: allocator)
        let bond = try sva.bind(mm, pasid: pasid, did: 1)
        mm.exit()
        return (mm, bond)
    }

    /// An mm bound under `pasid`, 4 MiB of it faulted in (every 64 KiB) and
    /// its first page translated once, so that the IOMMU caches the PASID
    /// entry, the walk to the first PTE table (its PDE) and that leaf.
    private func boundAndTranslated(_ allocator: PageAllocator, _ iommu: IntelIOMMU, _ sva: SVA) throws -> (MM, SVABond) {
        let mm = try MM(allocator: allocator)
        let bond = try sva.bind(mm, pasid: pasid, did: 1)
        try mm.mmap(address: base, length: 4 * mib)
        try mm.touch(address: base, length: 4 * mib, stride: 64 << 10)
        guard case .translated = iommu.translate(DMARequest(pasid: pasid, address: base)) else {
            struct FirstTranslationFailed: Error {}
            XCTFail("the first translation of a mapped page failed")
            throw FirstTranslationFailed()
        }
        return (mm, bond)
    }

    /// An mm bound under `pasid` with a page mapped and translated once (the
    /// IOMMU caches its PASID entry, its walk and the leaf), then exited
    /// while bound and, past the grace period, translated again; then
    /// unbound. `check` sees the IOMMU and the second translation.
    private func exitWhileBound(_ release: SVAMMRelease,
                                _ check: (IntelIOMMU, SVABond, DMATranslation) throws -> Void) throws {
        var parameters = IntelIOMMU.Parameters()
        parameters.mmRelease = release
        try withSVA(parameters) { allocator, iommu, sva in
            let (mm, bond) = try boundAndTranslated(allocator, iommu, sva)
            let flushesBefore = iommu.counters.snapshot().qiDescriptors
            mm.exit()
            try RCU.barrier()
            let after = iommu.translate(DMARequest(pasid: pasid, address: base + (64 << 10)))
            if release == .noRelease {
                XCTAssertEqual(iommu.counters.snapshot().qiDescriptors, flushesBefore,
                               "with the notifier unhooked, exit's flushes must not reach the IOMMU")
            }
            try check(iommu, bond, after)
            // The bond holds the mm (mmgrab): its PGD outlives exit_mmap
            // and goes with the unbind's mmdrop, and with it alone.
            XCTAssertEqual(ptlab_page_state(mm.pgd.desc), PTLAB_PAGE_ALLOCATED.rawValue, "the PGD went before the unbind")
            let allocated = allocator.totalAllocatedPages
            try sva.unbind(bond)
            XCTAssertEqual(allocator.totalAllocatedPages, allocated - 1, "the unbind must free the PGD")
            XCTAssertNil(iommu.binding(of: pasid), "the unbind must leave the PASID unbound")
            XCTAssertThrowsError(try sva.unbind(bond)) { XCTAssertEqual($0 as? IOMMUError, .pasidNotBound(pasid)) }
            XCTAssertThrowsError(try sva.bind(mm, pasid: pasid, did: 1)) { XCTAssertEqual($0 as? IOMMUError, .mmExited) }
            XCTAssertEqual(bond.notifierFailures.load(ordering: .relaxed), 0)
        }
    }

    func testExitTearsDownThePASIDBeforeFreeingTheTables() throws {
        try exitWhileBound(.teardown) { iommu, bond, after in
            XCTAssertTrue(bond.released)
            XCTAssertTrue(bond.tornDown)
            XCTAssertNil(iommu.binding(of: pasid), "release must clear the PASID entry")
            XCTAssertEqual(iommu.cachedEntries.iotlb + iommu.cachedEntries.pagingStructures + iommu.cachedEntries.pasids, 0,
                           "release must flush what the IOMMU cached of the PASID")
            guard case .fault(.pasidNotBound(pasid)) = after else {
                return XCTFail("after the exit DMA with the PASID must fault, not \(after)")
            }
            XCTAssertEqual(iommu.counters.snapshot().useAfterFree, 0)
        }
    }

    func testExitWithoutReleaseLeavesTheIOMMUWalkingFreedTables() throws {
        try exitWhileBound(.noRelease) { iommu, bond, after in
            XCTAssertTrue(bond.released, "the core unhooks the notifier all the same")
            XCTAssertFalse(bond.tornDown)
            XCTAssertNotNil(iommu.binding(of: pasid))
            guard case .useAfterFree(let uaf) = after, uaf.source != .walk else {
                return XCTFail("without release the cached walk should lead into a freed table, not \(after)")
            }
            XCTAssertGreaterThan(iommu.counters.snapshot().useAfterFreeFromCache, 0)
        }
    }

    /// exit_mmap releases before it tears anything down: a notifier
    /// registered after the bond finds, in its own release, the PASID
    /// already gone and every table of the mm still there.
    func testEveryReleaseRunsBeforeTheTeardown() throws {
        final class Spy: MMUNotifier, @unchecked Sendable {
            let iommu: IntelIOMMU
            let pasid: UInt32
            var seen: (pasidGone: Bool, tableBytes: Int)?
            init(iommu: IntelIOMMU, pasid: UInt32) { self.iommu = iommu; self.pasid = pasid }
            func invalidateSecondaryTLBs(mm: MM, start: UInt64, end: UInt64) {}
            func release(mm: MM) { seen = (iommu.binding(of: pasid) == nil, mm.pgtablesBytes) }
        }
        try withSVA { allocator, iommu, sva in
            let mm = try MM(allocator: allocator)
            let bond = try sva.bind(mm, pasid: pasid, did: 1)
            let spy = Spy(iommu: iommu, pasid: pasid)
            XCTAssertTrue(mm.registerNotifier(spy))
            try mm.mmap(address: base, length: 4 * mib)
            try mm.touch(address: base, length: 4 * mib, stride: 64 << 10)
            let tableBytes = mm.pgtablesBytes
            mm.exit()
            let seen = try XCTUnwrap(spy.seen, "exit did not release the notifier")
            XCTAssertTrue(seen.pasidGone, "the bond, registered first, is released first")
            XCTAssertEqual(seen.tableBytes, tableBytes, "a release ran after exit had begun to free tables")
            XCTAssertFalse(mm.registerNotifier(spy), "an exited mm takes no notifier")
            try sva.unbind(bond)
        }
    }

    /// The PASID stays the bond's from exit to unbind (the kernel frees an
    /// mm's PASID at its last mmdrop): another mm cannot take it meanwhile,
    /// nor a late release or a second unbind tear down what came after.
    func testThePASIDStaysTheBondsUntilTheUnbind() throws {
        try withSVA { allocator, iommu, sva in
            let (dead, bond) = try exitedWhileBound(allocator, sva)
            let next = try MM(allocator: allocator)
            defer { next.exit() }
            XCTAssertThrowsError(try sva.bind(next, pasid: pasid, did: 1)) {
                XCTAssertEqual($0 as? IOMMUError, .pasidAlreadyBound(pasid))
            }
            try sva.unbind(bond)
            let nextBond = try sva.bind(next, pasid: pasid, did: 1)
            bond.release(mm: dead)
            XCTAssertThrowsError(try sva.unbind(bond))
            XCTAssertNotNil(iommu.binding(of: pasid), "a release or unbind after the unbind tore down the next mm's PASID")
            XCTAssertEqual(bond.notifierFailures.load(ordering: .relaxed), 0)
            try sva.unbind(nextBond)
        }
    }

    /// A release whose teardown the queue refused leaves the entry cleared
    /// and the caches full; the unbind sends the flush again, and only then
    /// does the PGD go.
    func testTheUnbindFlushesAgainAfterAFailedRelease() throws {
        var expected = Integrity()
        expected.notifierFailures = 1
        try withSVA(expecting: expected) { allocator, iommu, sva in
            let (mm, bond) = try boundAndTranslated(allocator, iommu, sva)
            iommu.faultInjection.injectIQE()
            mm.exit()
            // Every table exit freed is back before pages are counted.
            try RCU.barrier()
            XCTAssertEqual(bond.notifierFailures.load(ordering: .relaxed), 1, "the refused teardown is a notifier failure")
            XCTAssertFalse(bond.tornDown)
            XCTAssertGreaterThan(iommu.cachedEntries.pasids, 0, "the refused flush left the PASID cached")
            XCTAssertEqual(ptlab_page_state(mm.pgd.desc), PTLAB_PAGE_ALLOCATED.rawValue, "the PGD went while the IOMMU caches it")
            let allocated = allocator.totalAllocatedPages
            try sva.unbind(bond)
            XCTAssertTrue(bond.tornDown)
            XCTAssertEqual(iommu.cachedEntries.iotlb + iommu.cachedEntries.pagingStructures + iommu.cachedEntries.pasids, 0)
            XCTAssertEqual(allocator.totalAllocatedPages, allocated - 1, "the PGD goes with the flush that completed")
        }
    }

    /// An unbind whose flush the queue refuses changes nothing but the
    /// entry: the bond keeps the PASID (no other mm may take it, not even
    /// through the IOMMU alone, while its caches may hold the old entry)
    /// and its mm, and a second unbind flushes and lets both go.
    func testAFailedUnbindKeepsThePASIDUntilAnUnbindFlushesIt() throws {
        try withSVA { allocator, iommu, sva in
            let (mm, bond) = try boundAndTranslated(allocator, iommu, sva)
            iommu.faultInjection.injectIQE()
            XCTAssertThrowsError(try sva.unbind(bond))
            XCTAssertEqual(sva.boundPASIDs, [pasid], "the bond went with its flush refused")
            let other = try MM(allocator: allocator)
            defer { other.exit() }
            XCTAssertThrowsError(try sva.bind(other, pasid: pasid, did: 1)) {
                XCTAssertEqual($0 as? IOMMUError, .pasidAlreadyBound(pasid))
            }
            XCTAssertThrowsError(try iommu.bindPASID(pasid, root: UInt64(other.pgd.pfn), did: 1)) {
                XCTAssertEqual($0 as? IOMMUError, .pasidTeardownPending(pasid))
            }
            try sva.unbind(bond)
            XCTAssertTrue(sva.boundPASIDs.isEmpty)
            XCTAssertEqual(iommu.cachedEntries.pasids, 0)
            mm.exit()
        }
    }

    /// A flush already on its way when the PASID went (an op still running
    /// on the exiting mm, a KVA flush) meets it gone: no failure.
    func testAFlushAfterTheReleaseIsNoFailure() throws {
        try withSVA { allocator, iommu, sva in
            let (mm, bond) = try boundAndTranslated(allocator, iommu, sva)
            mm.exit()
            bond.invalidateSecondaryTLBs(mm: mm, start: base, end: base + 2 * mib)
            XCTAssertTrue(bond.invalidateCompleting(start: base, end: base + 2 * mib))
            XCTAssertEqual(bond.notifierFailures.load(ordering: .relaxed), 0)
            try sva.unbind(bond)
        }
    }

    /// An exited mm takes no new bond, though one still holds it (and its
    /// PGD): exit closed its notifier list.
    func testAnExitedMMTakesNoBond() throws {
        try withSVA { allocator, iommu, sva in
            let (mm, bond) = try exitedWhileBound(allocator, sva)
            XCTAssertThrowsError(try sva.bind(mm, pasid: 2, did: 1)) { XCTAssertEqual($0 as? IOMMUError, .mmExited) }
            XCTAssertNil(iommu.binding(of: 2), "a refused bind left a PASID entry")
            try sva.unbind(bond)
        }
    }

    /// The KVA flush of 6.19 goes through each bound mm's notifier list: an
    /// exited mm's is empty, so its bond is skipped rather than flushed
    /// under a PASID that is no longer there (which would count a failure).
    func testKVAInvalidationSkipsABondWhoseMMExited() throws {
        try withSVA { allocator, iommu, sva in
            let live = try MM(allocator: allocator)
            defer { live.exit() }
            let dying = try MM(allocator: allocator)
            let liveBond = try sva.bind(live, pasid: 1, did: 1)
            let dyingBond = try sva.bind(dying, pasid: 2, did: 1)
            dying.exit()
            let before = iommu.counters.snapshot().qiDescriptors
            XCTAssertTrue(sva.invalidateKVARange())
            XCTAssertEqual(sva.kvaFailures.load(ordering: .relaxed), 0)
            XCTAssertGreaterThan(iommu.counters.snapshot().qiDescriptors, before, "the live mm's PASID is still flushed")
            try sva.unbind(dyingBond)
            try sva.unbind(liveBond)
        }
    }

    /// A bind the IOMMU refuses holds no reference to the mm: its PGD still
    /// goes when the mm exits (withLab finds every page back).
    func testARefusedBindHoldsNoReference() throws {
        try withSVA { allocator, iommu, sva in
            let mm = try MM(allocator: allocator)
            let other = try MM(allocator: allocator)
            let bond = try sva.bind(mm, pasid: pasid, did: 1)
            XCTAssertThrowsError(try sva.bind(other, pasid: pasid, did: 1)) {
                XCTAssertEqual($0 as? IOMMUError, .pasidAlreadyBound(pasid))
            }
            other.exit()
            try sva.unbind(bond)
            mm.exit()
        }
    }

    /// A notifier with no release of its own (the protocol's default) is
    /// still unhooked at exit: the fullmm flush of the teardown reaches
    /// none.
    func testExitUnhooksEveryNotifier() throws {
        final class Counting: MMUNotifier, @unchecked Sendable {
            var flushes = 0
            func invalidateSecondaryTLBs(mm: MM, start: UInt64, end: UInt64) { flushes += 1 }
        }
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            let notifier = Counting()
            mm.registerNotifier(notifier)
            try mm.mmap(address: base, length: 2 * mib)
            try mm.touch(address: base, length: 2 * mib, stride: 64 << 10)
            try mm.munmap(address: base, length: 2 * mib)
            XCTAssertEqual(notifier.flushes, 1, "munmap's flush reaches the notifier")
            try mm.mmap(address: base, length: 2 * mib)
            try mm.touch(address: base, length: 2 * mib, stride: 64 << 10)
            mm.exit()
            XCTAssertEqual(notifier.flushes, 1, "exit's flushes come after the notifier was unhooked")
        }
    }

    // MARK: - ptlab stress sva-exit

    private func stress(_ mode: SVAMMRelease, ops: Int? = nil) throws -> StressResult {
        try runStressForTest("sva-exit", mode.rawValue, ops: ops) { options, allocator in
            try SVAExitStress(options).run(allocator: allocator)
        }
    }

    func testStressedExitsWhileBoundAreSafeWithTheRelease() throws {
        let r = try stress(.teardown, ops: 200)
        XCTAssertTrue(r.pass, r.verdict)
        XCTAssertNil(r.expectedDetector)
        XCTAssertEqual(r.exitsWhileBound, 200)
        XCTAssertEqual(r.uafDetected, 0)
        XCTAssertEqual(r.leakedPages, 0)
        XCTAssertGreaterThan(r.tablesFreed, 0)
        XCTAssertGreaterThan(r.detections.mapped, 0, "no DMA reached a live process's page")
        XCTAssertGreaterThan(r.dmaFaults ?? 0, 0, "no DMA met a released PASID")
    }

    func testStressedExitsWithoutReleaseAreCaughtByTheIOMMUsCaches() throws {
        let r = try stress(.noRelease)
        XCTAssertEqual(r.expectedDetector, .iommuFromCache)
        XCTAssertGreaterThan(r.detections[.iommuFromCache], 0,
                             "\(r.ops) exits while bound, \(r.walks) translations, and no stale IOMMU cache entry was caught")
        XCTAssertTrue(r.pass, r.verdict)
        XCTAssertEqual(r.leakedPages, 0)
    }

    func testUnknownModeIsRefusedByName() {
        var options = StressOptions(scenario: "sva-exit", mode: "none")
        options.walkers = 1
        XCTAssertThrowsError(try SVAExitStress(options)) { error in
            XCTAssertTrue("\(error)".contains("teardown, no-release"), "\(error)")
        }
    }
}
