internal import CSupport

/// A 2 MiB block of hot-added memory: its pages (the new memory, one
/// order-9 allocation) and where the direct map shows them.
public struct MemoryBlock: Hashable, Sendable {
    public let pages: Page
    /// PAGE_OFFSET + the block's physical address.
    public let address: UInt64
    public static let size: UInt64 = 2 << 20
}

/// Memory hotplug's side of the direct map (arch/x86/mm/init_64.c): the
/// mapping a hot-add makes, and remove_pagetable, whose free_pte_table and
/// free_pmd_table hand emptied tables to free_pagetable.
extension InitMM {
    /// Hot-add a block: the lab takes 2 MiB of memory and maps it in the
    /// direct map with one huge PMD, as kernel_physical_mapping_init does
    /// for an aligned 2 MiB range.
    public func memoryHotAdd() throws(MMError) -> MemoryBlock {
        let pages: Page
        do throws(PageAllocError) {
            pages = try allocator.alloc(order: 9, node: .local, zero: true)
        } catch {
            throw .outOfMemory(error)
        }
        let block = MemoryBlock(pages: pages, address: layout.pageOffset + UInt64(pages.pfn) << 12)
        do {
            try validate(block.address, MemoryBlock.size, in: layout.pageOffset, "memory hot-add")
            try pageTableLock.withLock { _ throws(MMError) in
                let entry = slot(try table(.pmd, for: block.address), .pmd, block.address)
                guard Entry(rawValue: ptlab_pte_read(entry)).isNone else {
                    throw .mappingExists(address: block.address, length: MemoryBlock.size)
                }
                ptlab_pte_write(entry, Entry(pfn: pages.pfn, flags: Self.leafFlags.union(.huge)).rawValue)
            }
        } catch {
            PageTables.release(pages, allocator: allocator)
            throw error
        }
        return block
    }

    /// Hot-remove a block: arch_remove_memory's remove_pagetable over its
    /// direct-map range, then the memory goes. remove_pagetable clears the
    /// leaves; each PTE table it emptied goes to free_pagetable after the
    /// flush_tlb_all that ends remove_pte_table, and only then is its PMD
    /// entry cleared; an emptied PMD table (and, with 5-level paging, an
    /// emptied PUD table) follows, before the flush_tlb_all that ends
    /// remove_pagetable. The kernel's refusal to unmap the first GiB of
    /// physical memory (mapped at boot) is left out: the lab's RAM starts at 0.
    ///
    /// Nothing may touch a block while it goes: memory offlining has moved
    /// every user away. (Queueing a table before its PMD entry is cleared
    /// is safe only because of that.)
    public func memoryHotRemove(_ block: MemoryBlock) throws(MMError) {
        try validate(block.address, MemoryBlock.size, in: layout.pageOffset, "memory hot-remove")
        pageTableLock.withLock { _ in
            removeTable(pgd, .pgd, from: block.address, to: block.address + MemoryBlock.size)
            flushTLBAll()
        }
        PageTables.release(block.pages, allocator: allocator)
    }

    /// remove_p4d_table, remove_pud_table, remove_pmd_table and
    /// remove_pte_table in one: clear what [start, end) maps in `table`,
    /// recurse into tables, and free each table below that it emptied.
    private func removeTable(_ table: Page, _ level: Level, from start: UInt64, to end: UInt64) {
        forEachEntry(table, level, from: start, to: end) { entry, e, at, next in
            if level == .pte {
                if e.isPresent { ptlab_pte_write(entry, 0) }
            } else if e.has(Entry.huge) {
                if at & (entrySpan(level) - 1) == 0, next & (entrySpan(level) - 1) == 0 { ptlab_pte_write(entry, 0) }
            } else if let below = childLevel(of: level), let t = child(e) {
                removeTable(t, below, from: at, to: next)
                if below == .pte {
                    // remove_pte_table ends with flush_tlb_all.
                    let cleared = tlb.currentGeneration
                    flushTLBAll()
                    freeEmptied(t, linkedFrom: entry, detachedAt: cleared)
                } else if below == .pmd || (below == .pud && layout.fiveLevel) {
                    // free_pmd_table; free_pud_table with 5-level paging only
                    // (a 4-level PUD table is preallocated and stays).
                    freeEmptied(t, linkedFrom: entry, detachedAt: tlb.currentGeneration)
                }
            }
        }
    }

    /// free_pte_table / free_pmd_table / free_pud_table: if the table maps
    /// nothing any more, free_pagetable it, then clear the entry above.
    private func freeEmptied(_ table: Page, linkedFrom entry: UnsafeMutablePointer<UInt64>, detachedAt generation: UInt64) {
        guard isEmpty(table) else { return }
        pagetableFree(table, by: .freePagetable, detachedAt: generation)
        ptlab_pte_write(entry, 0)
    }
}
