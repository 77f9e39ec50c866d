import PageTableLab

/// The scheme x86 had before RCU table freeing, kept by someone who forgot
/// pte_offset_map: free the batch the moment the gather has flushed.
///
/// Unsafe. By then the hardware walkers are gone, and the flush's IPI
/// waits out GUP-fast, which walks with IRQs off. But pte_offset_map walks
/// under rcu_read_lock alone with IRQs on: it takes the IPI mid-walk and
/// reads on in a table that is already free. Such a walker may hold the
/// mmap read lock alone, which MADV_DONTNEED holds too, and with PT_RECLAIM
/// (6.14) DONTNEED frees the PTE tables it empties: only a grace period
/// waits for the walker.
public struct FreeAfterFlush: TableFreePolicy {
    public init() {}

    public var name: String { "free-after-flush" }

    public func freeBatch(_ batch: TableBatch, gather: MMUGather) {
        batch.free(allocator: gather.mm.allocator)
    }

    public func freeOne(_ table: Page, gather: MMUGather) {
        gather.tableInvalidate()
        PageTables.dtorFree(table, allocator: gather.mm.allocator)
    }
}
