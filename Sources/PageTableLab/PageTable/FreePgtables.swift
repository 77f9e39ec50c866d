internal import CSupport

extension MM {
    /// free_pgtables: after the VMAs in `removed` were zapped, free the page
    /// tables that only they used. `floor` is the end of the VMA below the
    /// hole (0 if none), `ceiling` the start of the VMA above (0 = the top).
    /// VMAs less than a PMD apart are taken together, as the kernel does.
    func freePgtables(_ tlb: MMUGather, _ removed: [VMA], floor: UInt64, ceiling: UInt64) {
        // unlink_anon_vmas / unlink_file_vma: no rmap walker finds them now.
        rmapLock.withWriteLock {
            rmap.withLock { r in
                for vma in removed { r.unlink(vma.extent) }
                r.unlinkDetached(removed)
            }
        }
        var i = 0
        while i < removed.count {
            var j = i
            while j + 1 < removed.count && removed[j + 1].start <= removed[j].end + Self.pmdSize { j += 1 }
            let next = j + 1 < removed.count ? removed[j + 1].start : ceiling
            freePgdRange(tlb, removed[i].start, removed[j].end, floor: floor, ceiling: next)
            i = j + 1
        }
    }

    /// free_pgd_range: a table is freed only if all it spans lies within
    /// [floor, ceiling); PMD alignment first trims the range to whole PTE
    /// tables.
    func freePgdRange(_ tlb: MMUGather, _ start: UInt64, _ end: UInt64, floor: UInt64, ceiling: UInt64) {
        let pmdMask = ~(Self.pmdSize - 1)
        var addr = start & pmdMask
        var end = end
        var ceiling = ceiling
        if addr < floor {
            addr &+= Self.pmdSize
            if addr == 0 { return }
        }
        if ceiling != 0 {
            ceiling &= pmdMask
            if ceiling == 0 { return }
        }
        if end &- 1 > ceiling &- 1 { end &-= Self.pmdSize }
        if addr > end &- 1 { return }

        let child = childLevel(of: .pgd)!
        let span: UInt64 = 1 << UInt64(shift(.pgd))
        repeat {
            let next = addressEnd(addr, end, span: span)
            let slot = entry(in: pgd, level: .pgd, address: addr)
            let e = Entry(rawValue: ptlab_pte_read(slot))
            if e.isPresent, let d = allocator.descriptor(pfn: e.pfn) {
                freeTableRange(tlb, parentSlot: slot, table: Page(d), level: child, addr, next, floor: floor, ceiling: ceiling)
            }
            addr = next
        } while addr != end
    }

    /// free_p4d_range / free_pud_range / free_pmd_range: free what the table's
    /// entries point to, then the table itself if its whole span is inside
    /// [floor, ceiling).
    private func freeTableRange(_ tlb: MMUGather, parentSlot: UnsafeMutablePointer<UInt64>, table: Page,
                                level: Level, _ start: UInt64, _ end: UInt64, floor: UInt64, ceiling: UInt64) {
        var addr = start
        let span: UInt64 = 1 << UInt64(shift(level))
        repeat {
            let next = addressEnd(addr, end, span: span)
            let slot = entry(in: table, level: level, address: addr)
            let e = Entry(rawValue: ptlab_pte_read(slot))
            if e.isPresent, let d = allocator.descriptor(pfn: e.pfn) {
                if level == .pmd {
                    // free_pte_range
                    ptlab_pte_write(slot, 0)
                    tlb.freeTable(Page(d), level: .pte, address: addr)
                    accountTable(.pte, -1)
                } else {
                    freeTableRange(tlb, parentSlot: slot, table: Page(d), level: childLevel(of: level)!,
                                   addr, next, floor: floor, ceiling: ceiling)
                }
            }
            addr = next
        } while addr != end

        let mask = ~(tableSpan(level) - 1)
        let tableStart = start & mask
        if tableStart < floor { return }
        var ceiling = ceiling
        if ceiling != 0 {
            ceiling &= mask
            if ceiling == 0 { return }
        }
        if end &- 1 > ceiling &- 1 { return }
        ptlab_pte_write(parentSlot, 0)
        tlb.freeTable(table, level: level, address: tableStart)
        accountTable(level, -1)
    }
}
