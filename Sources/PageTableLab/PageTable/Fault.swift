internal import CSupport

extension MM {
    /// handle_mm_fault for a write: allocate missing tables top-down and map
    /// the page. Returns the byte's memory, which stays the mapped page only
    /// while no other thread unmaps it: a concurrent store goes through
    /// `touch`, which writes under the entry's lock.
    ///
    /// As in __pte_alloc and friends, a new table is allocated before the
    /// lock is taken and freed again if another thread populated the entry
    /// first; PGD/P4D/PUD entries are populated under page_table_lock, a PMD
    /// entry under the PMD table's split lock, the PTE under the PTE lock.
    /// Anonymous memory in a THP-eligible VMA gets a huge PMD
    /// (do_huge_pmd_anonymous_page); shmem memory maps its page cache's
    /// folio, by PMD where the folio is huge and the VMA allows it. Private
    /// memory the OOM reaper has reaped faults no more (MMF_UNSTABLE:
    /// `unstableAddressSpace`, SIGBUS).
    @discardableResult
    public func fault(at address: UInt64) throws(MMError) -> UnsafeMutableRawPointer {
        try withFaultLock(address) { vma throws(MMError) in try faultLocked(at: address, vma: vma) }
    }

    /// The VMA a write fault at `address` goes to (anon_vma prepared), with
    /// mmap_lock held.
    func faultableVMA(at address: UInt64) throws(MMError) -> VMA {
        guard let vma = vmaTree.withLock({ $0.prepareAnonAndFind(address) }) else { throw .notMapped(address: address) }
        guard vma.flags.contains(.write) else { throw .accessDenied(address: address) }
        return vma
    }

    /// The fault with mmap_lock already held. With `store`, a fault that
    /// maps a small page also makes the user's store there, under the PTE
    /// lock it installs the entry with, and says so in `stored`.
    func faultLocked(at address: UInt64, vma: VMA, store: (value: UInt8, offset: Int)? = nil,
                     stored: UnsafeMutablePointer<Bool>? = nil) throws(MMError) -> UnsafeMutableRawPointer {
        let afterReap = reapFinished.load(ordering: .acquiring)
        while true {
            let (pmdTable, pmdSlot) = try walkToPMD(address)
            let pmd = Entry(rawValue: ptlab_pte_read(pmdSlot))
            if pmd.isHugeLeaf {
                return allocator.address(pfn: pmd.pfn)! + Int(address & (Self.pmdSize - 1))
            }
            if pmd.isTransHuge {
                // A split is under way: the kernel's fault takes the PMD
                // lock (huge_pmd_set_accessed), finds the PMD changed, and
                // the access faults again.
                lockPTL(pmdTable)
                ptlab_ptl_unlock(pmdTable.desc)
                continue
            }
            if !pmd.isPresent {
                if let mapped = try faultHuge(pmdTable: pmdTable, slot: pmdSlot, address: address, vma: vma,
                                              afterReap: afterReap) {
                    return mapped
                }
                if Entry(rawValue: ptlab_pte_read(pmdSlot)).isHugeLeaf { continue }
                _ = try populate(pmdSlot, parent: pmdTable, level: .pmd, child: .pte)
            }
            if let mapped = try mapPTE(pmdSlot: pmdSlot, address: address, vma: vma, store: store, stored: stored,
                                       afterReap: afterReap) {
                return mapped
            }
        }
    }

    /// Walk down to the PMD table mapping `address`, allocating missing
    /// tables on the way; returns the table and the PMD entry's slot.
    func walkToPMD(_ address: UInt64) throws(MMError) -> (Page, UnsafeMutablePointer<UInt64>) {
        var table = pgd
        var level = Level.pgd
        while level != .pmd {
            let child = childLevel(of: level)!
            let slot = entry(in: table, level: level, address: address)
            var e = Entry(rawValue: ptlab_pte_read(slot))
            if !e.isPresent {
                e = try populate(slot, parent: table, level: level, child: child)
            }
            table = Page(allocator.descriptor(pfn: e.pfn)!)
            level = child
        }
        return (table, entry(in: table, level: .pmd, address: address))
    }

    /// A huge PMD for a fault at an empty PMD, if the VMA takes one: nil
    /// when small pages it is (or another thread filled the PMD).
    private func faultHuge(pmdTable: Page, slot: UnsafeMutablePointer<UInt64>, address: UInt64, vma: VMA,
                           afterReap: Bool) throws(MMError) -> UnsafeMutableRawPointer? {
        guard vma.suitsHugePMD(at: address) else { return nil }
        guard let file = vma.file else {
            guard profile.thp.anonymousFault(vma) else { return nil }
            return try faultHugeAnonymous(pmdTable: pmdTable, slot: slot, address: address, afterReap: afterReap)
        }
        let index = vma.pgoff(at: address)
        let folio = try file.lockFolio(for: index, huge: profile.thp.shmemFault(vma, index: index, fileSize: file.size),
                                       contended: { raceWindow(.faultFolioLocked, address) },
                                       missed: { raceWindow(.faultCacheMissed, address) })
        defer { file.unlock(folio) }
        // do_set_pmd: a huge folio is mapped whole unless the VMA refuses THP.
        guard folio.huge, !vma.flags.contains(.noHugepage) else { return nil }
        lockPTL(pmdTable)
        let won = ptlab_pte_read(slot) == 0
        if won { setLeaf(slot, Self.hugeEntry(folio.page, writable: true)) }
        ptlab_ptl_unlock(pmdTable.desc)
        guard won else { return nil }
        return allocator.address(of: folio.page) + Int(address & (Self.pmdSize - 1))
    }

    /// The page mapped at `address` now, looked up locklessly under RCU
    /// (what the MMU finds: a write to a present page takes no fault).
    private func presentPage(pmdSlot: UnsafeMutablePointer<UInt64>, address: UInt64) -> UnsafeMutableRawPointer? {
        RCU.read {
            let pmd = Entry(rawValue: ptlab_pte_read(pmdSlot))
            guard pmd.isPresent, !pmd.isHugeLeaf, let d = allocator.descriptor(pfn: pmd.pfn) else { return nil }
            return mapped(entry(in: Page(d), level: .pte, address: address))
        }
    }

    /// do_anonymous_page / do_shared_fault: the page for `address` is had
    /// first, then the PTE table is reached with pte_offset_map_lock and
    /// the entry filled if still none. nil: the PMD changed, look again.
    /// An anonymous fault the OOM reaper has got to first maps nothing, nor
    /// does one on a guard marker.
    private func mapPTE(pmdSlot: UnsafeMutablePointer<UInt64>, address: UInt64, vma: VMA,
                        store: (value: UInt8, offset: Int)?, stored: UnsafeMutablePointer<Bool>?, afterReap: Bool)
        throws(MMError) -> UnsafeMutableRawPointer? {
        if let present = presentPage(pmdSlot: pmdSlot, address: address) { return present }
        let data: Page
        var owned = false
        // shmem_fault hands the folio back locked, and finish_fault maps it
        // before it is unlocked: a collapse that has locked it has no fault
        // between its lookup and its PTE to miss.
        var locked: (ShmemFile, ShmemFile.Folio)?
        defer { if let (file, folio) = locked { file.unlock(folio) } }
        if let file = vma.file {
            let index = vma.pgoff(at: address)
            let folio = try file.lockFolio(for: index, huge: false, contended: { raceWindow(.faultFolioLocked, address) },
                                           missed: { raceWindow(.faultCacheMissed, address) })
            locked = (file, folio)
            data = folio.huge ? Page(folio.page.desc + Int(index & 511)) : folio.page
        } else {
            // Cleared for the window it opens, not for its contents
            // (MMProfile.clearsFaultedPages).
            do {
                data = try allocator.alloc(node: tableNode, zero: profile.clearsFaultedPages)
            } catch {
                throw .outOfMemory(error)
            }
            owned = true
        }
        raceWindow(.faultPageAllocated, address)
        let outcome = withPTEOffsetMapLock(pmdSlot) { table -> PTEInstall in
            let pte = entry(in: table, level: .pte, address: address)
            let outcome: PTEInstall
            if let present = mapped(pte) {
                outcome = .present(present)
            } else if Entry(rawValue: ptlab_pte_read(pte)).isGuardMarker {
                // handle_pte_marker: "Hitting a guard page is always a fatal
                // condition."
                return .guardMarker
            } else if owned && isUnstable && !profile.faultsIgnoreUnstable {
                // do_anonymous_page's check_stable_address_space, under the
                // PTE lock: a reaper that has zapped this entry is seen.
                return .unstable
            } else {
                setLeaf(pte, Entry(pfn: data.pfn, flags: .userPage), new: owned)
                noteWrite(to: table, under: pmdSlot)
                outcome = .installed(allocator.address(of: data))
            }
            if let store, let stored {
                userStore(store.value, pfn: Entry(rawValue: ptlab_pte_read(pte)).pfn, offset: store.offset)
                stored.pointee = true
            }
            return outcome
        }
        // The page this fault allocated goes back unless it was mapped.
        if case .installed? = outcome {} else if owned { PageTables.release(data, allocator: allocator) }
        switch outcome {
        case .installed(let page)?:
            if owned && afterReap { refaultsAfterReap.add(1, ordering: .relaxed) }
            return page
        case .present(let page)?: return page
        case .unstable?: throw .unstableAddressSpace(address: address)
        case .guardMarker?: throw .guardRegion(address: address)
        case nil: return nil
        }
    }

    /// What a fault found under the PTE lock.
    private enum PTEInstall {
        /// Another fault mapped the address first: its page.
        case present(UnsafeMutableRawPointer)
        /// This fault's page, now mapped.
        case installed(UnsafeMutableRawPointer)
        /// The OOM reaper has been (MMF_UNSTABLE): nothing mapped.
        case unstable
        /// A guard marker holds the entry: SIGSEGV.
        case guardMarker
    }

    private func mapped(_ pte: UnsafeMutablePointer<UInt64>) -> UnsafeMutableRawPointer? {
        let e = Entry(rawValue: ptlab_pte_read(pte))
        return e.isPresent ? allocator.address(pfn: e.pfn) : nil
    }

    /// __pte_alloc / __pmd_alloc / __pud_alloc (/ __p4d_alloc).
    func populate(_ slot: UnsafeMutablePointer<UInt64>, parent: Page, level: Level, child: Level) throws(MMError) -> Entry {
        let fresh = try PageTables.alloc(child, mm: self, node: tableNode, allocator: allocator)
        let installed = Entry(pfn: fresh.pfn, flags: .userTable)
        let won: Bool
        if level == .pmd {
            lockPTL(parent)
            won = install(slot, installed, child)
            ptlab_ptl_unlock(parent.desc)
        } else {
            won = pageTableLock.withLock { _ in install(slot, installed, child) }
        }
        if won { return installed }
        PageTables.dtorFree(fresh, allocator: allocator)
        return Entry(rawValue: ptlab_pte_read(slot))
    }

    /// pmd_install and friends: the table is counted under the lock it is
    /// linked under (mm_inc_nr_ptes), so that a PT_RECLAIM taking it away
    /// the moment the lock goes, and uncounting it, never finds VmPTE
    /// short of it.
    private func install(_ slot: UnsafeMutablePointer<UInt64>, _ e: Entry, _ child: Level) -> Bool {
        guard ptlab_pte_read(slot) == 0 else { return false }
        accountTable(child, 1)
        ptlab_pte_write(slot, e.rawValue)
        return true
    }
}
