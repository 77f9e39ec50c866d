internal import CSupport

// Guard regions (mm/madvise.c, 6.13+): MADV_GUARD_INSTALL puts a guard
// marker in each PTE of a range, so that an access there faults SIGSEGV
// without a VMA of its own per guard page. They matter to page-table
// freeing twice over. Installing them allocates page tables, under the mmap
// read lock (6.13-6.18; 6.19 takes the VMA's read lock where the range lies
// in one VMA, not modelled), beside faults and PT_RECLAIM; and a PTE table
// that holds a marker is not empty, so MADV_DONTNEED leaves the markers and
// PT_RECLAIM leaves the table. Only munmap and exit take markers away
// (ZAP_FLAG_DROP_MARKER), and with them the tables. mremap moves markers
// with the other entries; mprotect leaves them; a collapse of anonymous
// memory refuses a table that holds one.
//
// 6.15 allows them in file mappings too (shmem here; MMProfile's
// guardFileMappings, off for 6.13 and 6.14). Installing gives the VMA an
// anon_vma whatever it maps (6.13-6.18: "the range is no longer empty from
// a page table perspective"), and that is what keeps the shmem retract, a
// pte_free_defer caller, off a table with markers: retract_page_tables
// skips a VMA with an anon_vma. 6.19 marks the VMA VM_MAYBE_GUARD instead,
// and file_backed_vma_is_retractable checks that.

extension MM {
    /// madvise(MADV_GUARD_INSTALL) over [address, address + length): under
    /// the mmap read lock (6.13-6.18), each VMA in turn gets a marker in every PTE,
    /// page tables allocated as needed (walk_page_range's install_pte).
    /// What is mapped there (a page, a huge PMD) is zapped first and the
    /// walk tried again, markers already in place kept; after three tries
    /// the call starts over with the lock dropped (restart_syscall), so
    /// that the faults refilling the range get their turn. A hole in the
    /// range: ENOMEM (`notMapped`) once the rest is done.
    public func madviseGuardInstall(address: UInt64, length: UInt64) throws(MMError) {
        try checkGuardCall(address, length)
        while true {
            let outcome = try onEachGuardVMA(address, length) { vma throws(MMError) -> Bool in
                vmaTree.withLock { $0.prepareAnonVMA(at: vma.start) }
                for _ in 0..<3 {
                    if try installGuards(vma.start, vma.end) { return true }
                    // zap_page_range_single(..., NULL): what is in the way
                    // goes, markers stay, no table is freed.
                    let tlb = MMUGather(mm: self)
                    unmapPageRange(tlb, vma, vma.start, vma.end, .none)
                    tlb.finish()
                }
                return false
            }
            if let outcome { return try outcome.get() }
        }
    }

    /// madvise(MADV_GUARD_REMOVE): every marker in the range cleared, under
    /// the mmap read lock. No table is allocated or freed: a table left
    /// empty stays until a zap that may reclaim it, or munmap.
    public func madviseGuardRemove(address: UInt64, length: UInt64) throws(MMError) {
        try checkGuardCall(address, length)
        let outcome = try onEachGuardVMA(address, length) { vma throws(MMError) -> Bool in
            removeGuards(vma.start, vma.end)
            return true
        }
        try outcome?.get()
    }

    private func checkGuardCall(_ address: UInt64, _ length: UInt64) throws(MMError) {
        try validate("madvise", address, length)
        guard profile.guardRegions else {
            throw .guardRefused(address: address, why: "this profile's kernel has no MADV_GUARD_INSTALL (6.13+)")
        }
    }

    /// `body` on each VMA slice of the range under the mmap read lock, as
    /// madvise_walk_vmas goes: a VMA that takes no guard ends the call
    /// there (EINVAL), a hole is reported after the rest (ENOMEM). nil: a
    /// VMA's `body` gave up, and the call starts over with the lock dropped.
    private func onEachGuardVMA(_ address: UInt64, _ length: UInt64,
                                _ body: (VMA) throws(MMError) -> Bool) throws(MMError) -> Result<Void, MMError>? {
        let end = address + length
        return try mmapLock.withReadLock { () throws(MMError) -> Result<Void, MMError>? in
            let tree = vmaTree.withLock { $0 }
            for vma in tree.clipped(address, end) {
                guard vma.isAnonymous || profile.guardFileMappings else {
                    throw .guardRefused(address: vma.start, why: "this profile's kernel keeps guard regions to anonymous memory (6.13 and 6.14; file mappings 6.15+)")
                }
                guard try body(vma) else { return nil }
            }
            return tree.covers(address, end) ? .success(()) : .failure(.notMapped(address: firstHole(tree, address, end)))
        }
    }

    /// One walk of [start, end): a marker into every none PTE under its
    /// PTE lock, tables allocated as needed. False at the first entry that
    /// holds something else, or a huge PMD: the caller zaps and walks again.
    private func installGuards(_ start: UInt64, _ end: UInt64) throws(MMError) -> Bool {
        var address = start
        while address < end {
            let next = addressEnd(address, end, span: Self.pmdSize)
            let (pmdTable, pmdSlot) = try walkToPMD(address)
            let pmd = Entry(rawValue: ptlab_pte_read(pmdSlot))
            if pmd.isTransHuge { return false }
            if !pmd.isPresent { _ = try populate(pmdSlot, parent: pmdTable, level: .pmd, child: .pte) }
            raceWindow(.guardTableReached, address)
            // nil: the PMD changed before the lock (PT_RECLAIM took the
            // table, a fault put a huge PMD there): look again.
            let installed = withPTEOffsetMapLock(pmdSlot) { table -> Bool in
                defer { noteWrite(to: table, under: pmdSlot) }
                for at in stride(from: address, to: next, by: 4096) {
                    let slot = entry(in: table, level: .pte, address: at)
                    let e = Entry(rawValue: ptlab_pte_read(slot))
                    if e.isNone {
                        ptlab_pte_write(slot, Entry.guardMarker.rawValue)
                    } else if !e.isGuardMarker {
                        return false
                    }
                }
                return true
            }
            guard let installed else { continue }
            guard installed else { return false }
            address = next
        }
        return true
    }

    /// The markers of [start, end) cleared, in the tables there are.
    private func removeGuards(_ start: UInt64, _ end: UInt64) {
        var address = start
        while address < end {
            let next = addressEnd(address, end, span: Self.pmdSize)
            defer { address = next }
            guard let (_, pmdSlot) = findPMD(address) else { continue }
            _ = withPTEOffsetMapLock(pmdSlot) { table in
                for at in stride(from: address, to: next, by: 4096) {
                    let slot = entry(in: table, level: .pte, address: at)
                    if Entry(rawValue: ptlab_pte_read(slot)).isGuardMarker { ptlab_pte_write(slot, 0) }
                }
                noteWrite(to: table, under: pmdSlot)
            }
        }
    }
}
