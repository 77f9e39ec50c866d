import PageTableLab

/// A table-freeing scheme for an architecture whose page-table descriptor
/// has no room for an rcu_head, so that it cannot call_rcu: it waits for
/// readers itself, one synchronize_rcu for every 64 tables of the batch,
/// and frees those 64 when the wait returns.
///
/// Safe: when `freeBatch` runs, the gather has flushed every CPU's TLB and
/// told the IOMMU (tlb_table_invalidate), so no hardware walker can reach
/// the tables; the software walkers that still can (GUP-fast,
/// pte_offset_map) walk inside rcu_read_lock, and synchronize_rcu returns
/// only after every reader that began before it has left. The price is
/// the updater's: it sleeps for grace periods where call_rcu would let it
/// go on, and the tables stay allocated meanwhile.
public struct SynchronizeEvery64: TableFreePolicy {
    public static let tablesPerGracePeriod = 64

    public init() {}

    public var name: String { "synchronize-64" }

    // removeTable keeps its default: every table goes into the gather's
    // batch, which reaches freeBatch after the flush.

    public func freeBatch(_ batch: TableBatch, gather: MMUGather) {
        let allocator = gather.mm.allocator
        var first = 0
        while first < batch.count {
            let end = min(first + Self.tablesPerGracePeriod, batch.count)
            synchronizeRCU()
            for i in first..<end { PageTables.dtorFree(batch[i], allocator: allocator) }
            first = end
        }
        batch.release(allocator: allocator)
    }

    /// No page could be had for a batch (tlb_remove_table_one): nothing has
    /// flushed this table out of the paging-structure caches yet, so
    /// invalidate first, then wait and free.
    public func freeOne(_ table: Page, gather: MMUGather) {
        gather.tableInvalidate()
        synchronizeRCU()
        PageTables.dtorFree(table, allocator: gather.mm.allocator)
    }

    /// synchronize_rcu. Its one error is being called inside a read-side
    /// critical section, where it would wait for itself; a gather never
    /// runs there (its updater holds the mmap lock), so that is a bug in
    /// the caller, and freeing anyway would free under a reader: stop.
    private func synchronizeRCU() {
        do {
            try RCU.synchronize()
        } catch {
            fatalError("\(name): \(error)")
        }
    }
}
