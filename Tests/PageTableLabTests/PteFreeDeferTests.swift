import CSupport
import Synchronization
import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

final class PteFreeDeferTests: XCTestCase {
    /// A reader inside a read section holds the table: pte_free_defer's
    /// callback must wait for it, then free the table with its ptlock.
    func testTableOutlivesReaderThenDiesWithItsLock() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            // Shared memory: its collapse retracts the PTE table (the caller
            // pte_free_defer exists for); an anonymous one deposits it.
            try mm.mmap(address: tib, length: 2 * mib, shared: true)
            try mm.touch(address: tib, length: 2 * mib, stride: 64 << 10)
            let (_, _, table) = try XCTUnwrap(mm.findPTETable(tib))
            let gen = table.generation
            let inside = DispatchSemaphore(value: 0)
            let leave = DispatchSemaphore(value: 0)
            let reader = RCUThread {
                RCU.read {
                    inside.signal()
                    leave.wait()
                }
            }
            inside.wait()
            try mm.madviseCollapse(address: tib, length: 2 * mib)
            XCTAssertTrue(mm.isHugePMD(tib))
            // A grace period cannot end while the reader is inside: the
            // callback has not run, however long we look.
            XCTAssertEqual(table.state, PageState.deferred)
            XCTAssertEqual(table.generation, gen)
            XCTAssertEqual(ptlab_ptl_alive(table.desc), 1, "6.14+: the ptlock lives until the free")
            XCTAssertEqual(mm.vmPTEKilobytes, 8, "mm_dec_nr_ptes at unlink")
            leave.signal()
            reader.join()
            try RCU.barrier()
            XCTAssertEqual(table.state, PageState.free)
            XCTAssertEqual(table.generation, gen + 1)
            XCTAssertEqual(ptlab_ptl_alive(table.desc), 0)
            mm.exit()
        }
    }

    /// One deferred free in FreeLatency.sampleEvery that a thread queues is
    /// timed: the histogram holds exactly that many, and no other.
    func testFreeLatencyTimesExactlyTheSampledTables() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            let count = 4 * Int(FreeLatency.sampleEvery)
            let tables = try (0..<count).map { i in
                try PageTables.alloc(.pte, mm: mm, node: .local, allocator: allocator)
            }
            FreeLatency.reset()
            for t in tables { try mm.pteFreeDefer(t) }
            try RCU.barrier()
            let summary = FreeLatency.summary()
            XCTAssertEqual(summary.count, 4, "one in \(FreeLatency.sampleEvery) of \(count) consecutive frees")
            XCTAssertGreaterThan(summary.p50, 0, "a grace period passed between queueing and freeing")
            mm.exit()
        }
    }

    /// At shift 0 (free_latency_sample_shift=0) every deferred free is
    /// timed, and the default comes back when set again.
    func testFreeLatencyAtShiftZeroTimesEveryFree() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            FreeLatency.sampleShift = 0
            defer { FreeLatency.sampleShift = FreeLatency.defaultSampleShift }
            XCTAssertEqual(FreeLatency.sampleEvery, 1)
            let tables = try (0..<37).map { _ in try PageTables.alloc(.pte, mm: mm, node: .local, allocator: allocator) }
            FreeLatency.reset()
            for t in tables { try mm.pteFreeDefer(t) }
            try RCU.barrier()
            XCTAssertEqual(FreeLatency.summary().count, 37)
            FreeLatency.sampleShift = FreeLatency.defaultSampleShift
            XCTAssertEqual(FreeLatency.sampleEvery, 1 << FreeLatency.defaultSampleShift)
            mm.exit()
        }
    }

    /// A run that recycles one table page (a one-table stress region) is
    /// sampled too: the choice is by count, not by PFN.
    func testFreeLatencySamplesARecycledTable() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            FreeLatency.reset()
            var pfns = Set<UInt32>()
            for _ in 0..<Int(FreeLatency.sampleEvery) {
                let table = try PageTables.alloc(.pte, mm: mm, node: .local, allocator: allocator)
                pfns.insert(table.pfn)
                XCTAssertTrue(PageTables.markDeferred(table))
                PageTables.dtorFree(table, allocator: allocator)
            }
            XCTAssertEqual(pfns.count, 1, "the per-thread cache hands the same page back")
            XCTAssertEqual(FreeLatency.summary().count, 1)
            mm.exit()
        }
    }

    func testDoubleDeferIsAnError() throws {
        try withLab(expecting: .counting(doubleQueued: 1)) { allocator in
            let mm = try MM(allocator: allocator)
            let table = try PageTables.alloc(.pte, mm: mm, node: .local, allocator: allocator)
            try mm.pteFreeDefer(table)
            XCTAssertThrowsError(try mm.pteFreeDefer(table)) {
                XCTAssertEqual($0 as? RCUError, .alreadyQueued(operation: "pte_free_defer"))
            }
            mm.exit()
        }
    }

    func testDeferAllocatesNothing() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            let tables = try (0..<64).map { _ in try PageTables.alloc(.pte, mm: mm, node: .local, allocator: allocator) }
            let before = allocator.totalAllocatedPages
            // Queued inside a read section, so that no grace period can end
            // and no callback free the count down while it is read: a
            // worker already awake could free some before the count.
            try RCU.read {
                for t in tables { try mm.pteFreeDefer(t) }
                XCTAssertEqual(allocator.totalAllocatedPages, before, "no page taken to queue a free")
            }
            try RCU.barrier()
            XCTAssertEqual(allocator.totalAllocatedPages, before - 64)
            mm.exit()
        }
    }
}
