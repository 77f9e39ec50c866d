internal import CSupport

/// Transparent huge pages at the PMD level (mm/huge_memory.c).
///
/// An anonymous huge PMD maps a 2 MiB folio directly, and a PTE table is
/// *deposited* with it (pgtable_trans_huge_deposit): allocated at fault
/// time, counted in VmPTE, never linked, so that splitting the PMD later
/// (a partial zap, mprotect or mremap) can never fail for want of memory.
/// The deposit is withdrawn to split, and freed when the whole huge PMD is
/// zapped. A shmem huge PMD maps a page-cache folio and has no deposit on
/// x86: splitting it just clears the PMD, and later faults build a PTE
/// table (or map the folio by PMD again).
extension MM {
    /// pgtable_trans_huge_deposit: keep `table` for a huge PMD of `pmdTable`
    /// (its PMD lock held).
    func deposit(_ table: Page, under pmdTable: Page) {
        deposits.withLock { $0[pmdTable.pfn, default: []].append(table) }
    }

    /// pgtable_trans_huge_withdraw: take back one deposited table.
    func withdraw(from pmdTable: Page) -> Page {
        deposits.withLock { d -> Page in
            guard let table = d[pmdTable.pfn]?.popLast() else {
                preconditionFailure("a huge PMD of PMD table \(pmdTable.pfn) has no deposited PTE table")
            }
            if d[pmdTable.pfn]?.isEmpty == true { d[pmdTable.pfn] = nil }
            return table
        }
    }

    /// Whether a huge PMD maps `address` now.
    public func isHugePMD(_ address: UInt64) -> Bool {
        guard let (_, slot) = findPMD(address) else { return false }
        return Entry(rawValue: ptlab_pte_read(slot)).isHugeLeaf
    }

    /// Huge PMDs mapping memory in `range`, found by walking only the
    /// tables that exist.
    public func hugePMDCount(in range: Range<UInt64>) -> Int {
        countHuge(pgd, .pgd, range.lowerBound, range.upperBound)
    }

    private func countHuge(_ table: Page, _ level: Level, _ start: UInt64, _ end: UInt64) -> Int {
        var count = 0
        var at = start
        while at < end {
            let next = addressEnd(at, end, span: 1 << UInt64(shift(level)))
            let e = Entry(rawValue: ptlab_pte_read(entry(in: table, level: level, address: at)))
            if level == .pmd {
                if e.isHugeLeaf { count += 1 }
            } else if e.isPresent, let d = allocator.descriptor(pfn: e.pfn) {
                count += countHuge(Page(d), childLevel(of: level)!, at, next)
            }
            at = next
        }
        return count
    }

    /// The entry a huge PMD mapping `folio` gets.
    static func hugeEntry(_ folio: Page, writable: Bool) -> Entry {
        Entry(pfn: folio.pfn, flags: Entry.Flags([.present, .user, .huge, .accessed, .dirty])
              .union(writable ? .writable : []))
    }

    /// do_huge_pmd_anonymous_page: map a zeroed 2 MiB folio at the empty
    /// PMD `slot` of `pmdTable`, with a deposited PTE table. nil when no
    /// huge page can be had (thp_fault_fallback: the caller maps small
    /// pages) or another thread filled the PMD first (the caller looks again).
    func faultHugeAnonymous(pmdTable: Page, slot: UnsafeMutablePointer<UInt64>, address: UInt64, afterReap: Bool)
        throws(MMError) -> UnsafeMutableRawPointer? {
        guard let folio = try? allocator.alloc(order: 9, node: tableNode, zero: true) else {
            thpEvents.faultFallback.add(1, ordering: .relaxed)
            return nil
        }
        let table: Page
        do {
            table = try PageTables.alloc(.pte, mm: self, node: tableNode,
                                         allocator: allocator)
        } catch {
            PageTables.release(folio, allocator: allocator)
            throw error
        }
        raceWindow(.faultPageAllocated, address)
        lockPTL(pmdTable)
        let won = ptlab_pte_read(slot) == 0
        // __do_huge_pmd_anonymous_page's check_stable_address_space, under
        // the PMD lock.
        let reaped = won && isUnstable && !profile.faultsIgnoreUnstable
        if won && !reaped {
            deposit(table, under: pmdTable)
            setLeaf(slot, Self.hugeEntry(folio, writable: true), new: true)
            accountTable(.pte, 1)
        }
        ptlab_ptl_unlock(pmdTable.desc)
        guard won && !reaped else {
            PageTables.dtorFree(table, allocator: allocator)
            PageTables.release(folio, allocator: allocator)
            if reaped { throw .unstableAddressSpace(address: address) }
            return nil
        }
        thpEvents.faultAlloc.add(1, ordering: .relaxed)
        if afterReap { refaultsAfterReap.add(1, ordering: .relaxed) }
        return allocator.address(of: folio) + Int(address & (Self.pmdSize - 1))
    }

    /// zap_huge_pmd: the whole huge PMD at `slot` goes. Anonymous: its
    /// folio is freed after the gather's flush, and its deposit at once
    /// (pte_free): a fault's deposit was never linked, and the one an
    /// anonymous collapse kept was unlinked under the mmap write lock with
    /// GUP-fast waited out (tlb_remove_table_sync_one), so no walker of
    /// this model can be in it. Shmem: the page cache keeps the folio, and
    /// there is no deposit.
    ///
    /// The caller saw the huge PMD without the PMD lock, and under the mmap
    /// read lock or its VMA's another updater may have split it (a partial
    /// MADV_DONTNEED) or zapped it and faulted in a PTE table since. So, as
    /// __pmd_trans_huge_lock does, the entry is looked at again under the
    /// lock: false when it is no longer a huge PMD, and the caller goes on
    /// to zap_pte_range over the table now there (clearing the slot would
    /// unlink a live PTE table and leak it, its pages and its VmPTE share).
    func zapHugePMD(_ tlb: MMUGather, pmdTable: Page, slot: UnsafeMutablePointer<UInt64>, address: UInt64, vma: VMA) -> Bool {
        raceWindow(.zapHugePMDUnlocked, address)
        lockPTL(pmdTable)
        guard Entry(rawValue: ptlab_pte_read(slot)).isHugeLeaf else {
            ptlab_ptl_unlock(pmdTable.desc)
            return false
        }
        let old = Entry(rawValue: ptlab_pte_xchg(slot, 0))
        removeRmap(old)
        let deposited = vma.isAnonymous ? withdraw(from: pmdTable) : nil
        ptlab_ptl_unlock(pmdTable.desc)
        tlb.clearedPMD(at: address)
        if let deposited {
            PageTables.dtorFree(deposited, allocator: allocator)
            accountTable(.pte, -1)
        }
        if vma.isAnonymous, let d = allocator.descriptor(pfn: old.pfn), tlb.removePage(Page(d)) {
            tlb.flushMMU()
        }
        return true
    }

    /// __split_huge_pmd: the huge PMD at `slot` becomes a PTE table (the
    /// deposit, filled with 512 entries for the folio's pages, which become
    /// pages of their own), or for shmem simply goes. VmPTE does not move.
    ///
    /// Anonymous: pmdp_invalidate leaves the entry trans-huge while the
    /// table is filled, so that an updater under the mmap read lock or the
    /// VMA's beside it (a DONTNEED of the whole PMD, a fault) takes the PMD
    /// lock and waits, where an empty PMD would send a zap past the 2 MiB
    /// and a fault to map a huge folio of its own. Shmem: pmdp_huge_clear_flush
    /// empties it, and faults map the page cache's pages again.
    func splitHugePMD(pmdTable: Page, slot: UnsafeMutablePointer<UInt64>, address: UInt64, vma: VMA) {
        lockPTL(pmdTable)
        defer { ptlab_ptl_unlock(pmdTable.desc) }
        let old = Entry(rawValue: ptlab_pte_read(slot))
        guard old.isHugeLeaf else { return }
        thpEvents.splitPMD.add(1, ordering: .relaxed)
        // No CPU may go on using the huge translation.
        ptlab_pte_write(slot, vma.isAnonymous ? old.without([.present, .protNone]).rawValue : 0)
        removeRmap(old)
        tlb.flush()
        let base = address & ~(Self.pmdSize - 1)
        invalidateSecondaryTLBs(start: base, end: base + Self.pmdSize)
        guard vma.isAnonymous else { return }
        raceWindow(.splitHugePMDInvalidated, base)
        let table = withdraw(from: pmdTable)
        if let d = allocator.descriptor(pfn: old.pfn) { allocator.split(Page(d)) }
        let entries = allocator.address(of: table).assumingMemoryBound(to: UInt64.self)
        let keep = old.flags.intersection([.writable, .protNone, .present])
        for i in 0..<512 {
            let flags = keep.union([.user, .accessed, .dirty])
            setLeaf(entries + i, Entry(pfn: UInt32(old.pfn) + UInt32(i), flags: flags))
        }
        ptlab_pte_write(slot, Entry(pfn: table.pfn, flags: .userTable).rawValue)
    }
}
