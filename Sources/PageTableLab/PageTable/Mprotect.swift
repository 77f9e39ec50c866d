internal import CSupport

/// What mprotect may grant: the trace's `none`, `r` and `rw`.
public enum Protection: String, Sendable, CaseIterable, Codable {
    case none
    case r
    case rw

    var flags: VMFlags {
        switch self {
        case .none: []
        case .r: .read
        case .rw: .readWrite
        }
    }

    /// What a VMA's flags give the entries mapping it (vm_page_prot).
    init(_ flags: VMFlags) {
        self = flags.contains(.write) ? .rw : flags.contains(.read) ? .r : .none
    }
}

extension MM {
    /// mprotect (mprotect_fixup + change_protection): under the mmap write
    /// lock, split the VMAs at the edges and merge what the new flags allow,
    /// then rewrite the entries in place. No table is allocated or freed,
    /// but later unmaps see the new VMA boundaries as floor and ceiling, and
    /// PT_RECLAIM needs one VMA to cover a whole table. A huge PMD the range
    /// cuts is split; one it covers keeps its folio with the new protection.
    /// Like the kernel, it stops at a hole (ENOMEM) after what came before.
    public func mprotect(address: UInt64, length: UInt64, protection: Protection) throws(MMError) {
        try validate("mprotect", address, length)
        let end = address + length
        let hole: UInt64? = withWriteLock(vmasOf: [address..<end], merging: .backedAs(address..<end)) {
            let (slices, splits, hole) = vmaTree.withLock { tree -> ([VMA], [UInt64], UInt64?) in
                let hole = tree.covers(address, end) ? nil : firstHole(tree, address, end)
                let upTo = hole ?? end
                let change = { (vma: inout VMA) in
                    vma.flags.remove(.readWrite)
                    vma.flags.formUnion(protection.flags)
                }
                // mprotect_fixup leaves a VMA whose flags stay the same
                // alone: no split, no change_protection (so no huge PMD
                // split either).
                let changing = tree.clipped(address, upTo).filter { vma in
                    var changed = vma
                    change(&changed)
                    return changed.flags != vma.flags
                }
                let splits = tree.modify(address, upTo, change)
                return (changing.flatMap { tree.clipped($0.start, $0.end) }, splits, hole)
            }
            splitHugePMDs(at: splits)
            for vma in slices { changeProtection(vma, protection) }
            if !slices.isEmpty {
                tlb.flush()
                invalidateSecondaryTLBs(start: address, end: hole ?? end)
            }
            return hole
        }
        if let hole { throw .notMapped(address: hole) }
    }

    /// change_protection over one VMA slice.
    private func changeProtection(_ vma: VMA, _ protection: Protection) {
        var address = vma.start
        while address < vma.end {
            let next = addressEnd(address, vma.end, span: Self.pmdSize)
            guard let (pmdTable, slot) = findPMD(address) else {
                address = next
                continue
            }
            let pmd = Entry(rawValue: ptlab_pte_read(slot))
            if pmd.isHugeLeaf {
                if next - address == Self.pmdSize {
                    lockPTL(pmdTable)
                    ptlab_pte_write(slot, Self.protected(Entry(rawValue: ptlab_pte_read(slot)), protection).rawValue)
                    ptlab_ptl_unlock(pmdTable.desc)
                    address = next
                    continue
                }
                splitHugePMD(pmdTable: pmdTable, slot: slot, address: address, vma: vma)
            }
            if Entry(rawValue: ptlab_pte_read(slot)).isPresent {
                _ = withPTEOffsetMapLock(slot) { table in
                    var wrote = false
                    for at in stride(from: address, to: next, by: 4096) {
                        let pte = entry(in: table, level: .pte, address: at)
                        let e = Entry(rawValue: ptlab_pte_read(pte))
                        guard e.isMapped else { continue }
                        ptlab_pte_write(pte, Self.protected(e, protection).rawValue)
                        wrote = true
                    }
                    if wrote { noteWrite(to: table, under: slot) }
                }
            }
            address = next
        }
    }

    /// An entry with `protection`: PROT_NONE keeps the mapping but not the
    /// present bit (_PAGE_PROTNONE), read-only drops R/W.
    static func protected(_ e: Entry, _ protection: Protection) -> Entry {
        var raw = e.rawValue & ~Entry.Flags([.present, .protNone, .writable]).rawValue
        switch protection {
        case .none: raw |= Entry.protNone.rawValue
        case .r: raw |= Entry.present.rawValue
        case .rw: raw |= Entry.Flags([.present, .writable]).rawValue
        }
        return Entry(rawValue: raw)
    }

    /// The PMD table and PMD entry slot for `address`, if the tables above
    /// exist (no allocation).
    func findPMD(_ address: UInt64) -> (Page, UnsafeMutablePointer<UInt64>)? {
        var table = pgd
        var level = Level.pgd
        while level != .pmd {
            let slot = entry(in: table, level: level, address: address)
            let e = Entry(rawValue: ptlab_pte_read(slot))
            guard e.isPresent, let d = allocator.descriptor(pfn: e.pfn) else { return nil }
            table = Page(d)
            level = childLevel(of: level)!
        }
        return (table, entry(in: table, level: .pmd, address: address))
    }
}
