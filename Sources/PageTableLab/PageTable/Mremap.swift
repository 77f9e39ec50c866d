internal import CSupport

/// mremap(OLD, LEN, LEN, MREMAP_MAYMOVE|MREMAP_FIXED, NEW) (mm/mremap.c):
/// under the mmap write lock, the VMA is copied to NEW, its page tables are
/// moved there (move_page_tables), and the old range is unmapped, its
/// tables going through free_pgtables with its neighbours as floor and
/// ceiling.
///
/// The locks are the kernel's, no more: the mmap write lock and the VMA
/// write locks (vma_start_write: faults and DONTNEED may hold only those)
/// keep out faults, zaps and collapse_pte_mapped_thp, but not the rmap
/// walkers of a collapse of the file (its unmap and retract_page_tables). Those are kept
/// out by the rmap lock only while a whole table moves; entries and huge
/// PMDs move beside them, each under its table's lock, and each move is
/// flushed before that lock goes.
///
/// move_page_tables goes extent by extent, an extent ending at the next
/// PUD or PMD boundary of either address. A whole PMD table moves when the
/// extent is a PUD (move_normal_pud), a whole PTE table when it is a PMD
/// (move_normal_pmd), a huge PMD as it is; otherwise the destination gets a
/// PTE table (even for an extent whose entries are all empty) and the
/// entries move one by one (move_ptes). On 6.7+ the move is first aligned
/// down to a PMD boundary when the two addresses are equally misaligned and
/// nothing is mapped below either (try_realign_addr), so that whole tables
/// move.
///
/// With `dontUnmap` (MREMAP_DONTUNMAP, 5.7; every mapping since 5.13) the
/// old range stays mapped, its VMA kept: the entries are gone from it, and
/// the PTE tables they moved out of stay, empty, where entries moved one by
/// one (a table that moved whole is gone). A fault there maps afresh. A
/// source VMA moved whole loses its anon_vma (unlink_anon_vmas).
///
/// A table the move cannot allocate stops it (ENOMEM). As
/// copy_vma_and_data does, the entries already moved then go back to the
/// old range, and the new range is unmapped instead: the old mapping is
/// left as it was, short of a move back that runs out of memory as well.
///
/// Up to 6.16 the old range must lie inside one VMA (EFAULT). 6.17 moves
/// every VMA of the range (remap_move, for a MREMAP_FIXED move that does
/// not resize, which is the only mremap the lab makes): one after another
/// under the one mmap write lock, each as a move of its own, so each one's
/// old range goes through free_pgtables with the VMAs not yet moved still
/// standing beside it. Gaps between them are kept, and MREMAP_FIXED unmaps
/// only what each VMA lands on, so what lay in a gap's place at NEW stays.
/// A hole at OLD itself is EFAULT; one at the end is left behind. A move
/// that fails leaves the VMAs before it moved (the kernel keeps them, and
/// so does the lab). The kernel also refuses (EFAULT) a range that runs on
/// past a VMA with a userfaultfd context or an unusual get_unmapped_area,
/// before anything moves when that VMA is the first; the lab has neither.
extension MM {
    /// Returns how many VMAs moved: more than one only on 6.17+, and only
    /// where the range spans VMAs (a stress run counts how often it did).
    @discardableResult
    public func mremap(from old: UInt64, length: UInt64, to new: UInt64, dontUnmap: Bool = false) throws(MMError) -> Int {
        try validate("mremap", old, length)
        try validate("mremap", new, length)
        guard old + length <= new || new + length <= old else {
            throw .overlappingMove(from: old, to: new, length: length)
        }
        return try withWriteLock(vmasOf: [old..<old + length, new..<new + length], merging: .backedAs(old..<old + length)) { () throws(MMError) -> Int in
            let pieces = vmaTree.withLock { $0.clipped(old, old + length) }.map { $0.start..<$0.end }
            guard let first = pieces.first, first.lowerBound == old,
                  profile.mremapMovesVMAs || first.upperBound == old + length else {
                throw .moveAcrossVMAs(address: old, length: length)
            }
            for piece in pieces {
                try moveVMA(from: piece.lowerBound, length: piece.upperBound - piece.lowerBound, to: new + (piece.lowerBound - old),
                            dontUnmap: dontUnmap)
            }
            return pieces.count
        }
    }

    /// mremap_to for the part of one VMA at [old, old + length), the
    /// write locks held.
    private func moveVMA(from old: UInt64, length: UInt64, to new: UInt64, dontUnmap: Bool) throws(MMError) {
        // MREMAP_FIXED: whatever is at NEW goes first. NEW may cut the
        // source VMA's other end, so the VMA is looked up after, as
        // mremap_to looks it up again.
        unmapLocked(new, new + length)
        guard let vma = vmaTree.withLock({ $0.find(old) }) else { throw .moveAcrossVMAs(address: old, length: length) }
        // copy_vma: an anonymous VMA never faulted takes its new address
        // as pgoff, so it can merge where it lands.
        var moved = vma.slice(old, old + length)
        moved.start = new
        moved.end = new + length
        if moved.isAnonymous && moved.anonVMA == 0 { moved.pgoff = new >> 12 }
        // vma_link, under the rmap lock as i_mmap_lock_write: a walk
        // finds the copy in its place in rmap order, or not at all.
        let landed = rmapLock.withWriteLock {
            rmap.withLock { $0.link(new..<new + length) }
            return vmaTree.withLock { tree in
                tree.insert(moved)
                return tree.find(new)!
            }
        }
        if let file = moved.file { file.mapped(by: self) }
        // copy_vma's need_rmap_locks: a copy merged into a neighbour
        // that starts at or below the source's page may come before
        // the source in rmap order; a copy of its own comes after it.
        let merged = landed.start != new || landed.end != new + length
        let forward = movePageTables(vma: vma, from: old, to: new, length: length,
                                     needRmapLocks: merged && landed.pgoff <= vma.pgoff)
        guard let failure = forward.failure else {
            guard dontUnmap else { return unmapLocked(old, old + length) }
            if vma.start == old && vma.end == old + length { vmaTree.withLock { $0.unlinkAnonVMA(at: old) } }
            return
        }
        // The kernel does not check the move back ("which will succeed
        // since page tables still there"), though it can need a table:
        // where an extent of the new range took entries from the end
        // of one old table, the old range's next PMD may have had none,
        // and pte_alloc must make one. If that fails too, the entries
        // it could not move back go with the new range, as they would
        // in the kernel (MremapTests).
        _ = movePageTables(vma: landed, from: new, to: old, length: forward.moved, needRmapLocks: true)
        unmapLocked(new, new + length)
        throw failure
    }

    /// move_page_tables. The rmap lock (take_rmap_locks) is taken for each
    /// whole table that moves, always, since the collapse's retract reaches
    /// tables through the rmap alone; for a huge PMD or the entries of a
    /// table only with `needRmapLocks`: otherwise an rmap walker runs
    /// beside the move, and sees each entry at its old place or its new
    /// (the PTE locks serialise each entry, and rmap order puts the source
    /// first, VMATree.rmapOrder).
    ///
    /// Returns how much of [oldStart, oldStart + length) it moved, in whole
    /// extents from the start (none, if it stopped inside the stretch a
    /// realignment added below the range), and the allocation failure that
    /// stopped it, if one did.
    private func movePageTables(vma: VMA, from oldStart: UInt64, to newStart: UInt64, length: UInt64,
                                needRmapLocks: Bool) -> (moved: UInt64, failure: MMError?) {
        func takingRmapLocks<R>(_ needed: Bool, _ body: () -> R) -> R {
            needed ? rmapLock.withWriteLock(body) : body()
        }
        let oldEnd = oldStart + length
        /// One extent of the move, from `old` to `new`, and how far it
        /// reaches: nil when move_ptes must start it again (-EAGAIN).
        func moveExtent(_ old: UInt64, _ new: UInt64) throws(MMError) -> UInt64? {
            var extent = Self.extent(old, new, oldEnd, span: Level.pud.entrySpan)
            guard let (_, oldPUD) = findPUDEntry(old) else { return extent }
            let (_, newPUD) = try walkToPUDEntry(new)
            if extent == Level.pud.entrySpan, takingRmapLocks(true, { moveNormalPUD(from: oldPUD, to: newPUD, address: old) }) {
                return extent
            }
            extent = Self.extent(old, new, oldEnd, span: Self.pmdSize)
            guard let (oldPMDTable, oldPMD) = findPMD(old), Entry(rawValue: ptlab_pte_read(oldPMD)).isMapped else { return extent }
            let (newPMDTable, newPMD) = try walkToPMD(new)
            if Entry(rawValue: ptlab_pte_read(oldPMD)).isHugeLeaf {
                if extent == Self.pmdSize {
                    takingRmapLocks(needRmapLocks) {
                        moveHugePMD(from: oldPMD, oldTable: oldPMDTable, to: newPMD, newTable: newPMDTable, address: old, vma: vma)
                    }
                    return extent
                }
                splitHugePMD(pmdTable: oldPMDTable, slot: oldPMD, address: old, vma: vma)
            } else if extent == Self.pmdSize, takingRmapLocks(true, {
                moveNormalPMD(from: oldPMD, oldTable: oldPMDTable, to: newPMD, newTable: newPMDTable, address: old)
            }) {
                return extent
            }
            guard Entry(rawValue: ptlab_pte_read(oldPMD)).isPresent else { return extent }
            let newTable = try pteTable(at: newPMD, parent: newPMDTable, address: new)
            raceWindow(.mremapBeforeMovePTEs, new)
            return takingRmapLocks(needRmapLocks, {
                movePTEs(from: oldPMD, at: old, to: newPMD, newTable: newTable, at: new, extent: extent)
            }) ? extent : nil
        }
        var old = oldStart, new = newStart
        if profile.mremapRealign, canRealign(old, new, length: length, vma: vma) {
            old &= ~(Self.pmdSize - 1)
            new &= ~(Self.pmdSize - 1)
        }
        let tlb = MMUGather(mm: self)
        defer { tlb.finish() }
        var failure: MMError?
        // An allocation that fails ends the move where it stands: `old` has
        // only passed extents that moved.
        do throws(MMError) {
            while old < oldEnd {
                guard let extent = try moveExtent(old, new) else { continue }
                old += extent
                new += extent
            }
        } catch {
            failure = error
        }
        return (old > oldStart ? min(old, oldEnd) - oldStart : 0, failure)
    }

    /// get_extent: from `old` to the next `span` boundary of either address,
    /// or to the end.
    private static func extent(_ old: UInt64, _ new: UInt64, _ oldEnd: UInt64, span: UInt64) -> UInt64 {
        var extent = ((old + span) & ~(span - 1)) - old
        extent = min(extent, oldEnd - old)
        return min(extent, ((new + span) & ~(span - 1)) - new)
    }

    /// can_realign_addr + can_align_down for the PMD boundary.
    private func canRealign(_ old: UInt64, _ new: UInt64, length: UInt64, vma: VMA) -> Bool {
        let mask = Self.pmdSize - 1
        guard old & mask != 0, old & mask == new & mask, length >= Self.pmdSize - (old & mask) else { return false }
        return vmaTree.withLock { tree in
            [old, new].allSatisfy { address in
                guard let here = tree.find(address), here.start == address else { return false }
                return !tree.overlaps(address & ~mask, address)
            }
        }
    }

    /// move_normal_pud: the PMD table under `from` moves to the empty `to`
    /// whole, under pud_lock (the mm's page_table_lock on x86).
    private func moveNormalPUD(from: UnsafeMutablePointer<UInt64>, to: UnsafeMutablePointer<UInt64>, address: UInt64) -> Bool {
        pageTableLock.withLock { _ in moveTableLocked(from: from, to: to, address: address, span: Level.pud.entrySpan) }
    }

    /// move_normal_pmd: the PTE table under `from` moves to the empty `to`
    /// whole, under pmd_lock of both PMD tables.
    private func moveNormalPMD(from: UnsafeMutablePointer<UInt64>, oldTable: Page, to: UnsafeMutablePointer<UInt64>,
                               newTable: Page, address: UInt64) -> Bool {
        lockPTL(oldTable)
        if newTable != oldTable { lockPTL(newTable) }
        defer {
            if newTable != oldTable { ptlab_ptl_unlock(newTable.desc) }
            ptlab_ptl_unlock(oldTable.desc)
        }
        return moveTableLocked(from: from, to: to, address: address, span: Self.pmdSize)
    }

    /// The entry is read again under the lock: a collapse's retract may
    /// have cleared it, or a huge PMD gone in, since move_page_tables
    /// looked ("Racing with collapse?"). The flush for the old range runs
    /// before the lock is dropped, as every move's does.
    private func moveTableLocked(from: UnsafeMutablePointer<UInt64>, to: UnsafeMutablePointer<UInt64>, address: UInt64,
                                 span: UInt64) -> Bool {
        let e = Entry(rawValue: ptlab_pte_read(from))
        guard e.isPresent, !e.isHugeLeaf, ptlab_pte_read(to) == 0 else { return false }
        ptlab_pte_write(from, 0)
        ptlab_pte_write(to, e.rawValue)
        flushMoved(address, span)
        return true
    }

    /// move_huge_pmd: the huge PMD and its deposit move together, flushed
    /// before the PMD locks are dropped.
    private func moveHugePMD(from: UnsafeMutablePointer<UInt64>, oldTable: Page, to: UnsafeMutablePointer<UInt64>,
                             newTable: Page, address: UInt64, vma: VMA) {
        lockPTL(oldTable)
        if newTable != oldTable { lockPTL(newTable) }
        let e = ptlab_pte_xchg(from, 0)
        ptlab_pte_write(to, e)
        if vma.isAnonymous && newTable != oldTable { deposit(withdraw(from: oldTable), under: newTable) }
        if Entry(rawValue: e).isPresent { flushMoved(address, Self.pmdSize) }
        if newTable != oldTable { ptlab_ptl_unlock(newTable.desc) }
        ptlab_ptl_unlock(oldTable.desc)
    }

    /// flush_tlb_range of a moved range, secondary TLBs included, while the
    /// locks of the entries that moved are still held: both matter, the
    /// old one against a folio_mkclean of the old mapping, the new one so
    /// that a zap through the rmap of the new mapping cannot free the page
    /// while a CPU still reaches it through the old (CVE-2018-18281).
    private func flushMoved(_ address: UInt64, _ span: UInt64) {
        tlb.flush()
        invalidateSecondaryTLBs(start: address, end: address + span)
    }

    /// The PTE table under PMD entry `slot`, allocated if missing (pte_alloc).
    private func pteTable(at slot: UnsafeMutablePointer<UInt64>, parent: Page, address: UInt64) throws(MMError) -> Page {
        var e = Entry(rawValue: ptlab_pte_read(slot))
        if !e.isPresent { e = try populate(slot, parent: parent, level: .pmd, child: .pte) }
        return Page(allocator.descriptor(pfn: e.pfn)!)
    }

    /// move_ptes: the old table through pte_offset_map_lock, the new one
    /// locked beside it; each entry of the extent moves, and a present one
    /// moved forces the flush before the locks go.
    ///
    /// The new table is looked up again inside the same RCU read section,
    /// and its PMD compared once its lock is held (pte_offset_map_rw_nolock
    /// and pmd_same): without the rmap lock, a collapse's retract may have
    /// taken it away since move_page_tables allocated or found it. False,
    /// as for an old PMD that changed, means -EAGAIN: the caller starts the
    /// extent again.
    private func movePTEs(from oldPMD: UnsafeMutablePointer<UInt64>, at old: UInt64, to newPMD: UnsafeMutablePointer<UInt64>,
                          newTable: Page, at new: UInt64, extent: UInt64) -> Bool {
        withPTEOffsetMapLock(oldPMD) { oldTable -> Bool in
            let pmd = ptlab_pte_read(newPMD)
            let e = Entry(rawValue: pmd)
            guard e.isPresent, !e.isHugeLeaf, e.pfn == UInt64(newTable.pfn) else { return false }
            if newTable != oldTable { lockPTL(newTable) }
            defer { if newTable != oldTable { ptlab_ptl_unlock(newTable.desc) } }
            guard ptlab_pte_read(newPMD) == pmd else { return false }
            var moved = false, forceFlush = false
            for offset in stride(from: 0, to: extent, by: 4096) {
                let e = ptlab_pte_xchg(entry(in: oldTable, level: .pte, address: old + offset), 0)
                guard e != 0 else { continue }
                ptlab_pte_write(entry(in: newTable, level: .pte, address: new + offset), e)
                moved = true
                forceFlush = forceFlush || Entry(rawValue: e).isPresent
            }
            if moved { noteWrite(to: oldTable, under: oldPMD) }
            if forceFlush { flushMoved(old, extent) }
            return true
        } ?? false
    }

    /// get_old_pud: the PUD entry for `address` when it names a PMD table.
    private func findPUDEntry(_ address: UInt64) -> (Page, UnsafeMutablePointer<UInt64>)? {
        var table = pgd
        var level = Level.pgd
        while true {
            let slot = entry(in: table, level: level, address: address)
            let e = Entry(rawValue: ptlab_pte_read(slot))
            guard e.isPresent, let d = allocator.descriptor(pfn: e.pfn) else { return nil }
            if level == .pud { return (table, slot) }
            table = Page(d)
            level = childLevel(of: level)!
        }
    }

    /// alloc_new_pud: the PUD entry for `address`, with the tables above it
    /// allocated as needed.
    private func walkToPUDEntry(_ address: UInt64) throws(MMError) -> (Page, UnsafeMutablePointer<UInt64>) {
        var table = pgd
        var level = Level.pgd
        while level != .pud {
            let child = childLevel(of: level)!
            let slot = entry(in: table, level: level, address: address)
            var e = Entry(rawValue: ptlab_pte_read(slot))
            if !e.isPresent { e = try populate(slot, parent: table, level: level, child: child) }
            table = Page(allocator.descriptor(pfn: e.pfn)!)
            level = child
        }
        return (table, entry(in: table, level: .pud, address: address))
    }
}
