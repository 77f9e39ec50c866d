import Synchronization
import XCTest
@testable import PageTableLab

/// Per-VMA locks (6.4+): a fault locks only its VMA, so a writer holding
/// the mmap write lock for one VMA leaves faults on another running.
final class VMALockTests: XCTestCase {
    /// Under the write lock for B (an mremap, say), a fault on A, a VMA
    /// the writer does not touch, gets A's lock; one on B does not, and
    /// takes the mmap read lock, waiting for the writer. After the writer,
    /// B's lock is free again.
    func testAWriterLocksTheVMAsItTouchesAndOnlyThose() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.mmap(address: tib + 4 * mib, length: 2 * mib)
            XCTAssertFalse(mm.faultWouldLockVMA(at: tib), "a first fault takes the mmap lock for its anon_vma")
            try mm.touch(address: tib, length: 4096)
            try mm.touch(address: tib + 4 * mib, length: 4096)
            mm.withWriteLock(vmasOf: [tib + 4 * mib..<tib + 5 * mib], merging: .none) {
                XCTAssertTrue(mm.faultWouldLockVMA(at: tib + 4096), "A is not B's neighbour: its faults go on")
                XCTAssertFalse(mm.faultWouldLockVMA(at: tib + 5 * mib), "all of B is write-locked, not only the range")
            }
            XCTAssertTrue(mm.faultWouldLockVMA(at: tib + 5 * mib), "vma_end_write_all at mmap_write_unlock")
            XCTAssertFalse(mm.faultWouldLockVMA(at: tib + 3 * mib), "no VMA there")
            mm.exit()
        }
    }

    /// mremap's copy is linked before the entries move: a fault there
    /// meanwhile would race the move (a huge PMD faulted in under the
    /// destination's next table left move_ptes retrying for ever). The
    /// kernel's new VMAs are write-locked from their birth; the model locks
    /// the writer's ranges themselves, not only the VMAs there before.
    func testMremapsCopyIsWriteLockedFromItsBirth() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.touch(address: tib, length: 2 * mib, stride: 64 << 10)
            let new = tib + 64 * gib + (64 << 10)
            let faultable = Mutex<Bool?>(nil)
            mm.raceWindowHook = { window, address in
                guard window == .mremapBeforeMovePTEs, faultable.withLock({ $0 }) == nil else { return }
                let locked = mm.faultWouldLockVMA(at: address)
                faultable.withLock { $0 = locked }
            }
            try mm.mremap(from: tib, length: 2 * mib, to: new)
            mm.raceWindowHook = nil
            XCTAssertEqual(faultable.withLock { $0 }, false, "the copy took a fault before its entries had moved")
            mm.exit()
        }
    }

    /// A neighbour a writer's range touches is locked too when a merge may
    /// change it; a kernel without per-VMA locks (Debian's 6.1) has its
    /// faults take the mmap read lock always.
    func testANeighbourIsLockedAndPre6_4FaultsTakeTheMMapLock() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.touch(address: tib, length: 4096)
            mm.withWriteLock(vmasOf: [tib + 2 * mib..<tib + 4 * mib], merging: .anonymous) {
                XCTAssertFalse(mm.faultWouldLockVMA(at: tib), "an anonymous mmap right above may merge into it")
            }
            mm.exit()
            let old = try MM(allocator: allocator, profile: .pre6_14)
            try old.mmap(address: tib, length: 2 * mib)
            XCTAssertFalse(old.faultWouldLockVMA(at: tib))
            try old.touch(address: tib, length: 4096)
            old.exit()
        }
    }

    /// MADV_DONTNEED inside one VMA (6.17+) holds that VMA's lock and no
    /// mmap lock: a munmap of another VMA takes the mmap write lock and
    /// frees that VMA's table meanwhile, then PT_RECLAIM frees the one
    /// DONTNEED emptied, with no mmap lock held. A writer of its own VMA
    /// cannot start.
    func testDontneedInOneVMARunsBesideAWriterOfAnother() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            let other = tib + 4 * mib..<tib + 6 * mib
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.mmap(address: other.lowerBound, length: 2 * mib)
            try mm.touch(address: tib, length: 2 * mib, stride: 64 << 10)
            try mm.touch(address: other.lowerBound, length: 2 * mib, stride: 64 << 10)
            XCTAssertEqual(mm.pgtablesBytes, 4 * 4096, "a PUD and a PMD table, a PTE table each")
            let own = Mutex<Bool?>(nil)
            let unmapped = try dontneed(mm, tib..<tib + 2 * mib, unmappingInside: other) {
                let locked = mm.tryWriteLock(vmasOf: tib..<tib + 2 * mib)
                if locked { mm.writeUnlock() }
                own.withLock { $0 = locked }
            }
            XCTAssertTrue(unmapped, "a writer of another VMA waits for no DONTNEED")
            XCTAssertEqual(own.withLock { $0 }, false, "DONTNEED holds its VMA's lock")
            XCTAssertEqual(mm.vmas.count, 1, "the other VMA was unmapped under the DONTNEED")
            XCTAssertEqual(mm.pgtablesBytes, 2 * 4096, "both PTE tables freed, the PMD table they shared kept")
            XCTAssertEqual(mm.vmaLockEvents.dontneedVMA.load(ordering: .relaxed), 1)
            XCTAssertEqual(mm.vmaLockEvents.dontneedBesideWriter.load(ordering: .relaxed), 1, "a writer held the mmap lock inside it")
            XCTAssertEqual(mm.vmaLockEvents.dontneedMMap.load(ordering: .relaxed), 0)
            mm.exit()
        }
    }

    /// DONTNEED over more than one VMA takes the mmap read lock
    /// (try_vma_read_lock's fallback), as every DONTNEED does before 6.17,
    /// with per-VMA faults (6.4-6.16) or without.
    func testDontneedAcrossVMAsOrBefore6_17TakesTheMMapLock() throws {
        var v6_16 = MMProfile.v6_14
        v6_16.madviseVMALock = false
        try withLab { allocator in
            for (profile, range) in [(MMProfile.v6_14, tib..<tib + 6 * mib), (v6_16, tib..<tib + 2 * mib),
                                     (MMProfile.pre6_14, tib..<tib + 2 * mib)] {
                let mm = try MM(allocator: allocator, profile: profile)
                try mm.mmap(address: tib, length: 2 * mib)
                try mm.mmap(address: tib + 4 * mib, length: 2 * mib)
                try mm.touch(address: tib, length: 4096)
                let writable = Mutex<Bool?>(nil)
                mm.raceWindowHook = { window, _ in
                    guard window == .dontneedLocked else { return }
                    let locked = mm.tryWriteLock(vmasOf: tib + 4 * mib..<tib + 6 * mib)
                    if locked { mm.writeUnlock() }
                    writable.withLock { $0 = locked }
                }
                do {
                    try mm.madviseDontneed(address: range.lowerBound, length: UInt64(range.count))
                    XCTAssertEqual(range.count, 2 * Int(mib), "no hole in \(range)")
                } catch MMError.notMapped(let address) {
                    XCTAssertEqual(address, tib + 2 * mib, "the hole between the two VMAs")
                }
                mm.raceWindowHook = nil
                XCTAssertEqual(writable.withLock { $0 }, false, "\(range): DONTNEED holds the mmap read lock")
                XCTAssertEqual(mm.vmaLockEvents.dontneedMMap.load(ordering: .relaxed), 1)
                mm.exit()
            }
        }
    }

    /// Only a neighbour a merge could change is locked: vma_merge joins
    /// VMAs of the same file, or two anonymous ones. A munmap, mprotect or
    /// mmap next to anonymous memory of shared memory (race's layout)
    /// leaves the anonymous VMA to its faults and DONTNEEDs: a DONTNEED
    /// there runs while the shared memory beside it is unmapped.
    func testOnlyANeighbourThatCouldMergeIsLocked() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            let shared = tib + 2 * mib..<tib + 4 * mib
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.mmap(address: shared.lowerBound, length: 2 * mib, shared: true)
            try mm.touch(address: tib, length: 2 * mib, stride: 64 << 10)
            for merging in [MergeCandidates.none, .backedAs(shared), .anonymous] {
                mm.withWriteLock(vmasOf: [merging == .anonymous ? shared.upperBound..<shared.upperBound + 2 * mib : shared],
                                 merging: merging) {
                    XCTAssertTrue(mm.faultWouldLockVMA(at: tib), "\(merging): the anonymous VMA cannot merge with shared memory")
                    XCTAssertEqual(mm.faultWouldLockVMA(at: shared.lowerBound), merging == .anonymous,
                                   "\(merging): the shared VMA is locked when it is the writer's, not when it is a neighbour of another backing")
                }
            }
            XCTAssertTrue(try dontneed(mm, tib..<tib + 2 * mib, unmappingInside: shared),
                          "the shared memory's munmap waited for a DONTNEED of its anonymous neighbour")
            XCTAssertEqual(mm.vmas.count, 1)
            XCTAssertEqual(mm.vmaLockEvents.dontneedBesideWriter.load(ordering: .relaxed), 1)
            try mm.madviseDontneed(address: tib, length: 2 * mib)
            XCTAssertEqual(mm.vmaLockEvents.dontneedVMA.load(ordering: .relaxed), 2)
            XCTAssertEqual(mm.vmaLockEvents.dontneedBesideWriter.load(ordering: .relaxed), 1, "no writer beside the second")
            mm.exit()
        }
    }

    /// MADV_DONTNEED of `range` with `other` unmapped inside it (and
    /// `alsoInside` run there first), where a writer of `other` can have the
    /// locks then. Whether it could. The probe is a trylock that merges
    /// nothing, as munmap locks; the munmap itself runs on a thread of its
    /// own and is waited for with a bound, so that a munmap that locked
    /// more (and so waited for the DONTNEED, which waits for it) fails the
    /// test instead of hanging it.
    private func dontneed(_ mm: MM, _ range: Range<UInt64>, unmappingInside other: Range<UInt64>,
                          alsoInside: @escaping @Sendable () -> Void = {}) throws -> Bool {
        let unmapped = Mutex(false)
        let unmapper = Mutex<RCUThread?>(nil)
        mm.raceWindowHook = { window, _ in
            guard window == .dontneedLocked else { return }
            alsoInside()
            guard mm.tryWriteLock(vmasOf: other) else { return }
            mm.writeUnlock()
            unmapper.withLock {
                $0 = RCUThread {
                    do { try mm.munmap(address: other.lowerBound, length: UInt64(other.count)) } catch { return XCTFail("munmap: \(error)") }
                    unmapped.withLock { $0 = true }
                }
            }
            if !holdsWithin(milliseconds: 30_000, { unmapped.withLock { $0 } }) {
                XCTFail("the munmap of \(other) waited for the DONTNEED: it locked more than its own VMAs")
            }
        }
        // The munmap's thread reads the hook too: joined before it goes.
        defer {
            unmapper.withLock { $0 }?.join()
            mm.raceWindowHook = nil
        }
        try mm.madviseDontneed(address: range.lowerBound, length: UInt64(range.count))
        unmapper.withLock { $0 }?.join()
        return unmapped.withLock { $0 }
    }

    /// Each writer locks the neighbours its merge could change and no
    /// other: mprotect and madvise a neighbour of the same file (the other
    /// half of a shared VMA an earlier mprotect split), an anonymous mmap
    /// an anonymous neighbour; munmap none, even of the same file.
    func testEachWriterLocksTheNeighboursItCouldMergeWith() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            let half = tib + 2 * mib..<tib + 3 * mib
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.mmap(address: half.lowerBound, length: 2 * mib, shared: true)
            try mm.touch(address: tib, length: 4096)
            try mm.mprotect(address: half.lowerBound, length: mib, protection: .r)
            let ops: [(String, expected: (anonymous: Bool, sameFile: Bool), () throws -> Void)] = [
                ("mprotect", (false, true), { try mm.mprotect(address: half.lowerBound, length: mib, protection: .rw) }),
                ("mprotect again", (false, true), { try mm.mprotect(address: half.lowerBound, length: mib, protection: .r) }),
                ("madvise", (false, true), { try mm.madviseHugepage(address: half.lowerBound, length: mib) }),
                ("munmap", (false, false), { try mm.munmap(address: half.lowerBound, length: mib) }),
                ("anonymous mmap", (true, false), { try mm.mmap(address: half.lowerBound, length: mib) }),
            ]
            for (name, expected, op) in ops {
                let seen = Mutex<(anonymous: Bool, sameFile: Bool)?>(nil)
                mm.raceWindowHook = { window, _ in
                    guard window == .writeLocked, seen.withLock({ $0 }) == nil else { return }
                    let locked = (anonymous: !mm.faultWouldLockVMA(at: tib), sameFile: !mm.faultWouldLockVMA(at: half.upperBound))
                    seen.withLock { $0 = locked }
                }
                try op()
                mm.raceWindowHook = nil
                let locked = try XCTUnwrap(seen.withLock { $0 }, name)
                XCTAssertEqual(locked.anonymous, expected.anonymous, "\(name): the anonymous neighbour")
                XCTAssertEqual(locked.sameFile, expected.sameFile, "\(name): the neighbour of the same file")
            }
            mm.exit()
        }
    }

    /// A writer that only waited for a DONTNEED to leave its VMA did not
    /// run beside it: dontneed_beside_writer counts the writers the mmap
    /// read lock would have kept out, and that one it would not have let in
    /// either.
    func testAWriterThatWaitsForTheDontneedIsNotBesideIt() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.touch(address: tib, length: 2 * mib, stride: 64 << 10)
            let writer = Mutex<RCUThread?>(nil)
            mm.raceWindowHook = { window, _ in
                guard window == .dontneedLocked, writer.withLock({ $0 }) == nil else { return }
                writer.withLock {
                    $0 = RCUThread {
                        do { try mm.mprotect(address: tib, length: 64 << 10, protection: .r) } catch { XCTFail("\(error)") }
                    }
                }
                // Back to the DONTNEED only once the mprotect holds the mmap
                // write lock and waits for it.
                while !mm.vmaLocks.writerWaits(on: tib..<tib + 2 * mib) {}
            }
            try mm.madviseDontneed(address: tib, length: 2 * mib)
            // The mprotect reads the hook too (at its own windows): it goes
            // only once that thread is done, or TSan sees the write race it.
            try XCTUnwrap(writer.withLock { $0 }).join()
            mm.raceWindowHook = nil
            XCTAssertEqual(mm.vmaLockEvents.dontneedVMA.load(ordering: .relaxed), 1)
            XCTAssertEqual(mm.vmaLockEvents.dontneedBesideWriter.load(ordering: .relaxed), 0)
            XCTAssertEqual(mm.vmas.count, 2, "the mprotect ran after the DONTNEED")
            mm.exit()
        }
    }
}
