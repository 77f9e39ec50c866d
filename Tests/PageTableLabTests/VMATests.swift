import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

final class VMATests: XCTestCase {
    func testAdjacentMappingsMergeAndPartialUnmapSplits() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: tib, length: mib)
            try mm.mmap(address: tib + mib, length: mib)
            XCTAssertEqual(mm.vmas.map { [$0.start, $0.end] }, [[tib, tib + 2 * mib]])
            try mm.munmap(address: tib + 4096, length: 4096)
            XCTAssertEqual(mm.vmas.map { [$0.start, $0.end] }, [[tib, tib + 4096], [tib + 8192, tib + 2 * mib]])
            mm.exit()
        }
    }

    func testDistinctAnonVMAsDoNotBridge() {
        var tree = VMATree()
        tree.insert(0x1000, 0x2000)
        tree.insert(0x3000, 0x4000)
        _ = tree.prepareAnonAndFind(0x1000)
        _ = tree.prepareAnonAndFind(0x3000)
        tree.insert(0x2000, 0x3000)
        XCTAssertEqual(tree.vmas.map { [$0.start, $0.end] }, [[0x1000, 0x3000], [0x3000, 0x4000]],
                       "joins the lower neighbour only: the two anon_vmas differ")
    }

    /// An rmap walk finds a file's VMAs by file page, and those that start
    /// at the same page in the order they were linked into the i_mmap tree.
    /// A VMA split (or merged) is taken out and linked again, so it comes
    /// after a copy linked before the split (vma_prepare, vma_complete).
    func testRmapOrderLinksASplitVMAAgain() throws {
        try withLab { allocator in
            let file = ShmemFile(size: 2 * mib, allocator: allocator)
            var tree = VMATree()
            tree.insert(VMA(start: tib, end: tib + 2 * mib, flags: [.read, .write, .shared], file: file, pgoff: 0))
            tree.insert(VMA(start: tib + gib, end: tib + gib + mib, flags: [.read, .write, .shared], file: file, pgoff: 0))
            XCTAssertEqual(tree.rmapOrder(of: file).map(\.start), [tib, tib + gib], "the source, then its copy")
            tree.modify(tib + mib, tib + 2 * mib) { $0.flags.remove(.write) }
            XCTAssertEqual(tree.rmapOrder(of: file).map(\.start), [tib + gib, tib, tib + mib],
                           "the split VMA's first half was linked again after the copy")
        }
    }

    func testBadInputIsAnErrorNamingTheProblem() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            XCTAssertThrowsError(try mm.mmap(address: tib + 1, length: 4096)) {
                XCTAssertEqual($0 as? MMError, .misaligned(what: "mmap address", value: tib + 1))
            }
            XCTAssertThrowsError(try mm.munmap(address: tib, length: 100)) {
                XCTAssertEqual($0 as? MMError, .misaligned(what: "munmap length", value: 100))
            }
            XCTAssertThrowsError(try mm.mmap(address: tib, length: 0)) {
                XCTAssertEqual($0 as? MMError, .zeroLength(operation: "mmap"))
            }
            XCTAssertThrowsError(try mm.mmap(address: 1 << 47, length: 4096)) {
                XCTAssertEqual($0 as? MMError, .outOfUserRange(address: 1 << 47, length: 4096))
            }
            try mm.mmap(address: tib, length: mib)
            XCTAssertThrowsError(try mm.mmap(address: tib + 4096, length: 4096)) {
                XCTAssertEqual($0 as? MMError, .mappingExists(address: tib + 4096, length: 4096))
            }
            XCTAssertThrowsError(try mm.touch(address: tib + mib, length: 4096)) {
                XCTAssertEqual($0 as? MMError, .notMapped(address: tib + mib))
            }
            try mm.touch(address: tib, length: 8192)
            XCTAssertThrowsError(try mm.touch(address: tib, length: UInt64.max)) {
                XCTAssertEqual($0 as? MMError, .outOfUserRange(address: tib, length: UInt64.max))
            }
            // A stride that would carry the next address past 2^64 is one
            // write, not an overflow trap.
            let pagesBefore = allocator.totalAllocatedPages
            try mm.touch(address: tib + 8192, length: mib - 8192, stride: 0xFFFF_FFFF_FFFF_F000)
            XCTAssertEqual(allocator.totalAllocatedPages - pagesBefore, 1, "one data page, in the PTE table already there")
            // DONTNEED over a hole zaps what is mapped, then reports the hole.
            XCTAssertThrowsError(try mm.madviseDontneed(address: tib, length: 2 * mib)) {
                XCTAssertEqual($0 as? MMError, .notMapped(address: tib + mib))
            }
            XCTAssertEqual(mm.lastGather.pagesFreed, 3, "the mapped part was still zapped")
            mm.exit()
        }
    }
}

/// The merge rules the kernel applies, as far as they decide floor,
/// ceiling and PT_RECLAIM: flags, file and pgoff must agree.
final class VMAMergeTests: XCTestCase {
    func testMprotectSplitsAndMergesBack() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: tib, length: 6 * mib)
            try mm.touch(address: tib, length: 6 * mib, stride: mib)
            try mm.mprotect(address: tib + mib, length: mib, protection: .r)
            XCTAssertEqual(mm.vmas.map { [$0.start, $0.end] }, [[tib, tib + mib], [tib + mib, tib + 2 * mib], [tib + 2 * mib, tib + 6 * mib]])
            XCTAssertEqual(mm.vmas[1].flags, .read)
            try mm.mprotect(address: tib + mib, length: mib, protection: .rw)
            XCTAssertEqual(mm.vmas.map { [$0.start, $0.end] }, [[tib, tib + 6 * mib]], "split pieces share their anon_vma and pgoff: they merge back")
            XCTAssertThrowsError(try mm.mprotect(address: tib + 5 * mib, length: 2 * mib, protection: .none)) {
                XCTAssertEqual($0 as? MMError, .notMapped(address: tib + 6 * mib))
            }
            XCTAssertEqual(mm.vmas.last?.flags, [], "mprotect changed what lay before the hole")
            mm.exit()
        }
    }

    func testAMovedVMAKeepsItsPgoffAndDoesNotMergeWhereItLands() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.touch(address: tib, length: 4096)
            try mm.mmap(address: tib + 8 * mib, length: 2 * mib)
            try mm.mremap(from: tib, length: 2 * mib, to: tib + 6 * mib)
            XCTAssertEqual(mm.vmas.map { [$0.start, $0.end] }, [[tib + 6 * mib, tib + 8 * mib], [tib + 8 * mib, tib + 10 * mib]],
                           "faulted anonymous memory keeps its pgoff: no merge")
            // Never faulted: it takes its new address as pgoff, so it merges
            // with the VMA that was mapped where it lands' neighbour.
            try mm.mmap(address: tib + 20 * mib, length: 2 * mib)
            try mm.mremap(from: tib + 20 * mib, length: 2 * mib, to: tib + 10 * mib)
            XCTAssertEqual(mm.vmas.map { [$0.start, $0.end] }, [[tib + 6 * mib, tib + 8 * mib], [tib + 8 * mib, tib + 12 * mib]])
            XCTAssertThrowsError(try mm.mremap(from: tib + 8 * mib, length: 2 * mib, to: tib + 9 * mib)) {
                XCTAssertEqual($0 as? MMError, .overlappingMove(from: tib + 8 * mib, to: tib + 9 * mib, length: 2 * mib))
            }
            XCTAssertThrowsError(try mm.mremap(from: tib + 5 * mib, length: 2 * mib, to: tib + 40 * mib)) {
                XCTAssertEqual($0 as? MMError, .moveAcrossVMAs(address: tib + 5 * mib, length: 2 * mib))
            }
            mm.exit()
        }
    }

    func testSharedMemoryNeverMergesWithPrivateOrAnotherFile() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            try mm.mmap(address: tib, length: mib)
            try mm.mmap(address: tib + mib, length: mib, shared: true)
            try mm.mmap(address: tib + 2 * mib, length: mib, shared: true)
            XCTAssertEqual(mm.vmas.count, 3)
            XCTAssertTrue(mm.vmas[1].file != nil && mm.vmas[1].file !== mm.vmas[2].file)
            mm.exit()
        }
    }

    func testHugepageSplitsAHugePMDWhereTheVMASplits() throws {
        try withLab { allocator in
            var profile = MMProfile.v6_14
            profile.thp = THPSettings(enabled: .madvise, shmemEnabled: .never)
            let mm = try MM(allocator: allocator, profile: profile)
            try mm.mmap(address: tib, length: 4 * mib)
            try mm.madviseHugepage(address: tib, length: 4 * mib)
            try mm.touch(address: tib, length: 4 * mib, stride: 2 * mib)
            XCTAssertEqual(mm.hugePMDCount(in: tib..<tib + 4 * mib), 2)
            XCTAssertEqual(mm.vmPTEKilobytes, 16, "PUD + PMD + two deposits")
            try mm.madviseHugepage(address: tib + mib, length: 3 * mib, enable: false)
            XCTAssertEqual(mm.hugePMDCount(in: tib..<tib + 4 * mib), 1, "the VMA split at 1 MiB split the first huge PMD")
            XCTAssertEqual(mm.vmPTEKilobytes, 16, "a split moves the deposit into place")
            XCTAssertEqual(mm.thpEvents.splitPMD.load(ordering: .relaxed), 1)
            mm.exit()
        }
    }
}

/// Shared memory's page cache outlives its mappings until the last goes,
/// and then every page comes back.
final class ShmemFileTests: XCTestCase {
    func testThePageCacheGoesWithTheLastMapping() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            let before = allocator.totalAllocatedPages
            try mm.mmap(address: tib, length: 4 * mib, shared: true)
            try mm.touch(address: tib, length: 4 * mib, stride: 64 << 10)
            let file = try XCTUnwrap(mm.vmas.first?.file)
            XCTAssertEqual(file.cachedPages, 64)
            try mm.madviseDontneed(address: tib, length: 4 * mib)
            XCTAssertEqual(file.cachedPages, 64, "DONTNEED zaps the mapping, not the page cache")
            try mm.mremap(from: tib, length: 2 * mib, to: tib + 8 * mib)
            try mm.munmap(address: tib + 2 * mib, length: 2 * mib)
            XCTAssertEqual(file.cachedPages, 64, "still mapped at its new place")
            try mm.madviseHugepage(address: tib + 8 * mib, length: 2 * mib)
            try mm.touch(address: tib + 8 * mib, length: 4096)
            try mm.madviseCollapse(address: tib + 8 * mib, length: 2 * mib)
            XCTAssertEqual(file.cachedPages, 32 + 512, "the first 2 MiB became one huge page")
            try mm.munmap(address: tib + 8 * mib, length: 2 * mib)
            XCTAssertEqual(file.cachedPages, 0)
            try RCU.barrier()   // the retracted table went through pte_free_defer
            XCTAssertEqual(allocator.totalAllocatedPages, before, "pages of the file not returned")
            mm.exit()
        }
    }
}
