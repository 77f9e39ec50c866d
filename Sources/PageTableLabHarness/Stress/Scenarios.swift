import PageTableLab
extension Scenario {
    /// Every scenario `ptlab stress` knows, in the order `stress all` runs them.
    public static let all: [Scenario] = [collapseShmem, collapseShmemPre6_6, collapseAnonymous, unmap, reclaim, ptlock, batchFail, sva, race]

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
            .safe("defer") { $0.collapseFree = .pteFreeDefer },
            .unsafe("immediate", caughtBy: .pteOffsetMap) { $0.collapseFree = .immediate },
        ],
        walkers: [.pteOffsetMap(.rcu), .gupFast, .mmu],
        step: collapseShmemStep)

    /// The same collapse before 6.6, in the kernel Debian 12 ships (6.1):
    /// the retract holds the mm's mmap write lock (trylocked in
    /// retract_page_tables, taken for collapse_pte_mapped_thp) and frees
    /// the table right after tlb_remove_table_sync_one. Its walkers are the
    /// ones that kernel had: pte_offset_map only under the mmap lock (it
    /// had no RCU-only walkers), GUP-fast, which the IPI waits out, and the
    /// MMU, which the flush covers. The same free under 6.6+'s locks (none
    /// of the mm's) is caught by the walker under the read lock.
    static let collapseShmemPre6_6 = Scenario(
        name: "collapse", path: "shmem-pre-6.6",
        summary: "MADV_COLLAPSE of shmem before 6.6: the retract under the mmap write lock + sync IPI vs pte_offset_map (mmap read lock), GUP-fast and MMU walks",
        modes: [
            .safe("ipi-sync") {
                $0.collapseFree = .syncIPI
                $0.perVMALock = false
            },
            .unsafe("ipi-sync-unlocked", caughtBy: .pteOffsetMap) {
                $0.collapseFree = .syncIPIUnlocked
                $0.perVMALock = false
                $0.deliberatelyUnsafe = true
            },
        ],
        walkers: [.pteOffsetMap(.mmapRead), .gupFast, .mmu],
        step: collapseShmemStep)

    /// Each step of the two collapse paths of shared memory.
    private static let collapseShmemStep: @Sendable (MM, StressRegion, inout SplitMix64) throws -> Void = { mm, region, rng in
        if mm.vmas.isEmpty { try mm.mmap(address: region.base, length: region.length, shared: true) }
        try collapseOneTable(mm, region, &rng, stride: 32 << 10)
    }

    /// One 2 MiB of the region collapsed, a page in every `stride` faulted
    /// in first; or, when the table picked is a huge PMD already, the whole
    /// region unmapped, so that the next round starts from small pages.
    private static func collapseOneTable(_ mm: MM, _ region: StressRegion, _ rng: inout SplitMix64, stride: UInt64) throws {
        let table = region.table(Int(rng.next() % UInt64(region.tables)))
        if mm.isHugePMD(table) {
            try mm.munmap(address: region.base, length: region.length)
            return
        }
        try mm.touch(address: table, length: MM.pmdSize, stride: stride)
        try mm.madviseCollapse(address: table, length: MM.pmdSize)
    }

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
        walkers: [.gupFast, .mmu],
        step: { mm, region, rng in
            if mm.vmas.isEmpty { try mm.mmap(address: region.base, length: region.length) }
            let table = region.table(Int(rng.next() % UInt64(region.tables)))
            if mm.isHugePMD(table) {
                try mm.madviseDontneed(address: table + (rng.next() % 512) << 12, length: 4096)
            }
            try mm.touch(address: table, length: MM.pmdSize, stride: 32 << 10)
            try mm.madviseCollapse(address: table, length: MM.pmdSize)
        })

    /// munmap through an mmu_gather with RCU table freeing. Its walkers are
    /// the ones that can be in a table munmap frees: GUP-fast, and the MMU
    /// (walkers under the mmap read lock cannot find the detached VMAs).
    static let unmap = Scenario(
        name: "unmap",
        summary: "munmap's free_pgtables through mmu_gather vs GUP-fast and MMU walks",
        modes: [
            .safe("rcu-table-free") { $0.tableFree = .rcu },
            .unsafe("immediate", caughtBy: .gupFast) { $0.tableFree = .immediate },
            .unsafe("no-flush", caughtBy: .stalePSC) { $0.gatherSkipsFlush = true },
            .safeWithIPIs("no-rcu", caughtWithoutBy: .gupFast) { $0.tableFree = .noRCU },
        ],
        walkers: [.gupFast, .mmu],
        step: mapTouchUnmap)

    /// MADV_DONTNEED reclaiming empty PTE tables (PT_RECLAIM), under the
    /// mmap read lock: a pte_offset_map walker holding the read lock too
    /// walks beside it.
    static let reclaim = Scenario(
        name: "reclaim",
        summary: "MADV_DONTNEED with PT_RECLAIM vs GUP-fast, pte_offset_map (mmap read lock) and MMU walks",
        modes: [
            .safe("rcu-table-free") { $0.tableFree = .rcu },
            .unsafe("immediate", caughtBy: .gupFast) { $0.tableFree = .immediate },
        ],
        walkers: [.gupFast, .pteOffsetMap(.mmapRead), .mmu],
        step: touchDontneed)

    /// The ptlock lifetime of seed 003: dtor at free vs at unlink.
    static let ptlock = Scenario(
        name: "ptlock",
        summary: "PT_RECLAIM frees vs pte_offset_map_lock: when the ptlock dies",
        modes: [
            .safe("dtor-at-free") { $0.dtor = .atFree },
            .unsafe("dtor-at-unlink", caughtBy: .freedPTLock) { $0.dtor = .atUnlink },
        ],
        walkers: [.pteOffsetMapLock],
        step: touchDontneed)

    /// No page for the table batch (tlb_remove_table_one), under munmap and
    /// under MADV_DONTNEED. Without PT_RECLAIM (ipi-sync, the kernel before
    /// 6.14) DONTNEED frees no table, and munmap's walkers all run with IRQs
    /// off or cannot find its VMAs: the sync IPI is enough. With PT_RECLAIM,
    /// DONTNEED frees tables under the mmap read lock (6.17+: its VMA's
    /// alone), beside pte_offset_map
    /// walkers that hold only that lock and RCU: the IPI does not wait for
    /// them (ipi-sync-reclaim, the combination no kernel shipped). And a
    /// table freed without tlb_table_invalidate first is still in a CPU's
    /// paging-structure cache (no-invalidate).
    static let batchFail = Scenario(
        name: "batch-fail",
        summary: "table-batch allocation failure: tlb_remove_table_one fallbacks vs GUP-fast, pte_offset_map (mmap read lock) and MMU walks",
        modes: [
            .safe("ipi-sync") { batchFallback(&$0, .ipiSync, ptReclaim: false) },
            .safe("rcu-one") { batchFallback(&$0, .rcuOne, ptReclaim: true) },
            .safe("synchronize") { batchFallback(&$0, .synchronize, ptReclaim: true) },
            .unsafe("ipi-sync-reclaim", caughtBy: .pteOffsetMap) {
                batchFallback(&$0, .ipiSync, ptReclaim: true)
                $0.deliberatelyUnsafe = true
            },
            .unsafe("no-invalidate", caughtBy: .stalePSC) { batchFallback(&$0, .noInvalidate, ptReclaim: true) },
        ],
        walkers: [.gupFast, .pteOffsetMap(.mmapRead), .mmu],
        step: { mm, region, rng in
            if rng.next() & 1 == 0 { try mapTouchUnmap(mm, region, &rng) } else { try touchDontneed(mm, region, &rng) }
        })

    static func batchFallback(_ profile: inout MMProfile, _ fallback: RCUTableFree.Fallback, ptReclaim: Bool) {
        profile.failBatchAllocation = true
        profile.tableFree = .rcu(fallback: fallback)
        profile.ptReclaim = ptReclaim
    }

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
        walkers: [.dma],
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
                try collapseOneTable(mm, region, &rng, stride: 64 << 10)
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
