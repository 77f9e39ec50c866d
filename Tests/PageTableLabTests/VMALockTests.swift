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
            XCTAssertNil(mm.lockVMAUnderRCU(tib), "a first fault takes the mmap lock for its anon_vma")
            try mm.touch(address: tib, length: 4096)
            try mm.touch(address: tib + 4 * mib, length: 4096)
            mm.withWriteLock(vmasOf: [tib + 4 * mib..<tib + 5 * mib]) {
                let a = mm.lockVMAUnderRCU(tib + 4096)
                XCTAssertEqual(a?.start, tib, "A is not B's neighbour: its faults go on")
                a.map(mm.vmaLocks.endRead)
                XCTAssertNil(mm.lockVMAUnderRCU(tib + 5 * mib), "all of B is write-locked, not only the range")
            }
            let b = try XCTUnwrap(mm.lockVMAUnderRCU(tib + 5 * mib), "vma_end_write_all at mmap_write_unlock")
            mm.vmaLocks.endRead(b)
            XCTAssertNil(mm.lockVMAUnderRCU(tib + 3 * mib), "no VMA there")
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
                let locked = mm.lockVMAUnderRCU(address)
                locked.map(mm.vmaLocks.endRead)
                faultable.withLock { $0 = locked != nil }
            }
            try mm.mremap(from: tib, length: 2 * mib, to: new)
            mm.raceWindowHook = nil
            XCTAssertEqual(faultable.withLock { $0 }, false, "the copy took a fault before its entries had moved")
            mm.exit()
        }
    }

    /// A neighbour a writer's range touches is locked too (a merge may
    /// change it); a kernel without per-VMA locks (Debian's 6.1) has its
    /// faults take the mmap read lock always.
    func testANeighbourIsLockedAndPre6_4FaultsTakeTheMMapLock() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.touch(address: tib, length: 4096)
            mm.withWriteLock(vmasOf: [tib + 2 * mib..<tib + 4 * mib]) {
                XCTAssertNil(mm.lockVMAUnderRCU(tib), "an mmap right above may merge into it")
            }
            mm.exit()
            let old = try MM(allocator: allocator, profile: .pre6_14)
            try old.mmap(address: tib, length: 2 * mib)
            XCTAssertNil(old.lockVMAUnderRCU(tib))
            try old.touch(address: tib, length: 4096)
            old.exit()
        }
    }
}
