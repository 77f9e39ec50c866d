internal import CSupport
import Synchronization

/// init_mm: the kernel's page tables. Every table carries the ptdesc kernel
/// bit; none has a split ptlock (init_mm.page_table_lock covers them).
///
/// Its upper half is shared by every user mm: as x86's
/// preallocate_vmalloc_pages does (and the direct map's boot-time setup),
/// the table under each of the lab's root entries exists from boot — a PUD
/// table with 4-level paging, a P4D table with 5-level — so copying the
/// root's kernel half into a new mm (pgd_ctor) is all it takes for the mm,
/// and an IOMMU walking the mm's tables through SVA, to see every later
/// kernel mapping. init_mm and the mms share one paging mode, so the copied
/// entries point at tables of the level the mm's walk expects.
///
/// The kernel frees kernel page tables in four places, each modelled here
/// as the kernel calls it, each with a CPU TLB flush before the table goes
/// to pagetable_free (KernelVmap, MemoryHotplug, CPACollapse):
/// pmd_free_pte_page and pud_free_pmd_page (a huge ioremap over a range
/// whose small tables must go), memory hot-remove's free_pagetable, and the
/// CPA large-page collapse. One exception is Linux's own: hot-remove queues
/// an emptied PMD table before its closing flush_tlb_all (unflushedFreesBy
/// counts it). vunmap frees none: Linux leaves emptied tables linked.
public final class InitMM: @unchecked Sendable {
    public let allocator: PageAllocator
    public let layout: KernelLayout
    public let pgd: Page
    let pageTableLock = LabMutex<Void>(())
    /// Where kernel tables go when they are freed (pagetable_free).
    public let freer: KernelPageTableFree
    /// The CPUs' view of kernel mappings: flush_tlb_kernel_range and
    /// flush_tlb_all go through it (CPUs attached to it drop their caches).
    public let tlb = TLBModel()
    public let rangeFlushes = Atomic<Int>(0)
    public let fullFlushes = Atomic<Int>(0)
    /// Tables handed to pagetable_free before any CPU TLB flush since they
    /// were taken out of use. Linux's own order gives some (memory
    /// hot-remove frees an emptied PMD table before its closing
    /// flush_tlb_all); any other is a caller that forgot its flush.
    let unflushed = LabMutex<[Int]>(Array(repeating: 0, count: KernelTableCaller.allCases.count))
    private let freed = LabMutex<[Int]>(Array(repeating: 0, count: KernelTableCaller.allCases.count))
    /// cpa_collapse_large_pages' list of collapsed tables, threaded through
    /// their pt_list (used under pageTableLock).
    let collapsed: UnsafeMutablePointer<cds_list_head>

    /// Boot: the root and the table under each area's root entry.
    public init(allocator: PageAllocator, freer: KernelPageTableFree, fiveLevel: Bool = false) throws(MMError) {
        self.allocator = allocator
        self.freer = freer
        layout = .paging(fiveLevel: fiveLevel)
        collapsed = .allocate(capacity: 1)
        ptlab_list_init(collapsed)
        pgd = try PageTables.alloc(.pgd, mm: nil, node: .local, allocator: allocator, kernel: true)
        let level: Level = fiveLevel ? .p4d : .pud
        for start in layout.areas {
            do {
                _ = try populate(slot(pgd, .pgd, start), level: level)
            } catch {
                release()
                throw error
            }
        }
    }

    deinit { collapsed.deallocate() }

    /// The lab is unloading: free every kernel table, straight to the
    /// allocator (nothing walks them any more). Leaves must be gone already
    /// (vunmap, memory hot-remove): only tables are freed here.
    public func release() {
        pageTableLock.withLock { _ in freeSubtree(pgd, .pgd) }
    }

    private func freeSubtree(_ table: Page, _ level: Level) {
        if let below = childLevel(of: level) {
            let base = allocator.address(of: table).assumingMemoryBound(to: UInt64.self)
            for i in 0..<512 {
                let e = Entry(rawValue: ptlab_pte_read(base + i))
                if !e.has(Entry.huge), let t = child(e) { freeSubtree(t, below) }
            }
        }
        PageTables.dtorFree(table, allocator: allocator)
    }

    /// pgd_ctor: copy the kernel half into a new user root of the same mode.
    func cloneKernelEntries(into userPGD: Page) {
        let src = allocator.address(of: pgd).assumingMemoryBound(to: UInt64.self)
        let dst = allocator.address(of: userPGD).assumingMemoryBound(to: UInt64.self)
        for i in 256..<512 { ptlab_pte_write(dst + i, ptlab_pte_read(src + i)) }
    }

    // MARK: - walking

    /// The level of the tables a `level` entry points to: P4D is folded
    /// into the root with 4-level paging, as on x86 without LA57.
    func childLevel(of level: Level) -> Level? {
        level == .pgd && !layout.fiveLevel ? .pud : level.below
    }

    /// The entry of `table` (a table of `level`) mapping `address`. With
    /// 4-level paging the root decodes bits 47:39.
    func slot(_ table: Page, _ level: Level, _ address: UInt64) -> UnsafeMutablePointer<UInt64> {
        let index = level == .pgd && !layout.fiveLevel ? Level.p4d.index(of: address) : level.index(of: address)
        return allocator.address(of: table).assumingMemoryBound(to: UInt64.self) + index
    }

    func child(_ e: Entry) -> Page? {
        e.isPresent ? allocator.descriptor(pfn: e.pfn).map(Page.init) : nil
    }

    /// The table of `level` that maps `address`, building the missing ones
    /// on the way down (the *_alloc of vmap_range and friends). Throws
    /// `mappingExists` if a huge leaf is in the way.
    func table(_ level: Level, for address: UInt64) throws(MMError) -> Page {
        var table = pgd
        var at = Level.pgd
        while at != level {
            guard let below = childLevel(of: at) else { preconditionFailure("no \(level.name) below \(at.name)") }
            let entry = slot(table, at, address)
            if Entry(rawValue: ptlab_pte_read(entry)).has(Entry.huge) {
                throw .mappingExists(address: address & ~(at.entrySpan - 1), length: at.entrySpan)
            }
            table = try populate(entry, level: below)
            at = below
        }
        return table
    }

    /// The table of `level` that maps `address`, if it exists (no huge leaf
    /// above it, nothing built on the way).
    func lookup(_ level: Level, for address: UInt64) -> Page? {
        var table = pgd
        var at = Level.pgd
        while at != level {
            let e = Entry(rawValue: ptlab_pte_read(slot(table, at, address)))
            guard !e.has(Entry.huge), let below = childLevel(of: at), let next = child(e) else { return nil }
            table = next
            at = below
        }
        return table
    }

    func populate(_ slot: UnsafeMutablePointer<UInt64>, level: Level) throws(MMError) -> Page {
        if let existing = child(Entry(rawValue: ptlab_pte_read(slot))) { return existing }
        let table = try PageTables.alloc(level, mm: nil, node: .local, allocator: allocator, kernel: true)
        ptlab_pte_write(slot, Entry(pfn: table.pfn, flags: Self.tableFlags).rawValue)
        return table
    }

    /// Visit each entry of `table` (a table of `level`) that maps part of
    /// [start, end): its slot, its value, and the part [at, next) it maps.
    func forEachEntry(_ table: Page, _ level: Level, from start: UInt64, to end: UInt64,
                      _ body: (_ slot: UnsafeMutablePointer<UInt64>, _ entry: Entry, _ at: UInt64, _ next: UInt64) -> Void) {
        var at = start
        while at < end {
            let next = min((at | (entrySpan(level) - 1)) &+ 1, end)
            let entry = slot(table, level, at)
            body(entry, Entry(rawValue: ptlab_pte_read(entry)), at, next)
            at = next
        }
    }

    /// Bytes one entry of a `level` table spans (the 4-level root's span a
    /// P4D entry's: the P4D is folded into it).
    func entrySpan(_ level: Level) -> UInt64 {
        level == .pgd && !layout.fiveLevel ? Level.p4d.entrySpan : level.entrySpan
    }

    func isEmpty(_ table: Page) -> Bool {
        let base = allocator.address(of: table).assumingMemoryBound(to: UInt64.self)
        return (0..<512).allSatisfy { ptlab_pte_read(base + $0) == 0 }
    }

    /// _KERNPG_TABLE and PAGE_KERNEL: kernel entries are made with A and D
    /// already set, so no walker, CPU or IOMMU, ever writes them.
    static let tableFlags: Entry.Flags = [.present, .writable, .accessed, .dirty]
    static let leafFlags: Entry.Flags = [.present, .writable, .accessed, .dirty]

    func validate(_ address: UInt64, _ length: UInt64, in area: UInt64, _ operation: String) throws(MMError) {
        guard address & 4095 == 0 else { throw .misaligned(what: "kernel address", value: address) }
        guard length & 4095 == 0 else { throw .misaligned(what: "kernel length", value: length) }
        guard length > 0 else { throw .zeroLength(operation: operation) }
        guard address >= area, length <= KernelLayout.areaSize, address - area <= KernelLayout.areaSize - length else {
            throw .outsideKernelArea(address: address, length: length, operation: operation)
        }
    }

    // MARK: - the CPU TLB and pagetable_free

    /// flush_tlb_kernel_range: every CPU drops its translations of the range
    /// and, since INVLPG also drops paging-structure caches, any cached
    /// pointer to a table under it. (No IOMMU flush rides along in 6.19:
    /// the IOMMU hears of freed tables from the deferred free's work.)
    func flushTLBKernelRange(_ start: UInt64, _ end: UInt64) {
        rangeFlushes.add(1, ordering: .relaxed)
        tlb.flush()
    }

    /// flush_tlb_all: every CPU drops everything.
    func flushTLBAll() {
        fullFlushes.add(1, ordering: .relaxed)
        tlb.flush()
    }

    /// pagetable_free of a kernel table by `caller`, which took it out of use
    /// when the CPU TLB generation was `detachedAt`. Kernel tables go down
    /// the freer's path (pagetable_free_kernel: deferred until the IOMMU
    /// has been told).
    func pagetableFree(_ table: Page, by caller: KernelTableCaller, detachedAt generation: UInt64) {
        if tlb.currentGeneration == generation { unflushed.withLock { $0[caller.index] += 1 } }
        freed.withLock { $0[caller.index] += 1 }
        freer.pagetableFree(table)
    }

    /// Kernel tables freed so far, by the kernel function that freed them.
    public var tablesFreedBy: [KernelTableCaller: Int] { counts(freed) }
    /// Of those, the ones freed before a CPU TLB flush covered them.
    public var unflushedFreesBy: [KernelTableCaller: Int] { counts(unflushed) }

    private func counts(_ c: borrowing LabMutex<[Int]>) -> [KernelTableCaller: Int] {
        let v = c.withLock { $0 }
        return Dictionary(uniqueKeysWithValues: KernelTableCaller.allCases.map { ($0, v[$0.index]) })
    }
}

/// The kernel functions that free kernel page tables.
public enum KernelTableCaller: String, Sendable, Codable, CaseIterable {
    /// A huge vmap/ioremap PMD over an emptied PTE table.
    case pmdFreePTEPage = "pmd_free_pte_page"
    /// A huge vmap/ioremap PUD over an emptied PMD table and its PTE tables.
    case pudFreePMDPage = "pud_free_pmd_page"
    /// Memory hot-remove (remove_pagetable → free_pte_table, free_pmd_table).
    case freePagetable = "free_pagetable"
    /// set_memory: 512 agreeing PTEs put back under one huge PMD.
    case cpaCollapse = "cpa_collapse_large_pages"

    /// Its slot in the per-caller counters (a switch: allCases would build
    /// an array on every call).
    var index: Int {
        switch self {
        case .pmdFreePTEPage: 0
        case .pudFreePMDPage: 1
        case .freePagetable: 2
        case .cpaCollapse: 3
        }
    }
}
