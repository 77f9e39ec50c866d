import CSupport

extension MM {
    /// handle_mm_fault for a write: allocate missing tables top-down and map
    /// a zeroed data page. Returns the data page's memory.
    ///
    /// As in __pte_alloc and friends, a new table is allocated before the
    /// lock is taken and freed again if another thread populated the entry
    /// first; PGD/P4D/PUD entries are populated under page_table_lock, a PMD
    /// entry under the PMD table's split lock, the PTE under the PTE lock.
    @discardableResult
    public func fault(at address: UInt64) throws(MMError) -> UnsafeMutableRawPointer {
        try mmapLock.withReadLock { () throws(MMError) -> UnsafeMutableRawPointer in
            guard vmaTree.withLock({ tree in
                guard tree.find(address) != nil else { return false }
                tree.prepareAnon(at: address)
                return true
            }) else { throw .notMapped(address: address) }
            return try faultLocked(at: address)
        }
    }

    /// The fault with mmap_lock already held.
    func faultLocked(at address: UInt64) throws(MMError) -> UnsafeMutableRawPointer {
        while true {
            var table = pgd
            var level = Level.pgd
            var pmdSlot: UnsafeMutablePointer<UInt64>?
            while let child = childLevel(of: level) {
                let slot = entry(in: table, level: level, address: address)
                var e = Entry(rawValue: ptlab_pte_read(slot))
                if !e.isPresent {
                    e = try populate(slot, parent: table, level: level, child: child, address: address)
                }
                if level == .pmd { pmdSlot = slot }
                table = Page(allocator.descriptor(pfn: e.pfn)!)
                level = child
            }
            let pte = entry(in: table, level: .pte, address: address)
            if let present = mapped(pte) { return present }
            let data: Page
            do {
                data = try allocator.alloc(node: tableNode, zero: true)
            } catch {
                throw .outOfMemory(error)
            }
            // pte_offset_map_lock: the PMD may have been cleared (collapse
            // runs without mmap_lock) between the walk and the lock.
            let d = table.desc
            while ptlab_ptl_trylock(d) == 0 {}
            let stillLinked = Entry(rawValue: ptlab_pte_read(pmdSlot!)).pfn == UInt64(table.pfn)
                && Entry(rawValue: ptlab_pte_read(pmdSlot!)).isPresent
            if stillLinked, mapped(pte) == nil {
                ptlab_pte_write(pte, Entry(pfn: data.pfn, flags: Entry.present | Entry.writable | Entry.user | Entry.dirty | Entry.accessed).rawValue)
                ptlab_ptl_unlock(d)
                return allocator.address(of: data)
            }
            let present = stillLinked ? mapped(pte) : nil
            ptlab_ptl_unlock(d)
            PageTables.release(data, allocator: allocator)
            if let present { return present }
        }
    }

    private func mapped(_ pte: UnsafeMutablePointer<UInt64>) -> UnsafeMutableRawPointer? {
        let e = Entry(rawValue: ptlab_pte_read(pte))
        return e.isPresent ? allocator.address(pfn: e.pfn) : nil
    }

    /// __pte_alloc / __pmd_alloc / __pud_alloc (/ __p4d_alloc).
    private func populate(_ slot: UnsafeMutablePointer<UInt64>, parent: Page, level: Level, child: Level,
                          address: UInt64) throws(MMError) -> Entry {
        let base = address & ~(tableSpan(child) - 1)
        let fresh = try PageTables.alloc(child, base: base, mm: self, node: tableNode, allocator: allocator)
        let installed = Entry(pfn: fresh.pfn, flags: Entry.present | Entry.writable | Entry.user | Entry.accessed)
        let won: Bool
        if level == .pmd {
            let d = parent.desc
            while ptlab_ptl_trylock(d) == 0 {}
            won = install(slot, installed)
            ptlab_ptl_unlock(d)
        } else {
            won = pageTableLock.withLock { _ in install(slot, installed) }
        }
        if won {
            accountTable(child, 1)
            return installed
        }
        PageTables.dtorFree(fresh, allocator: allocator)
        return Entry(rawValue: ptlab_pte_read(slot))
    }

    private func install(_ slot: UnsafeMutablePointer<UInt64>, _ e: Entry) -> Bool {
        guard !Entry(rawValue: ptlab_pte_read(slot)).isPresent else { return false }
        ptlab_pte_write(slot, e.rawValue)
        return true
    }
}
