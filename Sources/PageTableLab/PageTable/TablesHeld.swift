internal import CSupport

extension MM {
    /// The bytes of user page tables this mm really holds: every PUD, PMD
    /// and PTE table linked below the PGD's user half, and the PTE tables
    /// deposited with anonymous huge PMDs. VmPTE (`pgtablesBytes`) must
    /// equal it whenever no updater is running: a difference is a table
    /// accounted and lost, or linked twice, by a racing update.
    public var tableBytesHeld: Int {
        var tables = 0
        countTables(in: pgd, level: .pgd, base: 0, into: &tables)
        tables += deposits.withLock { $0.values.reduce(0) { $0 + $1.count } }
        return tables * 4096
    }

    private func countTables(in table: Page, level: Level, base: UInt64, into tables: inout Int) {
        guard let child = childLevel(of: level) else { return }
        let span = UInt64(1) << UInt64(shift(level))
        for i in 0..<512 {
            let address = base + UInt64(i) * span
            guard address < taskSize else { break }
            let e = Entry(rawValue: ptlab_pte_read(entry(in: table, level: level, address: address)))
            guard e.isPresent, !(child == .pte && e.isHugeLeaf), let d = allocator.descriptor(pfn: e.pfn) else { continue }
            if child != .p4d { tables += 1 }
            countTables(in: Page(d), level: child, base: address, into: &tables)
        }
    }
}
