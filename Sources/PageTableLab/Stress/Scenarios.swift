extension Scenario {
    /// Every scenario `ptlab stress` knows, in the order `stress all` runs them.
    public static let all: [Scenario] = [collapseShmem, collapseAnonymous, unmap, reclaim, ptlock, batchFail, sva]

    /// The scenario called `name`: the one on `path` where it has several
    /// (the first is the default).
    public static func named(_ name: String, path: String? = nil) -> Scenario? {
        all.first { $0.name == name && (path == nil || $0.path == path) }
    }

    /// Each scenario's name once, in `all`'s order.
    public static var names: [String] {
        all.reduce(into: []) { names, s in if !names.contains(s.name) { names.append(s.name) } }
    }

    /// The paths of a scenario that has several.
    public static func paths(of name: String) -> [String] { all.filter { $0.name == name }.compactMap(\.path) }

    /// MADV_COLLAPSE of shared memory: collapse_file builds the huge folio,
    /// and the retract clears each mapping's PTE table and frees it with
    /// pte_free_defer, holding no mmap lock. GUP-fast and MMU walks are
    /// covered by the flush's IPI; pte_offset_map() users take IPIs and are
    /// covered only by RCU. Each file is collapsed table by table, then
    /// unmapped, so the next round starts from small pages again.
    static let collapseShmem = Scenario(
        name: "collapse", path: "shmem",
        summary: "MADV_COLLAPSE of shmem: the retract + pte_free_defer vs pte_offset_map, GUP-fast and MMU walks",
        modes: [
            .safe("defer") { $0.collapseFree = .defer },
            .unsafe("immediate", caughtBy: .pteOffsetMap) { $0.collapseFree = .immediate },
        ],
        walks: [.pteOffsetMap, .gupFast, .hardware],
        step: { mm, region, rng in
            if mm.vmas.isEmpty { try mm.mmap(address: region.base, length: region.length, shared: true) }
            let table = region.table(Int(rng.next() % UInt64(region.tables)))
            if mm.isHugePMD(table) {
                try mm.munmap(address: region.base, length: region.length)
                return
            }
            try mm.touch(address: table, length: MM.pmdSize, stride: 32 << 10)
            try mm.madviseCollapse(address: table, length: MM.pmdSize)
        })

    /// MADV_COLLAPSE of anonymous memory (collapse_huge_page): under the
    /// mmap write lock the PMD is cleared and flushed, GUP-fast waited out
    /// with tlb_remove_table_sync_one, and the PTE table deposited (not
    /// freed). The walkers that can reach an anonymous PTE table without the
    /// mmap lock are GUP-fast and the MMU; a partial DONTNEED splits the
    /// huge PMD again for the next round.
    static let collapseAnonymous = Scenario(
        name: "collapse", path: "anon",
        summary: "MADV_COLLAPSE of anonymous memory: collapse_huge_page vs GUP-fast and MMU walks",
        modes: [.safe("kernel") { _ in }],
        walks: [.gupFast, .hardware],
        step: { mm, region, rng in
            if mm.vmas.isEmpty { try mm.mmap(address: region.base, length: region.length) }
            let table = region.table(Int(rng.next() % UInt64(region.tables)))
            if mm.isHugePMD(table) {
                try mm.madviseDontneed(address: table + (rng.next() % 512) << 12, length: 4096)
            }
            try mm.touch(address: table, length: MM.pmdSize, stride: 32 << 10)
            try mm.madviseCollapse(address: table, length: MM.pmdSize)
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
            .safe("all-levels") { _ in }.withIOMMU { $0.notifierHint = .linux },
            .unsafe("leaf-only", caughtBy: .iommuFromCache) { _ in }.withIOMMU { $0.notifierHint = .leafOnly },
        ],
        walks: [.dma],
        step: { mm, region, rng in
            // Shared memory, so that collapse retracts (and frees) tables.
            if mm.vmas.isEmpty { try mm.mmap(address: region.base, length: region.length, shared: true) }
            switch rng.next() % 3 {
            case 0:
                try mm.touch(address: region.base, length: region.length, stride: 64 << 10)
                try mm.munmap(address: region.base, length: region.length)
            case 1:
                try mm.touch(address: region.base, length: region.length, stride: 64 << 10)
                try mm.madviseDontneed(address: region.base, length: region.length)
            default:
                let table = region.table(Int(rng.next() % UInt64(region.tables)))
                if mm.isHugePMD(table) {
                    try mm.munmap(address: region.base, length: region.length)
                    return
                }
                try mm.touch(address: table, length: MM.pmdSize, stride: 64 << 10)
                try mm.madviseCollapse(address: table, length: MM.pmdSize)
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
