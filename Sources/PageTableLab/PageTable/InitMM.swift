import CSupport
import Synchronization

/// init_mm: the kernel's page tables. Every table carries the ptdesc kernel
/// bit; none has a split ptlock (init_mm.page_table_lock covers them).
///
/// Its upper half is shared by every user mm: as x86's
/// preallocate_vmalloc_pages does, the PUD tables under the vmalloc area's
/// PGD entries exist from boot, so copying those PGD entries into a new mm
/// (pgd_ctor) is all it takes for the mm — and an IOMMU walking the mm's
/// tables through SVA — to see every later kernel mapping.
public final class InitMM: @unchecked Sendable {
    /// VMALLOC_START on x86-64 with 4-level paging.
    public static let vmallocStart: UInt64 = 0xffff_c900_0000_0000
    /// The lab's vmalloc area: one PGD entry (512 GiB).
    public static let vmallocSize: UInt64 = 1 << 39

    public let allocator: PageAllocator
    public let pgd: Page
    let pageTableLock = LabMutex<Void>(())
    /// Where kernel tables go when they are freed (pagetable_free).
    public let freer: KernelPageTableFree

    public init(allocator: PageAllocator, freer: KernelPageTableFree) throws(MMError) {
        self.allocator = allocator
        self.freer = freer
        pgd = try PageTables.alloc(.pgd, base: 0, mm: nil, node: .local, allocator: allocator, kernel: true)
        let pud = try PageTables.alloc(.pud, base: Self.vmallocStart, mm: nil, node: .local, allocator: allocator, kernel: true)
        ptlab_pte_write(slot(pgd, .pgd, Self.vmallocStart),
                        Entry(pfn: pud.pfn, flags: Entry.present | Entry.writable).rawValue)
    }

    /// Free the preallocated tables (the lab is unloading; nothing is mapped).
    public func release() {
        let pgdEntry = Entry(rawValue: ptlab_pte_read(slot(pgd, .pgd, Self.vmallocStart)))
        if let d = allocator.descriptor(pfn: pgdEntry.pfn) { PageTables.dtorFree(Page(d), allocator: allocator) }
        PageTables.dtorFree(pgd, allocator: allocator)
    }

    /// pgd_ctor: copy the kernel half into a new user PGD.
    func cloneKernelEntries(into userPGD: Page) {
        let src = allocator.address(of: pgd).assumingMemoryBound(to: UInt64.self)
        let dst = allocator.address(of: userPGD).assumingMemoryBound(to: UInt64.self)
        for i in 256..<512 { ptlab_pte_write(dst + i, ptlab_pte_read(src + i)) }
    }

    /// The entry of `table` mapping `address`. init_mm uses 4-level paging:
    /// its PGD decodes bits 47:39 (the P4D is folded into it).
    func slot(_ table: Page, _ level: Level, _ address: UInt64) -> UnsafeMutablePointer<UInt64> {
        let index = level == .pgd ? Level.p4d.index(of: address) : level.index(of: address)
        return allocator.address(of: table).assumingMemoryBound(to: UInt64.self) + index
    }

    private func child(_ e: Entry) -> Page? {
        e.isPresent ? allocator.descriptor(pfn: e.pfn).map(Page.init) : nil
    }

    func validate(_ address: UInt64, _ length: UInt64) throws(MMError) {
        guard address & 4095 == 0 else { throw .misaligned(what: "kernel address", value: address) }
        guard length & 4095 == 0 else { throw .misaligned(what: "kernel length", value: length) }
        guard length > 0 else { throw .zeroLength(operation: "vmap") }
        guard address >= Self.vmallocStart, length <= Self.vmallocSize - (address - Self.vmallocStart) else {
            throw .outOfUserRange(address: address, length: length)
        }
    }

    /// vmap: map `length` bytes of fresh data pages at `address`, building
    /// PMD and PTE tables as needed.
    public func vmap(address: UInt64, length: UInt64) throws(MMError) {
        try validate(address, length)
        try pageTableLock.withLock { _ throws(MMError) in
            var at = address
            while at < address + length {
                let pud = child(Entry(rawValue: ptlab_pte_read(slot(pgd, .pgd, at))))!
                let pmd = try populate(slot(pud, .pud, at), level: .pmd, base: at & ~(Level.pmd.tableSpan - 1))
                let pte = try populate(slot(pmd, .pmd, at), level: .pte, base: at & ~(Level.pte.tableSpan - 1))
                let entry = slot(pte, .pte, at)
                if !Entry(rawValue: ptlab_pte_read(entry)).isPresent {
                    let data: Page
                    do throws(PageAllocError) {
                        data = try allocator.alloc(node: .local, zero: true)
                    } catch {
                        throw .outOfMemory(error)
                    }
                    ptlab_pte_write(entry, Entry(pfn: data.pfn, flags: Entry.present | Entry.writable).rawValue)
                }
                at += 4096
            }
        }
    }

    private func populate(_ slot: UnsafeMutablePointer<UInt64>, level: Level, base: UInt64) throws(MMError) -> Page {
        if let existing = child(Entry(rawValue: ptlab_pte_read(slot))) { return existing }
        let table = try PageTables.alloc(level, base: base, mm: nil, node: .local, allocator: allocator, kernel: true)
        ptlab_pte_write(slot, Entry(pfn: table.pfn, flags: Entry.present | Entry.writable).rawValue)
        return table
    }

    /// vunmap and the freeing of emptied tables: clear the PTEs and free the
    /// data pages, then, as memory hot-unplug's free_pte_table and
    /// free_pmd_table do, unlink every PTE or PMD table left with no entry
    /// and hand it to pagetable_free — which, for a kernel table, is the
    /// deferred path that must first invalidate the IOMMU.
    /// Returns the number of tables freed.
    @discardableResult
    public func vunmap(address: UInt64, length: UInt64) throws(MMError) -> Int {
        try validate(address, length)
        return pageTableLock.withLock { _ in
            var freed = 0
            var at = address
            while at < address + length {
                let pud = child(Entry(rawValue: ptlab_pte_read(slot(pgd, .pgd, at))))!
                let pudSlot = slot(pud, .pud, at)
                let pmdEnd = min((at | (Level.pmd.tableSpan - 1)) + 1, address + length)
                if let pmd = child(Entry(rawValue: ptlab_pte_read(pudSlot))) {
                    freed += unmapPMDRange(pmd, at, pmdEnd)
                    if isEmpty(pmd) {
                        ptlab_pte_write(pudSlot, 0)
                        freer.pagetableFree(pmd)
                        freed += 1
                    }
                }
                at = pmdEnd
            }
            return freed
        }
    }

    private func unmapPMDRange(_ pmd: Page, _ start: UInt64, _ end: UInt64) -> Int {
        var freed = 0
        var at = start
        while at < end {
            let pmdSlot = slot(pmd, .pmd, at)
            let pteEnd = min((at | (Level.pte.tableSpan - 1)) + 1, end)
            if let pte = child(Entry(rawValue: ptlab_pte_read(pmdSlot))) {
                var page = at
                while page < pteEnd {
                    let old = Entry(rawValue: ptlab_pte_xchg(slot(pte, .pte, page), 0))
                    if let data = child(old) { PageTables.release(data, allocator: allocator) }
                    page += 4096
                }
                if isEmpty(pte) {
                    ptlab_pte_write(pmdSlot, 0)
                    freer.pagetableFree(pte)
                    freed += 1
                }
            }
            at = pteEnd
        }
        return freed
    }

    private func isEmpty(_ table: Page) -> Bool {
        let base = allocator.address(of: table).assumingMemoryBound(to: UInt64.self)
        return (0..<512).allSatisfy { ptlab_pte_read(base + $0) == 0 }
    }
}
