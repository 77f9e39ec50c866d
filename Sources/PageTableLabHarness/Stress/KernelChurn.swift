import PageTableLab
/// The updater of a kernel-free run: kernel mappings made and torn down so
/// that every kernel function that frees kernel page tables gets to, as the
/// kernel calls it.
///
/// - vmalloc space, 64 slots of 2 MiB: vmap with 4 KiB pages, vunmap (which
///   leaves the tables), and a huge ioremap over a slot whose PTE table a
///   vunmap left: pmd_free_pte_page.
/// - the next GiB of vmalloc space: small vmaps in four of its 2 MiB slots,
///   vunmap, then a 1 GiB ioremap over it: pud_free_pmd_page.
/// - the direct map, four 2 MiB blocks: memory hot-add (one huge PMD),
///   set_memory_ro on a page (splits it into a PTE table), set_memory_rw
///   with CPA_COLLAPSE (cpa_collapse_large_pages frees the PTE table), and
///   memory hot-remove (free_pagetable frees the PTE table, and the PMD
///   table once every block is gone).
struct KernelChurn {
    static let slots = 64
    static let gibSlots = 4

    private enum Slot { case empty, small, huge }
    private enum GiB { case empty, small, emptied, huge }

    let kernel: InitMM
    let blocks: OnlineBlocks
    private var slot = [Slot](repeating: .empty, count: slots)
    private var gib = GiB.empty
    private var hotplugged = [MemoryBlock?](repeating: nil, count: OnlineBlocks.count)
    private var split = [Bool](repeating: false, count: OnlineBlocks.count)

    init(kernel: InitMM, blocks: OnlineBlocks) {
        self.kernel = kernel
        self.blocks = blocks
    }

    static func slotAddress(_ layout: KernelLayout, _ i: Int) -> UInt64 { layout.vmallocStart + UInt64(i) << 21 }
    static func gibAddress(_ layout: KernelLayout) -> UInt64 { layout.vmallocStart + (1 << 30) }

    /// Where walker request `r` goes: a page of a vmalloc slot, of the
    /// 1 GiB region, or of an online block (entered: the caller leaves it).
    static func walkTarget(_ layout: KernelLayout, _ blocks: OnlineBlocks, _ r: UInt64) -> (address: UInt64, block: Int?) {
        let page = ((r >> 20) % 16) << 12
        switch r % 10 {
        case 6, 7:
            return (gibAddress(layout) + (((r >> 8) % UInt64(gibSlots)) << 21) + page, nil)
        case 8, 9:
            let b = Int((r >> 8) % UInt64(OnlineBlocks.count))
            if let address = blocks.enter(b) { return (address + (((r >> 24) % 512) << 12), b) }
            fallthrough
        default:
            return (slotAddress(layout, Int((r >> 8) % UInt64(slots))) + page, nil)
        }
    }

    /// One kernel operation, chosen by `rng`.
    mutating func step(_ rng: inout SplitMix64) throws(MMError) {
        switch rng.next() % 8 {
        case 0...4: try slotStep(Int(rng.next() % UInt64(Self.slots)), &rng)
        case 5: try gibStep()
        default: try blockStep(Int(rng.next() % UInt64(OnlineBlocks.count)), &rng)
        }
    }

    private mutating func slotStep(_ i: Int, _ rng: inout SplitMix64) throws(MMError) {
        let base = Self.slotAddress(kernel.layout, i)
        switch slot[i] {
        case .empty where rng.next() & 1 == 0:
            try kernel.vmap(address: base, length: (1 + rng.next() % 16) << 12)
            slot[i] = .small
        case .empty:
            if try kernel.ioremapHuge(address: base, level: .pmd) { slot[i] = .huge }
        case .small, .huge:
            try kernel.vunmap(address: base, length: 2 << 20)
            slot[i] = .empty
        }
    }

    private mutating func gibStep() throws(MMError) {
        let base = Self.gibAddress(kernel.layout)
        switch gib {
        case .empty:
            for s in 0..<Self.gibSlots { try kernel.vmap(address: base + UInt64(s) << 21, length: 4096) }
            gib = .small
        case .small:
            try kernel.vunmap(address: base, length: UInt64(Self.gibSlots) << 21)
            gib = .emptied
        case .emptied:
            if try kernel.ioremapHuge(address: base, level: .pud) { gib = .huge }
        case .huge:
            try kernel.vunmap(address: base, length: 1 << 30)
            gib = .empty
        }
    }

    private mutating func blockStep(_ i: Int, _ rng: inout SplitMix64) throws(MMError) {
        guard let block = hotplugged[i] else {
            let block = try kernel.memoryHotAdd()
            hotplugged[i] = block
            blocks.online(i, at: block.address)
            return
        }
        let page = block.address + ((rng.next() % 512) << 12)
        switch (split[i], rng.next() % 4) {
        case (false, 0), (true, 0):
            try hotRemove(i)
        case (false, _):
            try kernel.changePageAttr(address: page, pages: 1, readOnly: true, collapse: false)
            split[i] = true
        case (true, _):
            try kernel.changePageAttr(address: block.address, pages: 512, readOnly: false, collapse: true)
            split[i] = false
        }
    }

    private mutating func hotRemove(_ i: Int) throws(MMError) {
        guard let block = hotplugged[i] else { return }
        blocks.offline(i)
        try kernel.memoryHotRemove(block)
        hotplugged[i] = nil
        split[i] = false
    }

    /// Unmap and remove everything (the walkers have stopped).
    mutating func tearDown() throws(MMError) {
        for i in 0..<Self.slots where slot[i] != .empty {
            try kernel.vunmap(address: Self.slotAddress(kernel.layout, i), length: 2 << 20)
            slot[i] = .empty
        }
        if gib != .empty {
            try kernel.vunmap(address: Self.gibAddress(kernel.layout), length: 1 << 30)
            gib = .empty
        }
        for i in 0..<OnlineBlocks.count { try hotRemove(i) }
    }
}
