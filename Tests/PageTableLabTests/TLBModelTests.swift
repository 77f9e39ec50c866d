#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import XCTest
@testable import PageTableLab

/// The TLB model's flushes against the walks they must outlast.
final class TLBModelTests: XCTestCase {
    /// A walk announces the generation it saw, plus one: the flush that
    /// moves the generation past what the walk saw must wait for it, and
    /// only a walk that already saw the flush's generation may be left.
    func testAFlushWaitsForEveryWalkThatSawAnOlderGeneration() {
        XCTAssertTrue(TLBModel.flush(to: 1, waitsForWalkSince: 1), "a walk that saw generation 0 holds up the flush to 1")
        XCTAssertTrue(TLBModel.flush(to: 5, waitsForWalkSince: 3))
        XCTAssertFalse(TLBModel.flush(to: 1, waitsForWalkSince: 2), "a walk that saw generation 1 began after the flush to 1")
        XCTAssertFalse(TLBModel.flush(to: 1, waitsForWalkSince: 0), "no walk")
    }

    /// A flush without IPIs (INVLPGB + TLBSYNC) returns only once the
    /// hardware walk in progress when it began has finished: that walk may
    /// hold the table the flush's caller frees next. With the walk held
    /// open, the flush must not return; once it ends, it must.
    func testAFlushWithoutIPIsWaitsForTheHardwareWalkInProgress() throws {
        let tlb = TLBModel(kind: .noIPI)
        let cpu = CPU(id: 0, tlb: tlb)
        defer { cpu.offline() }
        let walking = Atomic<Bool>(false)
        let flushReturned = Atomic<Bool>(false)
        let flusher = RCUThread {
            while !walking.load(ordering: .acquiring) { sched_yield() }
            tlb.flush()
            flushReturned.store(true, ordering: .releasing)
        }
        let (flushBegan, returnedDuringWalk) = cpu.hardwareWalk { _ in
            walking.store(true, ordering: .releasing)
            let began = holdsWithin(milliseconds: 30_000) { tlb.currentGeneration == 1 }
            // A correct flush cannot return while this walk is open, so
            // the watch can only fail a broken one.
            return (began, holdsWithin(milliseconds: 200) { flushReturned.load(ordering: .acquiring) })
        }
        XCTAssertTrue(flushBegan, "the flush never began")
        XCTAssertFalse(returnedDuringWalk, "the flush returned while a hardware walk begun before it was still walking")
        try waitUntil("the flush never returned after the walk ended") { flushReturned.load(ordering: .acquiring) }
        flusher.join()
    }
}
