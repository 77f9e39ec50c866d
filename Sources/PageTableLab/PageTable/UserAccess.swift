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
    /// One hold of the mmap read lock covers the fault and the store, as a
    /// CPU's retaken fault and its store run under the one the fault took.
    func storeByte(_ value: UInt8, at address: UInt64) throws(MMError) {
        try mmapLock.withReadLock { () throws(MMError) in
            // Fault first: a store is most often to memory not yet mapped,
            // and the fault that maps a small page stores under its lock.
            var stored = false
            let vma = try faultableVMA(at: address)
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
            guard now.isHugeLeaf, let base = allocator.address(pfn: now.pfn) else { return false }
            base.storeBytes(of: value, toByteOffset: Int(address & (Self.pmdSize - 1)), as: UInt8.self)
            return true
        }
        guard pmd.isPresent else { return false }
        return withPTEOffsetMapLock(pmdSlot) { table -> Bool in
            let pte = Entry(rawValue: ptlab_pte_read(entry(in: table, level: .pte, address: address)))
            guard pte.isPresent, let page = allocator.address(pfn: pte.pfn) else { return false }
            page.storeBytes(of: value, toByteOffset: Int(address & 4095), as: UInt8.self)
            return true
        } ?? false
    }
}
