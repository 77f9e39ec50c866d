extension Scenario {
    /// Every scenario `ptlab stress` knows, in the order `stress all` runs them.
    public static let all: [Scenario] = [collapse, unmap, reclaim, ptlock, batchFail, sva]

    public static func named(_ name: String) -> Scenario? { all.first { $0.name == name } }

    /// khugepaged retracting PTE tables under lockless walkers. GUP-fast
    /// and MMU walks are covered by the flush's IPI; pte_offset_map() users
    /// take IPIs and are covered only by RCU.
    static let collapse = Scenario(
        name: "collapse",
        summary: "retract_page_tables + pte_free_defer vs pte_offset_map, GUP-fast and MMU walks",
        modes: [
            .safe("defer") { $0.collapseFree = .defer },
            .unsafe("immediate", caughtBy: .pteOffsetMap) { $0.collapseFree = .immediate },
        ],
        walks: [.pteOffsetMap, .gupFast, .hardware],
        step: { mm, region, rng in
            if mm.vmas.isEmpty { try mm.mmap(address: region.base, length: region.length) }
            let table = region.table(Int(rng.next() % UInt64(region.tables)))
            try mm.touch(address: table, length: MM.pmdSize, stride: 32 << 10)
            try mm.collapse(at: table)
        })

    /// munmap through an mmu_gather with RCU table freeing.
    static let unmap = Scenario(
        name: "unmap",
        summary: "munmap's free_pgtables through mmu_gather vs GUP-fast and MMU walks",
        modes: [
            .safe("rcu-table-free") { $0.tableFree = .rcu },
            .unsafe("immediate", caughtBy: .gupFast) { $0.tableFree = .immediate },
            .unsafe("no-flush", caughtBy: .stalePSC) { $0.tableFree = .noFlush },
        ],
        walks: [.gupFast, .hardware],
        step: mapTouchUnmap)

    /// MADV_DONTNEED reclaiming empty PTE tables (PT_RECLAIM).
    static let reclaim = Scenario(
        name: "reclaim",
        summary: "MADV_DONTNEED with PT_RECLAIM vs GUP-fast and MMU walks",
        modes: [
            .safe("rcu-table-free") { $0.tableFree = .rcu },
            .unsafe("immediate", caughtBy: .gupFast) { $0.tableFree = .immediate },
        ],
        walks: [.gupFast, .hardware],
        step: touchDontneed)

    /// The ptlock lifetime of seed 003: dtor at free vs at unlink.
    static let ptlock = Scenario(
        name: "ptlock",
        summary: "PT_RECLAIM frees vs pte_offset_map_lock: when the ptlock dies",
        modes: [
            .safe("dtor-at-free") { $0.dtor = .atFree },
            .unsafe("dtor-at-unlink", caughtBy: .freedPTLock) { $0.dtor = .atUnlink },
        ],
        walks: [.pteOffsetMapLock],
        step: touchDontneed)

    /// No page for the table batch: every fallback must stay safe.
    static let batchFail = Scenario(
        name: "batch-fail",
        summary: "table-batch allocation failure: tlb_remove_table_one fallbacks vs GUP-fast",
        modes: MMProfile.BatchFallback.allCases.map { fallback in
            .safe(fallback.rawValue) {
                $0.failBatchAllocation = true
                $0.batchFallback = fallback
            }
        },
        walks: [.gupFast, .hardware],
        step: mapTouchUnmap)

    /// The user half of SVA: a device walks the mm's own tables through the
    /// IOMMU while munmap, MADV_DONTNEED with PT_RECLAIM and collapse free
    /// them. Only the mmu_notifier's invalidation protects it, and only if
    /// that invalidation drops the IOMMU's paging-structure caches too.
    static let sva = Scenario(
        name: "sva",
        summary: "munmap, DONTNEED (PT_RECLAIM) and collapse vs DMA walkers of an SVA-bound mm",
        modes: [
            .safe("all-levels") { $0.secondaryTLBFlush = .allLevels },
            .unsafe("leaf-only", caughtBy: .iommuFromCache) { $0.secondaryTLBFlush = .leafOnly },
        ],
        walks: [.dma],
        step: { mm, region, rng in
            switch rng.next() % 3 {
            case 0: try mapTouchUnmap(mm, region, &rng)
            case 1: try touchDontneed(mm, region, &rng)
            default:
                if mm.vmas.isEmpty { try mm.mmap(address: region.base, length: region.length) }
                let table = region.table(Int(rng.next() % UInt64(region.tables)))
                try mm.touch(address: table, length: MM.pmdSize, stride: 64 << 10)
                try mm.collapse(at: table)
            }
        })

    static func mapTouchUnmap(_ mm: MM, _ region: StressRegion, _ rng: inout SplitMix64) throws {
        if mm.vmas.isEmpty { try mm.mmap(address: region.base, length: region.length) }
        try mm.touch(address: region.base, length: region.length, stride: 64 << 10)
        try mm.munmap(address: region.base, length: region.length)
    }

    static func touchDontneed(_ mm: MM, _ region: StressRegion, _ rng: inout SplitMix64) throws {
        if mm.vmas.isEmpty { try mm.mmap(address: region.base, length: region.length) }
        try mm.touch(address: region.base, length: region.length, stride: 64 << 10)
        try mm.madviseDontneed(address: region.base, length: region.length)
    }
}
