import Synchronization
import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// free_pgtables' floor/ceiling rule: a table goes only when everything it
/// spans lies between the neighbouring VMAs.
final class FreePgtablesTests: XCTestCase {
    func testNeighbourInSamePTETableKeepsIt() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            // Two VMAs in one 2 MiB span, a page apart so they do not merge.
            try mm.mmap(address: tib, length: mib)
            try mm.mmap(address: tib + mib + 4096, length: mib - 4096)
            try mm.touch(address: tib, length: mib, stride: 256 << 10)
            try mm.touch(address: tib + mib + 4096, length: mib - 4096, stride: 256 << 10)
            XCTAssertEqual(mm.vmPTEKilobytes, 12, "PTE + PMD + PUD")
            try mm.munmap(address: tib, length: mib)
            XCTAssertEqual(mm.vmPTEKilobytes, 12, "ceiling inside the table's span: kept")
            try mm.munmap(address: tib + mib + 4096, length: mib - 4096)
            XCTAssertEqual(mm.vmPTEKilobytes, 0, "nothing left: all three go")
            mm.exit()
        }
    }

    func testNeighbourInSameGigabyteKeepsPMDTable() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.mmap(address: tib + 512 * mib, length: 2 * mib)
            try mm.touch(address: tib, length: 2 * mib, stride: mib)
            try mm.touch(address: tib + 512 * mib, length: 2 * mib, stride: mib)
            XCTAssertEqual(mm.vmPTEKilobytes, 16, "2 PTE + PMD + PUD")
            try mm.munmap(address: tib, length: 2 * mib)
            XCTAssertEqual(mm.vmPTEKilobytes, 12, "its PTE table goes; the PMD table is shared")
            mm.exit()
        }
    }

    func testNeighbourInSame512GiBKeepsPUDTable() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.mmap(address: tib + 4 * gib, length: 2 * mib)
            try mm.touch(address: tib, length: 2 * mib, stride: mib)
            try mm.touch(address: tib + 4 * gib, length: 2 * mib, stride: mib)
            XCTAssertEqual(mm.vmPTEKilobytes, 20, "2 PTE + 2 PMD + PUD")
            try mm.munmap(address: tib, length: 2 * mib)
            XCTAssertEqual(mm.vmPTEKilobytes, 12, "PTE and PMD go; the PUD table is shared")
            mm.exit()
        }
    }

    func testMappingAcrossGigabyteAndPGDBoundaries() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            // 2 MiB either side of the 1 TiB + 512 GiB PGD boundary.
            let boundary = tib + 512 * gib
            try mm.mmap(address: boundary - 2 * mib, length: 4 * mib)
            try mm.touch(address: boundary - 2 * mib, length: 4 * mib, stride: 2 * mib)
            XCTAssertEqual(mm.vmPTEKilobytes, 24, "2 PTE + 2 PMD + 2 PUD: two PGD entries in use")
            try mm.munmap(address: boundary, length: 2 * mib)
            XCTAssertEqual(mm.vmPTEKilobytes, 12)
            try mm.munmap(address: boundary - 2 * mib, length: 2 * mib)
            XCTAssertEqual(mm.vmPTEKilobytes, 0)
            mm.exit()
        }
    }

    func testPartialDontneedKeepsTable() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: tib, length: 4 * mib)
            try mm.touch(address: tib, length: 4 * mib, stride: 64 << 10)
            try mm.madviseDontneed(address: tib + 4096, length: 4 * mib - 4096)
            XCTAssertEqual(mm.vmPTEKilobytes, 12, "first table partly zapped: kept; second whole: freed")
            mm.exit()
        }
    }

    func testExitFreesEverything() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            for i in 0..<4 {
                try mm.mmap(address: tib + UInt64(i) * 100 * gib, length: 8 * mib)
                try mm.touch(address: tib + UInt64(i) * 100 * gib, length: 8 * mib, stride: mib)
            }
            XCTAssertGreaterThan(mm.vmPTEKilobytes, 0)
            XCTAssertEqual(mm.exit(), 0, "check_mm: no pgtables_bytes left")
            // NR_PAGETABLE drops only when the destructors run, a grace
            // period later (6.14+), unlike VmPTE.
            try RCU.barrier()
            XCTAssertEqual(try allocator.stats(node: allocator.topology.nodeIDs[0]).nrPageTablePages, 0)
            XCTAssertThrowsError(try mm.mmap(address: tib, length: 4096)) { XCTAssertEqual($0 as? MMError, .mmGone) }
        }
    }

    /// An mmap that checked the mm before exit() marked it, and got the
    /// mmap lock after, must not map into the exited mm: a fault there
    /// would build tables under a PGD that is gone. The test holds the
    /// write lock while the mmap, then the exit (for its read-locked
    /// unmap), queue for it; the waiting writer goes first.
    func testAnMmapThatRacedExitFindsTheMMGone() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            mm.mmapLock.lockWrite()
            let mapped = Mutex<Result<Void, MMError>?>(nil)
            let mapper = RCUThread {
                let result = Result { () throws(MMError) in try mm.mmap(address: tib, length: 2 * mib) }
                mapped.withLock { $0 = result }
            }
            try waitUntil("the mmap waits for the lock") { mm.mmapLock.waiting.writers == 1 }
            let exiter = RCUThread { mm.exit() }
            try waitUntil("exit marked the mm and waits for the lock") { mm.hasExited && mm.mmapLock.waiting.readers == 1 }
            mm.mmapLock.unlockWrite()
            mapper.join()
            exiter.join()
            guard case .failure(.mmGone) = try XCTUnwrap(mapped.withLock { $0 }) else {
                return XCTFail("the mmap mapped into an exited mm: \(mapped.withLock { $0 }!)")
            }
            XCTAssertTrue(mm.vmas.isEmpty)
        }
    }
}
