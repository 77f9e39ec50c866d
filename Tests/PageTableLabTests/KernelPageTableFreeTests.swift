import CSupport
import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// pagetable_free_kernel and its work, one step at a time.
final class KernelPageTableFreeTests: XCTestCase {
    private struct Rig {
        let allocator: PageAllocator
        let iommu: IntelIOMMU
        let sva: SVA
        let freer: KernelPageTableFree
        let kernel: InitMM
        let mm: MM
        let bond: SVABond

        func teardown() throws {
            freer.shutdown()
            try sva.unbind(bond)
            mm.exit()
            kernel.release()
            _ = iommu.shutdown()
            try RCU.barrier()
        }
    }

    private func withRig(_ mode: any KernelTableFreePolicy, _ body: (Rig) throws -> Void) throws {
        try withLab { allocator in
            let iommu = try IntelIOMMU(allocator: allocator)
            let sva = SVA(iommu: iommu)
            let freer = KernelPageTableFree(policy: mode, allocator: allocator) { sva.invalidateKVARange() }
            let kernel = try InitMM(allocator: allocator, freer: freer)
            let mm = try MM(allocator: allocator, kernel: kernel)
            let bond = try sva.bind(mm, pasid: 1, did: 1)
            let rig = Rig(allocator: allocator, iommu: iommu, sva: sva, freer: freer, kernel: kernel, mm: mm, bond: bond)
            try body(rig)
            try rig.teardown()
        }
    }

    private let a = KernelLayout.fourLevel.vmallocStart
    private let b = KernelLayout.fourLevel.vmallocStart + 2 * mib

    /// The bug: a freed kernel PTE table, reused, walked through the
    /// IOMMU's cached PDE. pmd_free_pte_page frees it (a huge ioremap over
    /// the range a vunmap emptied), at once in the kernel before the fix.
    func testNoInvalidateWalksIntoTheReusedTable() throws {
        try withRig(.noInvalidate) { rig in
            try rig.kernel.vmap(address: a, length: 4096)
            try rig.kernel.vmap(address: b, length: 4096)
            guard case .translated = rig.iommu.translate(DMARequest(pasid: 1, address: a)) else {
                return XCTFail("kernel address not translated through the bound mm")
            }
            try rig.kernel.vunmap(address: a, length: 2 * mib)       // the PTE table stays
            XCTAssertTrue(try rig.kernel.ioremapHuge(address: a, level: .pmd))   // frees it at once
            try rig.kernel.vmap(address: b + 4096, length: 4096)     // nothing reuses it yet…
            try rig.kernel.vmap(address: a + 4 * mib, length: 4096)  // …this takes the page back
            let result = rig.iommu.translate(DMARequest(pasid: 1, address: a + 8192))
            guard case .useAfterFree(let uaf) = result else { return XCTFail("expected a use-after-free, got \(result)") }
            XCTAssertEqual(uaf.source, .pagingStructureCache)
            try rig.kernel.vunmap(address: a, length: 8 * mib)
        }
    }

    func testDeferredFreesOnlyAfterTheInvalidationCompletes() throws {
        try withRig(.deferred) { rig in
            try rig.kernel.vmap(address: a, length: 4096)
            _ = rig.iommu.translate(DMARequest(pasid: 1, address: a))
            let pte = try XCTUnwrap(findKernelTable(rig, a))
            try rig.kernel.vunmap(address: a, length: 2 * mib)
            XCTAssertEqual(pte.state, PageState.allocated, "vunmap frees no table")
            rig.iommu.faultInjection.stallFetching()
            XCTAssertTrue(try rig.kernel.ioremapHuge(address: a, level: .pmd))
            // The work is stuck in qi_submit_sync: nothing may be freed yet.
            try waitUntil("the work never submitted its invalidation") {
                rig.freer.work.runs.load(ordering: .relaxed) > 0 || rig.iommu.freeSlots < rig.iommu.queueLength
            }
            XCTAssertEqual(pte.state, PageState.deferred, "freed before the IOMMU was told")
            rig.iommu.faultInjection.resumeFetching()
            rig.freer.work.flush()
            XCTAssertEqual(pte.state, PageState.free)
            let result = rig.iommu.translate(DMARequest(pasid: 1, address: a + 8192))
            XCTAssertEqual(result.physicalAddress, InitMM.deviceMemoryPFN << 12 + 8192, "translated through the huge PMD: \(result)")
            try rig.kernel.vunmap(address: a, length: 2 * mib)
        }
    }

    func testOneInvalidationPerBatchOfAnyOrder() throws {
        try withRig(.deferred) { rig in
            rig.freer.work.freeze()
            var pages: [Page] = []
            for _ in 0..<100 {
                let t = try PageTables.alloc(.pte, mm: nil, node: .local, allocator: rig.allocator, kernel: true)
                pages.append(t)
            }
            // Seed 002: higher-order and plain pages go on the same list.
            let big = try rig.allocator.alloc(order: 2)
            ptlab_page_set_flags(big.desc, PTLAB_PT_KERNEL)
            pages.append(big)
            for p in pages { rig.freer.pagetableFree(p) }
            XCTAssertEqual(rig.freer.work.runs.load(ordering: .relaxed), 0)
            XCTAssertTrue(pages.allSatisfy { $0.state == PageState.deferred })
            rig.freer.work.thaw()
            rig.freer.work.flush()
            XCTAssertEqual(rig.freer.invalidations.load(ordering: .relaxed), 1, "one invalidation for the batch")
            XCTAssertEqual(rig.freer.batches.load(ordering: .relaxed), 1)
            XCTAssertEqual(rig.freer.tablesFreed.load(ordering: .relaxed), 101)
            XCTAssertTrue(pages.allSatisfy { $0.state == PageState.free })
        }
    }

    private func findKernelTable(_ rig: Rig, _ address: UInt64) -> Page? {
        var table = rig.kernel.pgd
        for level in [Level.pgd, .pud, .pmd] {
            let e = Entry(rawValue: ptlab_pte_read(rig.kernel.slot(table, level, address)))
            guard e.isPresent, let d = rig.allocator.descriptor(pfn: e.pfn) else { return nil }
            table = Page(d)
        }
        return table
    }
}
