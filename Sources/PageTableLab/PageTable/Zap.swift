internal import CSupport

extension MM {
    /// 2 MiB: the span of one PTE table, and of a huge PMD.
    public static let pmdSize: UInt64 = 1 << 21

    /// unmap_page_range: clear every entry in [start, end) of `vma`, feeding
    /// anonymous data pages to the gather (a shmem page stays in its page
    /// cache). A huge PMD wholly inside goes whole (zap_huge_pmd); one the
    /// range cuts is split first. Guard markers stay unless `details` drops
    /// them. With its `reclaimPT` (MADV_DONTNEED on a PT_RECLAIM kernel) a
    /// PTE table whose whole span was zapped and is now empty is unlinked
    /// and freed through the gather as well.
    func unmapPageRange(_ tlb: MMUGather, _ vma: VMA, _ start: UInt64, _ end: UInt64, _ details: ZapDetails) {
        zapLevel(tlb, vma, table: pgd, level: .pgd, generation: nil, start, end, details)
    }

    /// zap_p4d_range .. zap_pmd_range. The upper tables are walked with no
    /// RCU read section (only pte_offset_map_lock takes one): the lock the
    /// zapper holds is what keeps them linked, so a table below the PGD
    /// that is no longer the live table of `generation` it stepped into was
    /// freed by an updater that skipped that lock. The walk counts it
    /// (zapsOfFreedTables) and leaves the table.
    private func zapLevel(_ tlb: MMUGather, _ vma: VMA, table: Page, level: Level, generation: UInt32?,
                          _ start: UInt64, _ end: UInt64, _ details: ZapDetails) {
        let child = childLevel(of: level)!
        if child == .pte { raceWindow(.zapInPMDTable, start) }
        var address = start
        while address < end {
            let next = addressEnd(address, end, span: 1 << UInt64(shift(level)))
            let slot = entry(in: table, level: level, address: address)
            let e = Entry(rawValue: ptlab_pte_read(slot))
            if let generation, !isLiveTable(table.desc, level, generation) {
                zapsOfFreedTables.add(1, ordering: .relaxed)
                return
            }
            if child == .pte {
                if e.isTransHuge {
                    if address & (Self.pmdSize - 1) != 0 || next - address != Self.pmdSize {
                        splitHugePMD(pmdTable: table, slot: slot, address: address, vma: vma)
                    } else if zapHugePMD(tlb, pmdTable: table, slot: slot, address: address, vma: vma) {
                        address = next
                        continue
                    }
                    // Not huge any more: zap_pte_range on what is there now.
                }
                // zap_pte_range gives up where the PMD changed under it (a
                // collapse made it huge, a split is under way): look at the
                // entry again.
                let now = Entry(rawValue: ptlab_pte_read(slot))
                if now.isTransHuge && !now.isHugeLeaf { continue }
                if now.isPresent,
                   !zapPTERange(tlb, vma, pmdTable: table, pmdSlot: slot, address, next, details) {
                    continue
                }
            } else if e.isPresent, let d = allocator.descriptor(pfn: e.pfn) {
                // The table's generation while the entry still links it: a
                // linked table is not freed.
                let childGeneration = ptlab_page_generation(d)
                if ptlab_pte_read(slot) == e.rawValue {
                    zapLevel(tlb, vma, table: Page(d), level: child, generation: childGeneration, address, next, details)
                }
            }
            address = next
        }
    }

    /// zap_pte_range, with mm/pt_reclaim.c's tail. Each round reaches the
    /// table through pte_offset_map_lock; false when the PMD no longer
    /// names a PTE table before the range was done.
    private func zapPTERange(_ tlb: MMUGather, _ vma: VMA, pmdTable: Page, pmdSlot: UnsafeMutablePointer<UInt64>,
                             _ start: UInt64, _ end: UInt64, _ details: ZapDetails) -> Bool {
        var address = start
        repeat {
            let forceFlush = withPTEOffsetMapLock(pmdSlot) { pteTable in
                let base = allocator.address(of: pteTable)
                var wrote = false
                defer { if wrote { noteWrite(to: pteTable, under: pmdSlot) } }
                while address < end {
                    let slot = entry(inTableAt: base, level: .pte, address: address)
                    address += 4096
                    // zap_nonpresent_ptes: "Ordinary zapping should not
                    // remove guard PTE markers".
                    if !details.dropMarkers && Entry(rawValue: ptlab_pte_read(slot)).isGuardMarker { continue }
                    let old = Entry(rawValue: ptlab_pte_xchg(slot, 0))
                    if old.isGuardMarker { wrote = true }
                    guard old.isMapped, let d = allocator.descriptor(pfn: old.pfn) else { continue }
                    removeRmap(old)
                    wrote = true
                    tlb.clearedPTE(at: address - 4096)
                    // A shmem page belongs to its page cache, not to this
                    // mapping. A full gather forces the flush, TLB first,
                    // before the PTE lock goes: until then no other CPU
                    // may be left reaching a page this zap took out.
                    if vma.isAnonymous && tlb.removePage(Page(d)) {
                        tlb.flushTLBOnly()
                        return true
                    }
                }
                return false
            }
            guard let forceFlush else { return Entry(rawValue: ptlab_pte_read(pmdSlot)).isNone }
            // The pages go once the lock is dropped (tlb_flush_mmu).
            if forceFlush { tlb.flushMMU() }
        } while address < end

        // reclaim_pt_is_enabled: only when this zap covered the table's span.
        guard details.reclaimPT, end - start >= Self.pmdSize else { return true }
        tryToFreePTE(tlb, pmdTable: pmdTable, pmdSlot: pmdSlot, start)
        return true
    }

    /// try_to_free_pte: under the PMD lock and the PTE lock, unlink the
    /// table if every entry is none, and free it through the gather.
    private func tryToFreePTE(_ tlb: MMUGather, pmdTable: Page, pmdSlot: UnsafeMutablePointer<UInt64>, _ start: UInt64) {
        lockPTL(pmdTable)
        let pmd = Entry(rawValue: ptlab_pte_read(pmdSlot))
        guard pmd.isPresent, !pmd.isHugeLeaf, let d = allocator.descriptor(pfn: pmd.pfn) else {
            ptlab_ptl_unlock(pmdTable.desc)
            return
        }
        let pteTable = Page(d)
        lockPTL(pteTable)
        let base = allocator.address(of: pteTable).assumingMemoryBound(to: UInt64.self)
        let empty = (0..<512).allSatisfy { ptlab_pte_read(base + $0) == 0 }
        if empty { ptlab_pte_write(pmdSlot, 0) }
        ptlab_ptl_unlock(pteTable.desc)
        ptlab_ptl_unlock(pmdTable.desc)
        guard empty else { return }
        // free_pte: pte_free_tlb + mm_dec_nr_ptes.
        tlb.freeTable(pteTable, level: .pte, address: start)
        accountTable(.pte, -1)
    }

    /// spin_lock on a split ptlock. Updaters hold mmap_lock, their VMA's
    /// lock or the parent's lock, so the table cannot be torn down under
    /// them.
    func lockPTL(_ table: Page) {
        while ptlab_ptl_trylock(table.desc) == 0 {}
    }
}

/// struct zap_details, what the model's zaps take from it.
struct ZapDetails {
    /// reclaim_pt: MADV_DONTNEED on a PT_RECLAIM kernel.
    var reclaimPT = false
    /// ZAP_FLAG_DROP_MARKER: munmap and exit take guard markers with the
    /// rest; every other zap leaves them.
    var dropMarkers = false

    /// No details (the OOM reaper's, a collapse's unmap of file pages,
    /// MADV_GUARD_INSTALL's zap of what is in its way).
    static let none = ZapDetails()
    /// unmap_vmas: munmap and exit.
    static let unmap = ZapDetails(dropMarkers: true)
}

/// pgd_addr_end and friends: the next `span` boundary after `address`, or
/// `end` if that comes first (comparing with -1 so a boundary that wraps to 0
/// at the top of the address space still counts as "after").
@inlinable
func addressEnd(_ address: UInt64, _ end: UInt64, span: UInt64) -> UInt64 {
    let boundary = (address &+ span) & ~(span - 1)
    return boundary &- 1 < end &- 1 ? boundary : end
}
