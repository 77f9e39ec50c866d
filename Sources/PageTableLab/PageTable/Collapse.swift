import CSupport

extension MM {
    /// khugepaged's retract_page_tables for the 2 MiB range holding
    /// `address`: once the range's contents live in a huge page, the PTE
    /// table is unlinked (pmdp_collapse_flush under the PMD lock, PTE lock
    /// nested) and freed with pte_free_defer — with no mmap_lock protecting
    /// lockless walkers, only RCU.
    ///
    /// The model has no huge pages: the data pages are released through a
    /// gather (as if copied into the THP) and the PMD is left empty, so the
    /// next fault builds a new PTE table. Returns false when there was no
    /// PTE table to retract.
    @discardableResult
    public func collapse(at address: UInt64) throws(MMError) -> Bool {
        let base = address & ~(Self.pmdSize - 1)
        return try mmapLock.withReadLock { () throws(MMError) -> Bool in
            guard !hasExited else { throw .mmGone }
            guard vmaTree.withLock({ $0.covers(base, base + Self.pmdSize) }) else { throw .notMapped(address: base) }
            guard let (pmdTable, pmdSlot, pteTable) = findPTETable(base) else { return false }

            // The old PTEs go first (the data now lives in the huge page).
            let tlb = MMUGather(mm: self)
            unmapPageRange(tlb, base, base + Self.pmdSize, reclaimPT: false)
            tlb.finish()

            lockPTL(pmdTable)
            lockPTL(pteTable)
            let stillLinked = Entry(rawValue: ptlab_pte_read(pmdSlot)).pfn == UInt64(pteTable.pfn)
            if stillLinked {
                // pmdp_collapse_flush: clear the PMD and flush the range.
                ptlab_pte_write(pmdSlot, 0)
                self.tlb.flush()
                invalidateSecondaryTLBs(start: base, end: base + Self.pmdSize)
            }
            ptlab_ptl_unlock(pteTable.desc)
            ptlab_ptl_unlock(pmdTable.desc)
            guard stillLinked else { return false }
            accountTable(.pte, -1)
            switch profile.collapseFree {
            case .defer:
                do {
                    try pteFreeDefer(pteTable)
                } catch {
                    // Unregistered updater: wait, then free (never leak).
                    try? RCU.synchronize()
                    PageTables.dtorFree(pteTable, allocator: allocator)
                }
            case .immediate:
                PageTables.dtorFree(pteTable, allocator: allocator)
            }
            return true
        }
    }

    /// The PMD table, the PMD entry and the PTE table mapping `address`.
    func findPTETable(_ address: UInt64) -> (Page, UnsafeMutablePointer<UInt64>, Page)? {
        var table = pgd
        var level = Level.pgd
        while let child = childLevel(of: level) {
            let slot = entry(in: table, level: level, address: address)
            let e = Entry(rawValue: ptlab_pte_read(slot))
            guard e.isPresent, let d = allocator.descriptor(pfn: e.pfn) else { return nil }
            if child == .pte { return (table, slot, Page(d)) }
            table = Page(d)
            level = child
        }
        return nil
    }
}
