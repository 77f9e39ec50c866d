internal import CSupport

/// vmalloc space: vmap and vunmap with 4 KiB pages, and ioremap with huge
/// entries, where the kernel frees page tables through pmd_free_pte_page
/// and pud_free_pmd_page (arch/x86/mm/pgtable.c, called from mm/vmalloc.c's
/// vmap_try_huge_pmd and vmap_try_huge_pud).
extension InitMM {
    /// Where ioremap's device memory sits: far above the lab's RAM, so no
    /// huge leaf ever names a page the allocator owns.
    static let deviceMemoryPFN: UInt64 = 1 << 33

    /// vmap: map `length` bytes of fresh pages at `address` with 4 KiB PTEs,
    /// building PMD and PTE tables as needed. Pages already mapped stay.
    public func vmap(address: UInt64, length: UInt64) throws(MMError) {
        try validate(address, length, in: layout.vmallocStart, "vmap")
        try pageTableLock.withLock { _ throws(MMError) in
            var at = address
            while at < address + length {
                let entry = slot(try table(.pte, for: at), .pte, at)
                if !Entry(rawValue: ptlab_pte_read(entry)).isPresent {
                    let data: Page
                    do throws(PageAllocError) {
                        data = try allocator.alloc(node: .local, zero: true)
                    } catch {
                        throw .outOfMemory(error)
                    }
                    ptlab_pte_write(entry, Entry(pfn: data.pfn, flags: Self.leafFlags).rawValue)
                }
                at += 4096
            }
        }
    }

    /// vunmap (vunmap_range): clear the range's PTEs, and the huge PMD and
    /// PUD leaves an ioremap made (pmd_clear_huge, pud_clear_huge), give
    /// the pages back, then flush_tlb_kernel_range. No page table is freed:
    /// Linux leaves emptied tables linked until a huge mapping replaces
    /// them (ioremapHuge).
    public func vunmap(address: UInt64, length: UInt64) throws(MMError) {
        try validate(address, length, in: layout.vmallocStart, "vunmap")
        pageTableLock.withLock { _ in
            clearLeaves(pgd, .pgd, from: address, to: address + length)
            flushTLBKernelRange(address, address + length)
        }
    }

    private func clearLeaves(_ table: Page, _ level: Level, from start: UInt64, to end: UInt64) {
        forEachEntry(table, level, from: start, to: end) { entry, e, at, next in
            if e.has(Entry.huge) || level == .pte {
                if e.isPresent {
                    ptlab_pte_write(entry, 0)
                    if level == .pte, let data = child(e) { PageTables.release(data, allocator: allocator) }
                }
            } else if let below = childLevel(of: level), let t = child(e) {
                clearLeaves(t, below, from: at, to: next)
            }
        }
    }

    /// ioremap of device memory at `address` with one huge entry of `level`
    /// (.pmd: 2 MiB, .pud: 1 GiB), as vmap_try_huge_pmd / vmap_try_huge_pud
    /// do: if a table is still linked where the leaf goes — left there by an
    /// earlier vunmap — pmd_free_pte_page or pud_free_pmd_page frees it
    /// first. False when pud_free_pmd_page could not get its scratch page:
    /// no huge mapping then (the kernel falls back to smaller pages).
    ///
    /// The vmalloc allocator hands out only ranges nothing maps; a range
    /// with a live mapping left in it is refused here (`mappingExists`).
    @discardableResult
    public func ioremapHuge(address: UInt64, level: Level) throws(MMError) -> Bool {
        guard level == .pmd || level == .pud else { throw .misaligned(what: "huge mapping level", value: UInt64(level.rawValue)) }
        guard address & (level.entrySpan - 1) == 0 else { throw .misaligned(what: "huge \(level.name) address", value: address) }
        try validate(address, level.entrySpan, in: layout.vmallocStart, "ioremap")
        return try pageTableLock.withLock { _ throws(MMError) -> Bool in
            let entry = slot(try table(level, for: address), level, address)
            let e = Entry(rawValue: ptlab_pte_read(entry))
            if e.has(Entry.huge) { throw .mappingExists(address: address, length: level.entrySpan) }
            if let old = child(e) {
                try requireUnmapped(old, below: level, address)
                if level == .pmd {
                    pmdFreePTEPage(entry, old, address)
                } else if !pudFreePMDPage(entry, old, address) {
                    return false
                }
            }
            ptlab_pte_write(entry, Entry(rawValue: Self.deviceMemoryPFN << 12 | Self.leafFlags.union(.huge).rawValue).rawValue)
            return true
        }
    }

    /// The table under a `level` entry maps nothing (only emptied tables).
    private func requireUnmapped(_ table: Page, below level: Level, _ address: UInt64) throws(MMError) {
        let base = allocator.address(of: table).assumingMemoryBound(to: UInt64.self)
        for i in 0..<512 {
            let e = Entry(rawValue: ptlab_pte_read(base + i))
            guard e.isPresent else { continue }
            if level == .pmd || e.has(Entry.huge) || !isEmpty(child(e)!) {
                throw .mappingExists(address: address, length: level.entrySpan)
            }
        }
    }

    /// pmd_free_pte_page: clear the PMD, INVLPG the range (which drops the
    /// CPUs' cached PDE), then pagetable_free the PTE table.
    private func pmdFreePTEPage(_ pmd: UnsafeMutablePointer<UInt64>, _ pte: Page, _ address: UInt64) {
        ptlab_pte_write(pmd, 0)
        let generation = tlb.currentGeneration
        flushTLBKernelRange(address, address + 4096)
        pagetableFree(pte, by: .pmdFreePTEPage, detachedAt: generation)
    }

    /// pud_free_pmd_page: save the PMD table's entries in a scratch page
    /// (__get_free_page: it may fail, and then nothing changes), clear them
    /// and the PUD, INVLPG, then pagetable_free every PTE table and the PMD
    /// table.
    private func pudFreePMDPage(_ pud: UnsafeMutablePointer<UInt64>, _ pmd: Page, _ address: UInt64) -> Bool {
        guard let scratch = try? allocator.alloc(node: .local, zero: false) else { return false }
        let saved = allocator.address(of: scratch).assumingMemoryBound(to: UInt64.self)
        let entries = allocator.address(of: pmd).assumingMemoryBound(to: UInt64.self)
        for i in 0..<512 {
            saved[i] = ptlab_pte_read(entries + i)
            if saved[i] != 0 { ptlab_pte_write(entries + i, 0) }
        }
        ptlab_pte_write(pud, 0)
        let generation = tlb.currentGeneration
        flushTLBKernelRange(address, address + 4096)
        for i in 0..<512 {
            if let pte = child(Entry(rawValue: saved[i])) { pagetableFree(pte, by: .pudFreePMDPage, detachedAt: generation) }
        }
        PageTables.release(scratch, allocator: allocator)
        pagetableFree(pmd, by: .pudFreePMDPage, detachedAt: generation)
        return true
    }
}
