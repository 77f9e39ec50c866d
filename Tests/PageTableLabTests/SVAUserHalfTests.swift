import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// The user half of SVA, one step at a time: a DMA translation caches the
/// walk to a user page (its PDE in the IOMMU's paging-structure cache),
/// then munmap, MADV_DONTNEED with PT_RECLAIM, or collapse frees the PTE
/// table. The mm's notifier must make the IOMMU drop that PDE, or the next
/// translation walks into the freed table. Each case runs both ways: the
/// kernel (the next translation faults) and a notifier that claims only
/// leaves changed (IH = 1), where the stale PDE must be caught.
final class SVAUserHalfTests: XCTestCase {
    private let base = 4 * tib
    private let pasid: UInt32 = 1

    private enum Free { case munmap, dontneed, collapse }

    /// The translation after `free`, with the notifier as `flush` says.
    private func translationAfter(_ free: Free, _ hint: SVANotifierHint) throws -> DMATranslation {
        var parameters = IntelIOMMU.Parameters()
        parameters.notifierHint = hint
        return try withLab { allocator in
            let iommu = try IntelIOMMU(allocator: allocator, parameters: parameters)
            defer { _ = iommu.shutdown() }
            let sva = SVA(iommu: iommu)
            let mm = try MM(allocator: allocator)
            defer { mm.exit() }
            let bond = try sva.bind(mm, pasid: pasid, did: 1)
            defer { try? sva.unbind(bond) }
            // A neighbour keeps the upper tables, so only the PTE table goes
            // and the cached PDE is the stale entry. Collapse frees a table
            // only for shared memory (anonymous collapse deposits it).
            try mm.mmap(address: base, length: 4 * mib, shared: free == .collapse)
            try mm.touch(address: base, length: 2 * mib, stride: 64 << 10)
            try mm.touch(address: base + 2 * mib, length: 4096)
            let address = base + (64 << 10)
            guard case .translated = iommu.translate(DMARequest(pasid: pasid, address: address)) else {
                XCTFail("the first translation of a mapped page failed")
                return .fault(.pasidNotBound(pasid))
            }
            XCTAssertGreaterThan(iommu.counters.snapshot().walks, 0)
            switch free {
            case .munmap: try mm.munmap(address: base, length: 2 * mib)
            case .dontneed: try mm.madviseDontneed(address: base, length: 2 * mib)
            case .collapse:
                try mm.madviseCollapse(address: base, length: 2 * mib)
                XCTAssertTrue(mm.isHugePMD(base), "the collapse mapped no huge PMD")
            }
            // Past the grace period: the table is freed (and may be reused).
            try RCU.barrier()
            XCTAssertEqual(bond.notifierFailures.load(ordering: .relaxed), 0)
            return iommu.translate(DMARequest(pasid: pasid, address: address))
        }
    }

    private func assertSafe(_ free: Free, file: StaticString = #filePath, line: UInt = #line) throws {
        let result = try translationAfter(free, .linux)
        // After a collapse the PMD maps the huge folio; otherwise it is empty.
        if free == .collapse {
            guard case .translated(_, level: .pmd) = result else {
                return XCTFail("after collapse the IOMMU should translate through the huge PMD, not \(result)", file: file, line: line)
            }
        } else {
            guard case .fault(.notPresent(level: .pmd)) = result else {
                return XCTFail("after \(free) the IOMMU should find the PMD entry empty, not \(result)", file: file, line: line)
            }
        }
    }

    private func assertCaught(_ free: Free, file: StaticString = #filePath, line: UInt = #line) throws {
        let result = try translationAfter(free, .leafOnly)
        guard case .useAfterFree(let uaf) = result, uaf.source == .pagingStructureCache, uaf.expected == .pte else {
            return XCTFail("with IH = 1 after \(free), the cached PDE should lead into the freed PTE table, not \(result)",
                           file: file, line: line)
        }
    }

    func testMunmapDropsTheIOMMUsCachedPDE() throws { try assertSafe(.munmap) }
    func testDontneedWithPTReclaimDropsTheIOMMUsCachedPDE() throws { try assertSafe(.dontneed) }
    func testCollapseDropsTheIOMMUsCachedPDE() throws { try assertSafe(.collapse) }

    func testMunmapWithALeafOnlyHintLeavesAStalePDE() throws { try assertCaught(.munmap) }
    func testDontneedWithALeafOnlyHintLeavesAStalePDE() throws { try assertCaught(.dontneed) }
    func testCollapseWithALeafOnlyHintLeavesAStalePDE() throws { try assertCaught(.collapse) }
}
