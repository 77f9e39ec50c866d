import CSupport

extension MM {
    func validate(_ operation: String, _ address: UInt64, _ length: UInt64) throws(MMError) {
        guard !hasExited else { throw .mmGone }
        guard address & 4095 == 0 else { throw .misaligned(what: "\(operation) address", value: address) }
        guard length & 4095 == 0 else { throw .misaligned(what: "\(operation) length", value: length) }
        guard length > 0 else { throw .zeroLength(operation: operation) }
        guard address < taskSize, length <= taskSize - address else {
            throw .outOfUserRange(address: address, length: length)
        }
    }

    /// mmap(addr, len, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|
    /// MAP_FIXED_NOREPLACE): a new VMA exactly there, merged with compatible
    /// neighbours. Nothing is allocated until the first fault.
    public func mmap(address: UInt64, length: UInt64) throws(MMError) {
        try validate("mmap", address, length)
        try mmapLock.withWriteLock { () throws(MMError) in
            try vmaTree.withLock { tree throws(MMError) in
                guard !tree.overlaps(address, address + length) else {
                    throw .mappingExists(address: address, length: length)
                }
                tree.insert(address, address + length)
            }
        }
    }

    /// Write one byte at address, address+stride, … below address+length,
    /// faulting in tables and data pages as a user program would.
    public func touch(address: UInt64, length: UInt64, stride: UInt64 = 4096) throws(MMError) {
        guard stride > 0 else { throw .zeroLength(operation: "touch stride") }
        guard !hasExited else { throw .mmGone }
        var at = address
        while at < address + length {
            let page = try fault(at: at & ~4095)
            page.storeBytes(of: 1, toByteOffset: Int(at & 4095), as: UInt8.self)
            at += stride
        }
    }

    /// munmap: split the VMAs at the edges, zap what is inside, then
    /// free_pgtables between the neighbours left around the hole.
    public func munmap(address: UInt64, length: UInt64) throws(MMError) {
        try validate("munmap", address, length)
        mmapLock.withWriteLock {
            let (removed, prev, next) = vmaTree.withLock { $0.remove(address, address + length) }
            guard !removed.isEmpty else { return }
            let tlb = MMUGather(mm: self)
            for vma in removed { unmapPageRange(tlb, vma.start, vma.end, reclaimPT: false) }
            freePgtables(tlb, removed, floor: prev?.end ?? 0, ceiling: next?.start ?? 0)
            tlb.finish()
            lastGather = tlb.stats
        }
    }

    /// madvise(MADV_DONTNEED): zap the mapped parts of the range under the
    /// read lock; on a PT_RECLAIM kernel, PTE tables it emptied whole go too.
    /// Like the kernel, it acts on what is mapped and then reports a hole
    /// (ENOMEM) if the range had one.
    public func madviseDontneed(address: UInt64, length: UInt64) throws(MMError) {
        try validate("madvise", address, length)
        let holeAt: UInt64? = mmapLock.withReadLock {
            let tree = vmaTree.withLock { $0 }
            let slices = tree.clipped(address, address + length)
            let tlb = MMUGather(mm: self)
            for vma in slices { unmapPageRange(tlb, vma.start, vma.end, reclaimPT: profile.ptReclaim) }
            tlb.finish()
            lastGather = tlb.stats
            return tree.covers(address, address + length) ? nil : firstHole(in: slices, address, address + length)
        }
        if let holeAt { throw .notMapped(address: holeAt) }
    }

    private func firstHole(in slices: [VMA], _ start: UInt64, _ end: UInt64) -> UInt64 {
        var at = start
        for vma in slices {
            if vma.start > at { return at }
            at = vma.end
        }
        return at
    }

    /// exit_mmap: a fullmm gather over every VMA, free_pgtables over the
    /// whole address space, then pgd_free. Returns pgtables_bytes left
    /// behind, which must be 0 (check_mm's "non-zero pgtables_bytes").
    @discardableResult
    public func exit() -> Int {
        guard markExited() else { return pgtablesBytes }
        mmapLock.withWriteLock {
            let all = vmaTree.withLock { $0.removeAll() }
            let tlb = MMUGather(mm: self, fullmm: true)
            for vma in all { unmapPageRange(tlb, vma.start, vma.end, reclaimPT: false) }
            freePgtables(tlb, all, floor: 0, ceiling: 0)
            tlb.finish()
            lastGather = tlb.stats
        }
        PageTables.dtorFree(pgd, allocator: allocator)
        return pgtablesBytes
    }
}
