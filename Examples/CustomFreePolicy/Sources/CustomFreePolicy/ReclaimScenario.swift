import PageTableLab
import PageTableLabHarness

extension Scenario {
    /// MADV_DONTNEED with PT_RECLAIM, and now and then munmap + mmap, with
    /// `policy` freeing the tables, beside every walker that can be inside
    /// a table they free: GUP-fast, pte_offset_map under the mmap read
    /// lock, the CPU's MMU, and with `dma` a device walking the mm's own
    /// tables through the IOMMU (SVA; the mmu_notifier's invalidation
    /// reaches it, inside the gather's flush).
    ///
    /// A safe policy must leave every detector silent; an unsafe one is
    /// caught by `caughtBy`.
    static func reclaim(with policy: any TableFreePolicy, caughtBy detector: Detector? = nil, dma: Bool = true) -> Scenario {
        let setProfile: @Sendable (inout MMProfile) -> Void = {
            $0.tableFree = policy
            $0.ptReclaim = true
        }
        let mode = detector.map { Mode.unsafe(policy.name, caughtBy: $0, setProfile) } ?? Mode.safe(policy.name, setProfile)
        return Scenario(
            name: "custom-reclaim",
            summary: "MADV_DONTNEED (PT_RECLAIM) and munmap freeing tables through \(policy.name) vs GUP-fast, pte_offset_map, MMU and DMA walks",
            modes: [mode.withIOMMU { $0.notifierHint = .linux }],
            walkers: [.gupFast, .pteOffsetMap(.mmapRead), .mmu] + (dma ? [.dma] : []),
            step: { mm, region, rng in
                if mm.vmas.isEmpty { try mm.mmap(address: region.base, length: region.length) }
                try mm.touch(address: region.base, length: region.length, stride: 32 << 10)
                if rng.next() % 4 == 0 {
                    try mm.munmap(address: region.base, length: region.length)
                } else {
                    try mm.madviseDontneed(address: region.base, length: region.length)
                }
            })
    }
}
