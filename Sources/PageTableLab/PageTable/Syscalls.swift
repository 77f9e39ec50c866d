internal import CSupport

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
    /// neighbours. Nothing is allocated until the first fault. With
    /// `shared`, MAP_SHARED of a fresh memfd of `length` bytes instead.
    /// `noHugepage` is the MADV_NOHUGEPAGE a trace's mmap applies at once.
    public func mmap(address: UInt64, length: UInt64, shared: Bool = false, noHugepage: Bool = false) throws(MMError) {
        try validate("mmap", address, length)
        try withWriteLock(vmasOf: [address..<address + length], merging: shared ? .none : .anonymous) { () throws(MMError) in
            // exit() marks the mm before it takes this lock: an mmap that
            // validated before and got the lock after finds it here, rather
            // than mapping into an mm whose tables are gone. (The kernel
            // cannot meet this: exit_mmap runs once mm_users is zero. Every
            // other op needs a VMA, and exit leaves none.)
            guard !hasExited else { throw .mmGone }
            let file = shared ? ShmemFile(size: length, allocator: allocator) : nil
            var flags = VMFlags.readWrite
            if shared { flags.insert(.shared) }
            if noHugepage { flags.insert(.noHugepage) }
            try vmaTree.withLock { tree throws(MMError) in
                guard !tree.overlaps(address, address + length) else {
                    throw .mappingExists(address: address, length: length)
                }
                tree.insert(VMA(start: address, end: address + length, flags: flags, file: file, pgoff: shared ? 0 : nil))
            }
            rmap.withLock { $0.link(address..<address + length) }
            if let file {
                mappedFiles.withLock { $0[ObjectIdentifier(file)] = file }
                file.mapped(by: self)
            }
        }
    }

    /// Write one byte at address, address+stride, … below address+length,
    /// faulting in tables and data pages as a user program would.
    public func touch(address: UInt64, length: UInt64, stride: UInt64 = 4096) throws(MMError) {
        guard stride > 0 else { throw .zeroLength(operation: "touch stride") }
        guard !hasExited else { throw .mmGone }
        guard address < taskSize, length <= taskSize - address else {
            throw .outOfUserRange(address: address, length: length)
        }
        let end = address + length
        var at = address
        while at < end {
            try storeByte(1, at: at)
            // A stride past the end is one write, not an overflow.
            guard stride < end - at else { break }
            at += stride
        }
    }

    /// munmap: split the VMAs at the edges and detach what is inside under
    /// the mmap write lock, then downgrade it to read (as
    /// vms_complete_munmap_vmas does) to zap and free_pgtables between the
    /// neighbours left around the hole: faults and walkers under the read
    /// lock run meanwhile, but can no longer find the detached VMAs.
    public func munmap(address: UInt64, length: UInt64) throws(MMError) {
        try validate("munmap", address, length)
        withWriteLockDowngrading(vmasOf: address..<address + length, { detachVMAs(address, address + length) },
                                 then: unmapDetached)
    }

    /// The VMAs of [start, end), split at the edges and taken out of the
    /// tree, and the neighbours left around the hole.
    struct DetachedVMAs {
        let removed: [VMA]
        let prev: VMA?
        let next: VMA?
    }

    /// The file VMAs stay in their file's rmap until free_pgtables unlinks
    /// them (RmapRanges.detached). Taken out of the tree and put there under
    /// the rmap's mutex, so that a walk reading the tree and then the
    /// detached ones (fileRmap) finds each VMA in one or the other.
    ///
    /// A huge PMD an edge cuts is split first, under the mmap write lock,
    /// as __split_vma's vma_adjust_trans_huge does: the zap after the
    /// downgrade then finds PTE tables only.
    func detachVMAs(_ start: UInt64, _ end: UInt64) -> DetachedVMAs {
        splitHugePMDs(at: [start, end])
        return rmap.withLock { r in
            let (removed, prev, next) = vmaTree.withLock { $0.remove(start, end) }
            r.detach(removed)
            return DetachedVMAs(removed: removed, prev: prev, next: next)
        }
    }

    /// unmap_region: zap the detached VMAs and free their tables.
    func unmapDetached(_ detached: DetachedVMAs) {
        guard !detached.removed.isEmpty else { return }
        raceWindow(.munmapDetached, detached.removed[0].start)
        let tlb = MMUGather(mm: self)
        for vma in detached.removed { unmapPageRange(tlb, vma, vma.start, vma.end, .unmap) }
        freePgtables(tlb, detached.removed, floor: detached.prev?.end ?? 0, ceiling: detached.next?.start ?? 0)
        tlb.finish()
        lastGather = tlb.stats
        releaseUnmappedFiles()
    }

    /// do_vmi_munmap with mmap_lock held for write throughout (mremap).
    func unmapLocked(_ start: UInt64, _ end: UInt64) {
        unmapDetached(detachVMAs(start, end))
    }

    /// madvise(MADV_DONTNEED): zap the mapped parts of the range under its
    /// VMA's lock, or the mmap read lock (withMadviseLock); on a PT_RECLAIM
    /// kernel, PTE tables it emptied whole go too. Like the kernel, it acts
    /// on what is mapped and then reports a hole (ENOMEM) if the range had
    /// one.
    public func madviseDontneed(address: UInt64, length: UInt64) throws(MMError) {
        try validate("madvise", address, length)
        let holeAt: UInt64? = withMadviseLock(address..<address + length) {
            raceWindow(.dontneedLocked, address)
            let tree = vmaTree.withLock { $0 }
            let slices = tree.clipped(address, address + length)
            let tlb = MMUGather(mm: self)
            for vma in slices { unmapPageRange(tlb, vma, vma.start, vma.end, ZapDetails(reclaimPT: profile.ptReclaim)) }
            tlb.finish()
            lastGather = tlb.stats
            return tree.covers(address, address + length) ? nil : firstHole(in: slices, address, address + length)
        }
        if let holeAt { throw .notMapped(address: holeAt) }
    }

    /// madvise(MADV_HUGEPAGE / MADV_NOHUGEPAGE): set the VMA flag (and clear
    /// its opposite), splitting and merging VMAs as the flags now say. No
    /// page table moves: the flag decides what later faults and collapses do.
    public func madviseHugepage(address: UInt64, length: UInt64, enable: Bool = true) throws(MMError) {
        try validate("madvise", address, length)
        let hole: UInt64? = withWriteLock(vmasOf: [address..<address + length], merging: .backedAs(address..<address + length)) {
            let (splits, hole) = vmaTree.withLock { tree -> ([UInt64], UInt64?) in
                let hole = tree.covers(address, address + length) ? nil : firstHole(tree, address, address + length)
                let splits = tree.modify(address, address + length) { vma in
                    vma.flags.remove(enable ? .noHugepage : .hugepage)
                    vma.flags.insert(enable ? .hugepage : .noHugepage)
                }
                return (splits, hole)
            }
            splitHugePMDs(at: splits)
            return hole
        }
        if let hole { throw .notMapped(address: hole) }
    }

    /// vma_adjust_trans_huge: a VMA split inside a huge PMD splits the PMD.
    /// An address no VMA covers cuts nothing.
    func splitHugePMDs(at addresses: [UInt64]) {
        for address in addresses where address & (Self.pmdSize - 1) != 0 {
            guard let vma = vmaTree.withLock({ $0.find(address) }), let (pmdTable, slot) = findPMD(address),
                  Entry(rawValue: ptlab_pte_read(slot)).isHugeLeaf else { continue }
            splitHugePMD(pmdTable: pmdTable, slot: slot, address: address, vma: vma)
        }
    }

    func firstHole(_ tree: VMATree, _ start: UInt64, _ end: UInt64) -> UInt64 {
        firstHole(in: tree.clipped(start, end), start, end)
    }

    private func firstHole(in slices: [VMA], _ start: UInt64, _ end: UInt64) -> UInt64 {
        var at = start
        for vma in slices {
            if vma.start > at { return at }
            at = vma.end
        }
        return at
    }

    /// Files no VMA of this mm maps any more are let go (the last mm to
    /// let go takes the page cache with it).
    func releaseUnmappedFiles() {
        let still = Set(vmaTree.withLock { $0.vmas.compactMap { $0.file.map(ObjectIdentifier.init) } })
        let gone = mappedFiles.withLock { files -> [ShmemFile] in
            let gone = files.filter { !still.contains($0.key) }
            for key in gone.keys { files[key] = nil }
            return Array(gone.values)
        }
        for file in gone { file.unmapped(by: self) }
    }

    /// exit_mmap, as 5.19+ runs it: mmu_notifier_release (an IOMMU bound
    /// through SVA stops walking the tables now); unmap_vmas, a fullmm
    /// gather over every VMA, under the mmap read lock, beside which an OOM
    /// reaper may zap; MMF_OOM_SKIP; then the mmap write lock, which waits
    /// for such a reaper to finish, to take the VMAs out and free_pgtables
    /// over the whole address space; last mmput's mmdrop, which frees the
    /// PGD unless an SVA bond still holds the mm. Returns pgtables_bytes
    /// left behind, which must be 0 (check_mm's "non-zero pgtables_bytes").
    @discardableResult
    public func exit() -> Int {
        guard markExited() else { return pgtablesBytes }
        releaseNotifiers()
        let tlb = MMUGather(mm: self, fullmm: true)
        mmapLock.withReadLock {
            for vma in vmas { unmapPageRange(tlb, vma, vma.start, vma.end, .unmap) }
        }
        oomSkip.store(true, ordering: .releasing)
        raceWindow(.exitUnmapped, 0)
        let freeTables = {
            let all = self.detachVMAs(0, .max).removed
            self.freePgtables(tlb, all, floor: 0, ceiling: 0)
            tlb.finish()
            self.lastGather = tlb.stats
            self.releaseUnmappedFiles()
        }
        if profile.exitFreesTablesUnderReadLock {
            mmapLock.withReadLock(freeTables)
        } else {
            withWriteLock(vmasOf: [0..<UInt64.max], merging: .none, freeTables)
        }
        drop()
        return pgtablesBytes
    }
}
