internal import CSupport

extension MM {
    /// A user program's store of `value` at `address`: through the page
    /// tables, faulting in what is missing, and again if another thread
    /// unmapped the page between the fault and the store (the CPU would
    /// retake the fault). The store is made under the lock the unmapping
    /// side takes to clear the entry — the PTE table's split lock, or the
    /// PMD table's for a huge PMD — which stands in for what protects a CPU's
    /// store in the kernel: the data page is freed only after the zap's TLB
    /// flush, and that flush waits for a store in flight.
    ///
    /// One hold of the fault's lock (its VMA's, or the mmap read lock)
    /// covers the fault and the store, as a CPU's retaken fault and its
    /// store run under the one the fault took.
    func storeByte(_ value: UInt8, at address: UInt64) throws(MMError) {
        try withFaultLock(address) { vma throws(MMError) in
            // Fault first: a store is most often to memory not yet mapped,
            // and the fault that maps a small page stores under its lock.
            var stored = false
            repeat {
                _ = try faultLocked(at: address & ~4095, vma: vma, store: (value, Int(address & 4095)), stored: &stored)
            } while !stored && !storeIfMapped(value, at: address)
        }
    }

    /// The store, if a page is mapped at `address` now.
    private func storeIfMapped(_ value: UInt8, at address: UInt64) -> Bool {
        guard let (pmdTable, pmdSlot) = findPMD(address) else { return false }
        let pmd = Entry(rawValue: ptlab_pte_read(pmdSlot))
        if pmd.isHugeLeaf {
            lockPTL(pmdTable)
            defer { ptlab_ptl_unlock(pmdTable.desc) }
            let now = Entry(rawValue: ptlab_pte_read(pmdSlot))
            guard now.isHugeLeaf else { return false }
            userStore(value, pfn: now.pfn, offset: Int(address & (Self.pmdSize - 1)))
            return true
        }
        guard pmd.isPresent else { return false }
        return withPTEOffsetMapLock(pmdSlot) { table -> Bool in
            let pte = Entry(rawValue: ptlab_pte_read(entry(in: table, level: .pte, address: address)))
            guard pte.isPresent else { return false }
            userStore(value, pfn: pte.pfn, offset: Int(address & 4095))
            return true
        } ?? false
    }

    /// The store itself, under the lock of the entry that maps `pfn`
    /// (`offset` reaches past the first page into a huge PMD's others).
    /// A page the allocator has back, or has handed out again as a page
    /// table, is mapped where it must not be: a use-after-free by the
    /// model, such as a collapse freeing a folio a PMD still maps. No
    /// walker sees a data page, so the store is checked: it is counted
    /// (Integrity) and not made, so the page's next user is not written.
    /// The free itself is refused first when the entries that map the page
    /// were counted (Mapcount.swift); this catches an entry that was not
    /// (one written straight through an EntrySlot, say).
    func userStore(_ value: UInt8, pfn: UInt64, offset: Int) {
        let target = pfn + UInt64(offset >> 12)
        guard let d = allocator.descriptor(pfn: target), ptlab_page_state(d) != PTLAB_PAGE_FREE.rawValue,
              ptlab_page_flags(d) & PTLAB_PG_TABLE == 0, let page = allocator.address(pfn: target) else {
            Integrity.storeToFreedPageCount.add(1, ordering: .relaxed)
            return
        }
        page.storeBytes(of: value, toByteOffset: offset & 4095, as: UInt8.self)
    }
}
