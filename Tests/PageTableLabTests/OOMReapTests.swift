#if canImport(Glibc)
import Glibc
#endif
import CSupport
import Synchronization
import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// The OOM reaper (and process_mrelease) beside exit_mmap: both zap under
/// the mmap read lock, and exit frees the tables only under the write lock,
/// after MMF_OOM_SKIP, so a reaper never walks a table as it is freed. Each
/// interleaving is made on purpose through the race windows.
final class OOMReapTests: XCTestCase {
    /// An mm with 4 MiB of private and 2 MiB of shared memory faulted in.
    private func victim(_ allocator: PageAllocator, profile: MMProfile = .v6_14) throws -> MM {
        let mm = try MM(allocator: allocator, profile: profile)
        try mm.mmap(address: tib, length: 4 * mib)
        try mm.touch(address: tib, length: 4 * mib, stride: 64 << 10)
        try mm.mmap(address: tib + 8 * mib, length: 2 * mib, shared: true)
        try mm.touch(address: tib + 8 * mib, length: 2 * mib, stride: 64 << 10)
        return mm
    }

    private func mapped(_ mm: MM, _ address: UInt64) -> Bool {
        guard let (_, _, table) = mm.findPTETable(address) else { return false }
        return Entry(rawValue: ptlab_pte_read(mm.entry(in: table, level: .pte, address: address))).isPresent
    }

    func testTheReaperZapsPrivateMemoryAndLeavesSharedMemory() throws {
        try withLab { allocator in
            let mm = try victim(allocator)
            XCTAssertEqual(mm.oomReap(), .reaped)
            XCTAssertFalse(mapped(mm, tib), "private memory still mapped after the reap")
            XCTAssertTrue(mapped(mm, tib + 8 * mib), "the reap took shared memory")
            XCTAssertGreaterThan(mm.pgtablesBytes, 0, "the reap frees no table")
            mm.exit()
            XCTAssertEqual(mm.oomReap(), .gone)
        }
    }

    /// A reaper that gets the read lock once exit has unmapped finds
    /// MMF_OOM_SKIP and leaves.
    func testAReaperAfterExitHasUnmappedSkips() throws {
        try withLab { allocator in
            let mm = try victim(allocator)
            let outcome = Mutex<OOMReapOutcome?>(nil)
            mm.raceWindowHook = { window, _ in
                guard window == .exitUnmapped else { return }
                outcome.withLock { $0 = mm.oomReap() }
            }
            mm.exit()
            mm.raceWindowHook = nil
            XCTAssertEqual(outcome.withLock { $0 }, .skipped)
        }
    }

    /// A reaper holding the read lock while exit runs: exit unmaps beside
    /// it, then waits for it before freeing a table (5.19+), or, with
    /// exitFreesTablesUnderReadLock, frees the tables under the reaper's
    /// walk, which the walk catches when it reads the PMD table it stood in.
    /// The reaper stops in the first PMD table it enters; there exit is run
    /// on a thread of its own, as far as it will go, with its grace periods
    /// waited out. Returns the walks of freed tables.
    private func reaperMeetsExit(freeingUnderReadLock: Bool) throws -> Int {
        var profile = MMProfile.v6_14
        profile.exitFreesTablesUnderReadLock = freeingUnderReadLock
        return try withLab { allocator in
            let mm = try victim(allocator, profile: profile)
            let reaper = pthread_self()
            let exiter = Mutex<RCUThread?>(nil)
            mm.raceWindowHook = { window, _ in
                guard window == .zapInPMDTable, pthread_equal(pthread_self(), reaper) != 0,
                      exiter.withLock({ $0 }) == nil else { return }
                let thread = RCUThread { mm.exit() }
                exiter.withLock { $0 = thread }
                if freeingUnderReadLock {
                    thread.join()
                    do { try RCU.barrier() } catch { XCTFail("\(error)") }
                } else {
                    do {
                        try waitUntil("exit unmapped and waits for the write lock") {
                            mm.oomSkip.load(ordering: .acquiring) && mm.mmapLock.waiting.writers == 1
                        }
                    } catch { return }
                    XCTAssertFalse(mm.hasExited && mm.vmas.isEmpty, "exit took the VMAs out under the reaper")
                }
            }
            XCTAssertEqual(mm.oomReap(), .reaped)
            try XCTUnwrap(exiter.withLock { $0 }).join()
            mm.raceWindowHook = nil
            XCTAssertEqual(mm.pgtablesBytes, 0)
            return mm.zapsOfFreedTables.load(ordering: .relaxed)
        }
    }

    func testExitWaitsForAReaperBeforeFreeingTables() throws {
        XCTAssertEqual(try reaperMeetsExit(freeingUnderReadLock: false), 0)
    }

    func testExitFreeingUnderTheReadLockIsCaughtByTheReapersWalk() throws {
        XCTAssertGreaterThan(try reaperMeetsExit(freeingUnderReadLock: true), 0,
                             "the reaper walked on in a freed PMD table and nothing counted it")
    }

    // MARK: - MMF_UNSTABLE

    /// The reap takes the private memory's data: a fault there afterwards
    /// gets SIGBUS, small page or huge, while shared memory faults as
    /// before. Without the check the fault maps a zeroed page where the
    /// data was.
    /// The fault's error, nil when it mapped.
    private func faultAfterReap(profile: MMProfile, at offset: UInt64) throws -> MMError? {
        try withLab(profile: profile) { allocator in
            let mm = try victim(allocator, profile: profile)
            defer { mm.exit() }
            XCTAssertEqual(mm.oomReap(), .reaped)
            XCTAssertTrue(mm.isUnstable)
            XCTAssertNoThrow(try mm.touch(address: tib + 8 * mib, length: 2 * mib, stride: 64 << 10),
                             "shared memory refused after the reap")
            return Self.failure { () throws(MMError) in try mm.touch(address: tib + offset, length: 4096) }
        }
    }

    func testAFaultInReapedMemoryGetsSIGBUS() throws {
        XCTAssertEqual(try faultAfterReap(profile: .v6_14, at: 0), .unstableAddressSpace(address: tib))
    }

    func testAHugeFaultInReapedMemoryGetsSIGBUS() throws {
        XCTAssertEqual(try faultAfterReap(profile: .thpAlways(), at: 2 * mib), .unstableAddressSpace(address: tib + 2 * mib))
    }

    func testWithoutMMFUnstableAFaultMapsReapedMemoryAgain() throws {
        var profile = MMProfile.v6_14
        profile.faultsIgnoreUnstable = true
        XCTAssertNil(try faultAfterReap(profile: profile, at: 0))
    }

    /// A fault beside the reaper, past the flag and before the reaper's
    /// zap: it checks under the PTE lock, so it maps nothing, and gives
    /// back the page it had allocated.
    func testAFaultBesideTheReaperGetsSIGBUS() throws {
        try withLab { allocator in
            let mm = try victim(allocator)
            defer { mm.exit() }
            let outcome = Mutex<MMError??>(nil)
            mm.raceWindowHook = { window, _ in
                guard window == .oomReaping else { return }
                let fault = RCUThread {
                    let result = Self.failure { () throws(MMError) in try mm.touch(address: tib + 32 << 10, length: 4096) }
                    outcome.withLock { $0 = result }
                }
                fault.join()
            }
            XCTAssertEqual(mm.oomReap(), .reaped)
            mm.raceWindowHook = nil
            XCTAssertEqual(outcome.withLock { $0 }, .some(.unstableAddressSpace(address: tib + 32 << 10)))
            XCTAssertFalse(mapped(mm, tib + 32 << 10))
        }
    }

    private static func failure(_ body: () throws(MMError) -> Void) -> MMError? {
        do {
            try body()
            return nil
        } catch {
            return error
        }
    }

    /// A whole reap between a fault's allocation and the lock it maps
    /// under: the fault checks MMF_UNSTABLE under that lock, so it maps
    /// nothing. A fault that checked before taking it would map here. With
    /// the check left out, the fault maps, and is no refault: it began
    /// before the reap had finished (the reaper skips an empty PMD without
    /// its lock in the kernel too). Returns the fault's error and the
    /// refaults counted.
    private func reapInsideAFault(profile: MMProfile, at address: UInt64) throws -> (MMError?, Int) {
        try withLab(profile: profile) { allocator in
            let mm = try victim(allocator, profile: profile)
            defer { mm.exit() }
            try mm.mmap(address: tib + 16 * mib, length: 2 * mib)
            let reaped = Mutex<OOMReapOutcome?>(nil)
            mm.raceWindowHook = { window, _ in
                guard window == .faultPageAllocated, reaped.withLock({ $0 }) == nil else { return }
                reaped.withLock { $0 = mm.oomReap() }
            }
            let error = Self.failure { () throws(MMError) in try mm.touch(address: address, length: 4096) }
            mm.raceWindowHook = nil
            XCTAssertEqual(reaped.withLock { $0 }, .reaped)
            return (error, mm.refaultsAfterReap.load(ordering: .relaxed))
        }
    }

    func testAFaultChecksForTheReapUnderThePTELock() throws {
        let (error, refaults) = try reapInsideAFault(profile: .v6_14, at: tib + 16 * mib)
        XCTAssertEqual(error, .unstableAddressSpace(address: tib + 16 * mib))
        XCTAssertEqual(refaults, 0)
    }

    func testAHugeFaultChecksForTheReapUnderThePMDLock() throws {
        let (error, refaults) = try reapInsideAFault(profile: .thpAlways(), at: tib + 16 * mib)
        XCTAssertEqual(error, .unstableAddressSpace(address: tib + 16 * mib))
        XCTAssertEqual(refaults, 0)
    }

    func testOnlyAFaultBegunAfterTheReapIsARefault() throws {
        var profile = MMProfile.v6_14
        profile.faultsIgnoreUnstable = true
        let (error, refaults) = try reapInsideAFault(profile: profile, at: tib + 16 * mib)
        XCTAssertNil(error)
        XCTAssertEqual(refaults, 0, "a fault under way during the reap is no refault")
        try withLab(profile: profile) { allocator in
            let mm = try victim(allocator, profile: profile)
            defer { mm.exit() }
            XCTAssertEqual(mm.oomReap(), .reaped)
            try mm.touch(address: tib, length: 4096)
            XCTAssertEqual(mm.refaultsAfterReap.load(ordering: .relaxed), 1)
        }
    }

    // MARK: - ptlab stress oom-reap

    private func stress(_ mode: String, ops: Int? = nil) throws -> StressResult {
        try runStressForTest("oom-reap", mode, ops: ops) { options, allocator in
            try OOMReapStress(options).run(allocator: allocator)
        }
    }

    func testStressedReapsBesideFaultsAndExitAreSafe() throws {
        let r = try stress("kernel", ops: 3000)
        XCTAssertTrue(r.pass, r.verdict)
        XCTAssertNil(r.expectedDetector)
        XCTAssertEqual(r.uafDetected, 0)
        XCTAssertEqual(r.leakedPages, 0)
        XCTAssertGreaterThan(r.tablesFreed, 0)
        let reaps = try XCTUnwrap(r.oomReaps)
        XCTAssertGreaterThan(reaps.reaped, 0)
        XCTAssertGreaterThan(r.sigbusFaults ?? 0, 0, "no fault met a reaped process")
        XCTAssertEqual(r.detections[.reapedRefault], 0)
        // What ran beside what needs two CPUs: on one, the scheduler runs a
        // reap (tens of microseconds) to its end inside one time slice.
        if NUMATopology.current.nodes.flatMap(\.cpus).count >= 2 {
            XCTAssertGreaterThan(reaps.besideExit, 0, "no reap's zap overlapped exit's unmap")
            XCTAssertGreaterThan(r.sigbusBesideReap ?? 0, 0, "no fault got SIGBUS while a reap ran")
        }
    }

    func testStressedRefaultsWithoutMMFUnstableAreCaught() throws {
        let r = try stress("ignore-unstable")
        XCTAssertEqual(r.expectedDetector, .reapedRefault)
        XCTAssertGreaterThan(r.detections[.reapedRefault], 0, "\(r.ops) ops and no fault after a reap mapped again")
        XCTAssertTrue(r.pass, r.verdict)
        XCTAssertEqual(r.sigbusFaults, 0)
        XCTAssertEqual(r.leakedPages, 0)
    }

    func testUnknownOOMReapModeIsRefusedByName() {
        var options = StressOptions(scenario: "oom-reap", mode: "none")
        options.walkers = 1
        XCTAssertThrowsError(try OOMReapStress(options)) { error in
            XCTAssertTrue("\(error)".contains("kernel, ignore-unstable"), "\(error)")
        }
    }
}
