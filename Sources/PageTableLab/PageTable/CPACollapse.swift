internal import CSupport

/// change_page_attr on the direct map (arch/x86/mm/pat/set_memory.c): a
/// change inside a huge mapping splits it into a PTE table first
/// (split_large_page); with CPA_COLLAPSE (set_memory_rox) the change ends
/// with cpa_collapse_large_pages, which puts a 2 MiB range whose 512 PTEs
/// agree again back under one huge PMD and frees the PTE table — after a
/// flush_tlb_all, through pagetable_free.
extension InitMM {
    /// set_memory_ro (`readOnly`) or set_memory_rw on `pages` pages of the
    /// direct map at `address`; `collapse` asks for the large-page collapse
    /// afterwards (CPA_COLLAPSE). Returns the PTE tables collapsed away.
    @discardableResult
    public func changePageAttr(address: UInt64, pages: Int, readOnly: Bool, collapse: Bool) throws(MMError) -> Int {
        let length = UInt64(pages) << 12
        try validate(address, length, in: layout.pageOffset, "set_memory")
        return try pageTableLock.withLock { _ throws(MMError) -> Int in
            var at = address
            while at < address + length {
                guard let pmdTable = lookup(.pmd, for: at) else { throw .notMapped(address: at) }
                let pmd = slot(pmdTable, .pmd, at)
                let e = Entry(rawValue: ptlab_pte_read(pmd))
                guard e.isPresent else { throw .notMapped(address: at) }
                if e.has(Entry.huge) { try splitLargePage(pmd, e) }
                let pte = slot(child(Entry(rawValue: ptlab_pte_read(pmd)))!, .pte, at)
                let old = ptlab_pte_read(pte)
                ptlab_pte_write(pte, readOnly ? old & ~Entry.writable.rawValue : old | Entry.writable.rawValue)
                at += 4096
            }
            // cpa_flush
            flushTLBKernelRange(address, address + length)
            return collapse ? cpaCollapseLargePages(address, address + length) : 0
        }
    }

    /// __split_large_page: a PTE table holding the huge page's 512 pieces
    /// with its attributes, installed in place of the huge PMD, then a
    /// global flush before any PTE changes.
    private func splitLargePage(_ pmd: UnsafeMutablePointer<UInt64>, _ huge: Entry) throws(MMError) {
        let table = try PageTables.alloc(.pte, mm: nil, node: .local, allocator: allocator, kernel: true)
        let entries = allocator.address(of: table).assumingMemoryBound(to: UInt64.self)
        let flags = huge.rawValue & ~Entry.pfnMask & ~Entry.huge.rawValue
        for i in 0..<512 { ptlab_pte_write(entries + i, (huge.pfn + UInt64(i)) << 12 | flags) }
        ptlab_pte_write(pmd, Entry(pfn: table.pfn, flags: Self.tableFlags).rawValue)
        flushTLBAll()
    }

    /// cpa_collapse_large_pages over [start, end): collapse each PMD's PTE
    /// table that maps an aligned, contiguous 2 MiB with one set of flags
    /// (collapse_pmd_page), queue the tables on a list through their
    /// pt_list, flush_tlb_all once, then pagetable_free them.
    private func cpaCollapseLargePages(_ start: UInt64, _ end: UInt64) -> Int {
        var at = start & ~(Level.pmd.entrySpan - 1)
        var generation: UInt64?
        while at < end {
            if let pmdTable = lookup(.pmd, for: at), collapsePMDPage(slot(pmdTable, .pmd, at)) {
                generation = generation ?? tlb.currentGeneration
            }
            at += Level.pmd.entrySpan
        }
        guard let generation else { return 0 }
        flushTLBAll()
        var n = 0
        while collapsed.pointee.next != collapsed {
            let node = collapsed.pointee.next!
            cds_list_del(node)
            pagetableFree(Page(ptlab_ptdesc_of_list(node)), by: .cpaCollapse, detachedAt: generation)
            n += 1
        }
        return n
    }

    /// collapse_pmd_page: all 512 PTEs present, the first naturally aligned
    /// to 2 MiB, the rest its successors with the same flags.
    private func collapsePMDPage(_ pmd: UnsafeMutablePointer<UInt64>) -> Bool {
        let e = Entry(rawValue: ptlab_pte_read(pmd))
        guard !e.has(Entry.huge), let table = child(e) else { return false }
        let entries = allocator.address(of: table).assumingMemoryBound(to: UInt64.self)
        let first = Entry(rawValue: ptlab_pte_read(entries))
        let flags = first.rawValue & ~Entry.pfnMask
        guard first.isPresent, first.pfn & 511 == 0 else { return false }
        for i in 1..<512 {
            let entry = Entry(rawValue: ptlab_pte_read(entries + i))
            guard entry.isPresent, entry.rawValue & ~Entry.pfnMask == flags, entry.pfn == first.pfn + UInt64(i) else { return false }
        }
        ptlab_pte_write(pmd, first.with(.huge).rawValue)
        cds_list_add(ptlab_ptdesc_list(table.desc), collapsed)
        return true
    }
}
