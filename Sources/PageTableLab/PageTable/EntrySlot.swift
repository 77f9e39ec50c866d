internal import CSupport

/// A pte_t * (or pmd_t *, …): one entry of a page table in memory. Walkers
/// and updaters on other threads read and write the same word, so every
/// access is a single atomic load, store or exchange, as READ_ONCE /
/// WRITE_ONCE / xchg are in the kernel: a torn entry would be a PFN that
/// never existed.
///
/// A store or exchange here is the bare set_pte: it does not count in the
/// data page's mapcount, which the mm's own paths keep as they map and
/// unmap. So a data page mapped by a store here and later zapped is a bad
/// page state (`Integrity.badPageStates`), as a page mapped without
/// folio_add_*_rmap would be in the kernel.
public struct EntrySlot: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<UInt64>

    init(_ pointer: UnsafeMutablePointer<UInt64>) { self.pointer = pointer }

    /// ptep_get.
    public func load() -> Entry { Entry(rawValue: ptlab_pte_read(pointer)) }
    /// set_pte.
    public func store(_ entry: Entry) { ptlab_pte_write(pointer, entry.rawValue) }
    /// ptep_get_and_clear and friends: the old entry.
    @discardableResult
    public func exchange(_ entry: Entry) -> Entry { Entry(rawValue: ptlab_pte_xchg(pointer, entry.rawValue)) }
}

extension MM {
    /// The entry of `table` (a table of `level`) that maps `address`.
    public func slot(in table: Page, level: Level, address: UInt64) -> EntrySlot {
        EntrySlot(entry(in: table, level: level, address: address))
    }

    /// Entry `index` (0..<512) of `table`.
    public func slot(in table: Page, index: Int) -> EntrySlot {
        precondition((0..<512).contains(index), "entry index \(index) outside 0..<512")
        return EntrySlot(allocator.address(of: table).assumingMemoryBound(to: UInt64.self) + index)
    }
}
