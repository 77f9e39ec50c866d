import CSupport
import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

final class IOMMUDMAWalkersTests: XCTestCase {
    /// A 2 MiB region whose PTE table a "kernel" thread keeps replacing.
    static let region: UInt64 = 0x7F00_0000_0000

    func testWalkerThreadsTranslateCorrectlyWhileInvalidationsRun() throws {
        try withIOMMU { allocator, iommu in
            let tables = try HandTables(allocator: allocator)
            for k in 0..<64 { try tables.map(Self.region + UInt64(k) << 12, to: UInt32(1000 + k)) }
            try iommu.bindPASID(1, root: UInt64(tables.pgd.pfn), did: 1)
            let wrong = CallCounter()
            let walkers = DMAWalkers(iommu: iommu, count: 2, request: { w, i in
                DMARequest(pasid: 1, address: Self.region + ((i &* 7 &+ UInt64(w)) % 64) << 12 | 0x10)
            }, onResult: { _, result in
                guard let p = result.physicalAddress, (1000 << 12..<1064 << 12).contains(p), p & 0xFFF == 0x10 else {
                    return wrong.bump()
                }
            })
            for _ in 0..<200 {
                try iommu.invalidateSecondaryTLBs(pasid: 1, start: Self.region, end: Self.region + 64 << 12, ih: false)
            }
            try waitUntil("the DMA walkers never made 2000 translations") { walkers.translations.load(ordering: .relaxed) >= 2000 }
            walkers.stop()
            let s = iommu.counters.snapshot()
            XCTAssertEqual(wrong.count, 0)
            XCTAssertEqual([s.useAfterFree, s.faults], [0, 0])
            XCTAssertGreaterThan(s.walks, 0)
            try iommu.unbindPASID(1)
            try tables.freeAll()
        }
    }

    func testFreeingTablesAfterInvalidatingIsSafe() throws {
        let s = try churn(invalidate: true) { cycle, _ in cycle >= 100 }
        XCTAssertEqual([s.useAfterFree, s.writeAfterFree], [0, 0])
        XCTAssertGreaterThan(s.faults, 0, "walkers ran through the churned region")
    }

    func testFreeingTablesWithoutInvalidatingIsDetected() throws {
        let s = try churn(invalidate: false) { cycle, iommu in
            iommu.counters.snapshot().useAfterFree > 0 || cycle >= 20_000
        }
        XCTAssertGreaterThan(s.useAfterFree, 0, "stale walk caches into freed tables went unnoticed")
        XCTAssertEqual(s.useAfterFree, s.useAfterFreeFromCache)
    }

    /// Two DMA walkers read the region (half of its pages mapped) while this
    /// thread replaces its PTE table: link a new one, unlink it, invalidate
    /// the range (IH = 0) and wait — or not — and free it.
    private func churn(invalidate: Bool, until done: (Int, IntelIOMMU) -> Bool) throws -> IOMMUStats {
        var stats: IOMMUStats?
        try withIOMMU { allocator, iommu in
            let tables = try HandTables(allocator: allocator)
            let pmd = try tables.map(Self.region + 0x4000_0000 - 4096, to: 1)[.pmd]!  // same PMD, last 2 MiB
            try iommu.bindPASID(1, root: UInt64(tables.pgd.pfn), did: 1)
            let walkers = DMAWalkers(iommu: iommu, count: 2, request: { w, i in
                DMARequest(pasid: 1, address: Self.region + ((i &+ UInt64(w)) % 16) << 12)
            })
            let link = tables.slot(pmd, Self.region, shift: 21)
            var cycle = 0
            while !done(cycle, iommu) {
                let pte = try HandTables.makeTable(allocator, level: .pte, kernel: false)
                for k in 0..<8 {
                    ptlab_pte_write(tables.slot(pte, Self.region + UInt64(k) << 12, shift: 12),
                                    Entry(pfn: UInt32(2000 + k), flags: [.present, .writable]).rawValue)
                }
                ptlab_pte_write(link, Entry(pfn: pte.pfn, flags: [.present, .writable]).rawValue)
                // Let a walk that began after the link finish (two walkers: the
                // third translation from now did), so the PDE is cached.
                let seen = walkers.translations.load(ordering: .relaxed)
                try waitUntil("the DMA walkers stopped translating") { walkers.translations.load(ordering: .relaxed) >= seen + 3 }
                ptlab_pte_write(link, 0)
                if invalidate {
                    try iommu.invalidateSecondaryTLBs(pasid: 1, start: Self.region, end: Self.region + 0x20_0000, ih: false)
                }
                try allocator.free(pte)
                cycle += 1
            }
            walkers.stop()
            stats = iommu.counters.snapshot()
            XCTAssertGreaterThan(walkers.translations.load(ordering: .relaxed), 0)
            try iommu.unbindPASID(1)
            try tables.freeAll()
        }
        return try XCTUnwrap(stats)
    }
}
