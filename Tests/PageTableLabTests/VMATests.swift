import XCTest
@testable import PageTableLab

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
        tree.prepareAnon(at: 0x1000)
        tree.prepareAnon(at: 0x3000)
        tree.insert(0x2000, 0x3000)
        XCTAssertEqual(tree.vmas.map { [$0.start, $0.end] }, [[0x1000, 0x3000], [0x3000, 0x4000]],
                       "joins the lower neighbour only: the two anon_vmas differ")
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
            // DONTNEED over a hole zaps what is mapped, then reports the hole.
            XCTAssertThrowsError(try mm.madviseDontneed(address: tib, length: 2 * mib)) {
                XCTAssertEqual($0 as? MMError, .notMapped(address: tib + mib))
            }
            XCTAssertEqual(mm.lastGather.pagesFreed, 2, "the mapped part was still zapped")
            mm.exit()
        }
    }
}
