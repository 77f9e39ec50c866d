import CSupport
import XCTest
@testable import PageTableLab

final class MremapTests: XCTestCase {
    /// No THP: the moves are of PTE tables and their entries.
    private static let smallPages: MMProfile = {
        var profile = MMProfile.v6_14
        profile.thp = THPSettings(enabled: .never, shmemEnabled: .never)
        return profile
    }()

    /// MREMAP_DONTUNMAP of a whole VMA: the source VMA stays, its entries
    /// and its anon_vma gone (unlink_anon_vmas), and faults afresh; the
    /// data is at the destination.
    func testDontUnmapLeavesTheSourceMappedAndEmpty() throws {
        try withLab(profile: Self.smallPages) { allocator in
            let mm = try MM(allocator: allocator, profile: Self.smallPages)
            defer { mm.exit() }
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.touch(address: tib, length: 2 * mib, stride: 64 << 10)
            try mm.mremap(from: tib, length: 2 * mib, to: tib + gib, dontUnmap: true)
            XCTAssertEqual(mm.vmas.map(\.start), [tib, tib + gib])
            XCTAssertEqual(mm.vmas.first?.anonVMA, 0, "the source keeps its anon_vma")
            XCTAssertNil(mm.findPTETable(tib), "the PTE table moved whole")
            try mm.touch(address: tib, length: 4096)
            XCTAssertNotNil(mm.findPTETable(tib))
        }
    }

    /// MREMAP_DONTUNMAP of part of a VMA: the VMA keeps its anon_vma
    /// (move_vma unlinks it only when the whole VMA moved).
    func testDontUnmapOfPartOfAVMAKeepsItsAnonVMA() throws {
        try withLab(profile: Self.smallPages) { allocator in
            let mm = try MM(allocator: allocator, profile: Self.smallPages)
            defer { mm.exit() }
            try mm.mmap(address: tib, length: 4 * mib)
            try mm.touch(address: tib, length: 4 * mib, stride: 64 << 10)
            try mm.mremap(from: tib, length: 2 * mib, to: tib + gib, dontUnmap: true)
            XCTAssertNotEqual(mm.vmas.first { $0.start == tib }?.anonVMA, 0)
        }
    }

    /// MREMAP_FIXED's unmap of NEW can cut the source VMA down to the range
    /// that moves: then the whole VMA moved, and with MREMAP_DONTUNMAP it
    /// loses its anon_vma (mremap_to looks the VMA up again after the
    /// unmap, dontunmap_complete compares its bounds).
    func testDontUnmapOntoTheSourceVMAsOtherHalfMovesTheWholeVMA() throws {
        try withLab(profile: Self.smallPages) { allocator in
            let mm = try MM(allocator: allocator, profile: Self.smallPages)
            defer { mm.exit() }
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.touch(address: tib, length: 2 * mib, stride: 64 << 10)
            try mm.mremap(from: tib, length: mib, to: tib + mib, dontUnmap: true)
            XCTAssertEqual(mm.vmas.map { [$0.start, $0.end] }, [[tib, tib + mib], [tib + mib, tib + 2 * mib]])
            XCTAssertEqual(mm.vmas.first?.anonVMA, 0)
        }
    }

    /// 6.17+: a range of several VMAs moves VMA by VMA, gaps kept. Each
    /// VMA's MREMAP_FIXED unmaps only where it lands: what lay in a gap's
    /// place at NEW stays, what lay under a VMA's goes.
    func testSeveralVMAsMoveEachGapsKept() throws {
        try withLab(profile: Self.smallPages) { allocator in
            let mm = try MM(allocator: allocator, profile: Self.smallPages)
            defer { mm.exit() }
            let new = tib + gib
            try severalVMAs(mm)
            try mm.mmap(address: new, length: 4 * mib)
            try mm.touch(address: new, length: 4 * mib, stride: 128 << 10)
            try mm.mprotect(address: new + 2 * mib, length: mib, protection: .r)
            XCTAssertEqual(try mm.mremap(from: tib, length: 4 * mib, to: new), 3, "three VMAs moved, the gap left")
            XCTAssertEqual(mm.vmas.map { [$0.start, $0.end] },
                           [[new, new + mib], [new + mib, new + 2 * mib], [new + 2 * mib, new + 3 * mib], [new + 3 * mib, new + 4 * mib]])
            XCTAssertEqual(mm.vmas.map(\.flags), [Protection.rw.flags, Protection.r.flags, Protection.r.flags, Protection.rw.flags],
                           "each VMA moved as itself, and the mapping in the gap's place stayed")
            XCTAssertEqual(presentPTEs(mm, new, 2 * mib), 32, "the first two VMAs' pages, and nothing of what was under them")
            XCTAssertEqual(presentPTEs(mm, new + 2 * mib, mib), 8, "the gap's place keeps its pages")
            XCTAssertEqual(presentPTEs(mm, new + 3 * mib, mib), 16)
            XCTAssertNil(mm.findPTETable(tib), "every old table freed once the last VMA had gone")
        }
    }

    /// Before 6.17 the same move is EFAULT, and nothing moves; on any
    /// kernel a hole at OLD is.
    func testSeveralVMAsAreEFAULTBefore617AndAHoleAtTheStartAlways() throws {
        var pre617 = Self.smallPages
        pre617.mremapMovesVMAs = false
        for (profile, start) in [(pre617, tib), (Self.smallPages, tib + 2 * mib)] {
            try withLab(profile: profile) { allocator in
                let mm = try MM(allocator: allocator, profile: profile)
                defer { mm.exit() }
                try severalVMAs(mm)
                let before = mm.vmas
                XCTAssertThrowsError(try mm.mremap(from: start, length: 2 * mib, to: tib + gib)) {
                    XCTAssertEqual($0 as? MMError, .moveAcrossVMAs(address: start, length: 2 * mib))
                }
                XCTAssertEqual(mm.vmas, before)
                XCTAssertEqual(presentPTEs(mm, tib, 4 * mib), 48)
            }
        }
    }

    /// A VMA whose move runs out of memory stops the mremap there: the
    /// VMAs before it stay moved (remap_move returns the error, and keeps
    /// them), it and those after it stay where they were.
    func testAFailedVMAMoveKeepsTheVMAsMovedBeforeIt() throws {
        try withLab(profile: Self.smallPages, budgetPages: 4096) { allocator in
            let mm = try MM(allocator: allocator, profile: Self.smallPages)
            try mm.mmap(address: tib, length: 4 * mib)
            try mm.touch(address: tib, length: 4 * mib, stride: 64 << 10)
            try mm.mprotect(address: tib + 2 * mib, length: 2 * mib, protection: .r)
            // The first VMA lands below a 1 GiB boundary and its table moves
            // whole into a new PMD table; the second lands above it and
            // needs a PMD table of its own, which is one too many.
            let new = tib + 64 * gib - 2 * mib
            let held = try exhaust(allocator, leaving: 1)
            XCTAssertThrowsError(try mm.mremap(from: tib, length: 4 * mib, to: new)) { error in
                guard case MMError.outOfMemory = error else { return XCTFail("\(error)") }
            }
            XCTAssertEqual(mm.vmas.map { [$0.start, $0.end] }, [[tib + 2 * mib, tib + 4 * mib], [new, new + 2 * mib]])
            XCTAssertEqual(presentPTEs(mm, new, 2 * mib), 32)
            XCTAssertEqual(presentPTEs(mm, tib + 2 * mib, 2 * mib), 32)
            for page in held { try allocator.free(page) }
            XCTAssertEqual(mm.exit(), 0)
        }
    }

    /// [tib, tib + 4 MiB): read-write, read-only, a gap, read-write, 1 MiB
    /// each, 16 pages touched in each VMA.
    private func severalVMAs(_ mm: MM) throws {
        try mm.mmap(address: tib, length: 2 * mib)
        try mm.mmap(address: tib + 3 * mib, length: mib)
        try mm.touch(address: tib, length: 2 * mib, stride: 64 << 10)
        try mm.touch(address: tib + 3 * mib, length: mib, stride: 64 << 10)
        try mm.mprotect(address: tib + mib, length: mib, protection: .r)
    }

    /// A move that cannot allocate a table on the way fails with ENOMEM and
    /// leaves the old mapping as it was: copy_vma_and_data moves back what
    /// move_page_tables had moved and unmaps the new range instead. Going
    /// on as if the move had finished would unmap the old range with the
    /// entries it never moved, their data lost, and report success.
    func testAMoveThatRunsOutOfMemoryMovesBackAndFails() throws {
        try withLab(profile: Self.smallPages, budgetPages: 4096) { allocator in
            let mm = try MM(allocator: allocator, profile: Self.smallPages)
            try mm.mmap(address: tib, length: 4 * mib)
            try mm.touch(address: tib, length: 4 * mib)
            // Room for the new range's PMD table and its first PTE table:
            // 4 KiB off alignment, the move is entry by entry, and its
            // second PTE table is one too many.
            let held = try exhaust(allocator, leaving: 2)
            let new = tib + 64 * gib + 4096
            XCTAssertThrowsError(try mm.mremap(from: tib, length: 4 * mib, to: new)) { error in
                guard case MMError.outOfMemory = error else { return XCTFail("\(error)") }
            }
            XCTAssertEqual(mm.vmas.map { [$0.start, $0.end] }, [[tib, tib + 4 * mib]], "the old mapping, and nothing at the new address")
            XCTAssertEqual(presentPTEs(mm, tib, 4 * mib), 1024, "every page mapped where it was")
            XCTAssertEqual(presentPTEs(mm, new, 4 * mib), 0)
            for page in held { try allocator.free(page) }
            XCTAssertEqual(mm.exit(), 0)
        }
    }

    /// The move back is not checked, as in the kernel, and can need a
    /// table of its own: here the new range's second PTE table holds the
    /// last page of the old first 2 MiB, whose next PMD had no table, so
    /// moving back pte_allocs one there, and with memory still short it
    /// fails. The last 2 MiB's 511 pages, moved but not moved back, go with
    /// the new range: ENOMEM, and 513 of the 1024 pages left.
    func testTheMoveBackIsNotCheckedAsInTheKernel() throws {
        try withLab(profile: Self.smallPages, budgetPages: 4096) { allocator in
            let mm = try MM(allocator: allocator, profile: Self.smallPages)
            try mm.mmap(address: tib, length: 6 * mib)
            try mm.touch(address: tib, length: 2 * mib)
            try mm.touch(address: tib + 4 * mib, length: 2 * mib)
            // The new PMD table and three PTE tables; the fourth fails.
            let held = try exhaust(allocator, leaving: 4)
            let new = tib + 64 * gib + 4096
            XCTAssertThrowsError(try mm.mremap(from: tib, length: 6 * mib, to: new)) { error in
                guard case MMError.outOfMemory = error else { return XCTFail("\(error)") }
            }
            XCTAssertEqual(mm.vmas.map { [$0.start, $0.end] }, [[tib, tib + 6 * mib]])
            XCTAssertEqual(presentPTEs(mm, tib, 2 * mib), 512, "the first 2 MiB moved back")
            XCTAssertEqual(presentPTEs(mm, tib + 2 * mib, 4 * mib), 1, "of the last 2 MiB, only the page that never moved")
            XCTAssertEqual(presentPTEs(mm, new, 6 * mib), 0)
            for page in held { try allocator.free(page) }
            XCTAssertEqual(mm.exit(), 0)
        }
    }
}

/// Every page the allocator has, but `leaving`: the pages held, to free
/// when the test is done.
private func exhaust(_ allocator: PageAllocator, leaving: Int) throws -> [Page] {
    var held: [Page] = []
    while let page = try? allocator.alloc() { held.append(page) }
    for page in held.suffix(leaving) { try allocator.free(page) }
    return held.dropLast(leaving)
}

/// How many PTEs in [start, start + length) are present.
private func presentPTEs(_ mm: MM, _ start: UInt64, _ length: UInt64) -> Int {
    stride(from: start, to: start + length, by: 4096).filter { address in
        guard let (_, _, table) = mm.findPTETable(address) else { return false }
        return Entry(rawValue: ptlab_pte_read(mm.entry(in: table, level: .pte, address: address))).isPresent
    }.count
}
