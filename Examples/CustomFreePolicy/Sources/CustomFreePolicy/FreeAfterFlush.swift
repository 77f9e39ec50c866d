import PageTableLab

/// The scheme x86 had before RCU table freeing, kept by someone who forgot
/// pte_offset_map: free the batch the moment the gather has flushed.
///
/// Unsafe. By then the hardware walkers are gone, and the flush's IPI
/// waits out GUP-fast, which walks with IRQs off. But pte_offset_map walks
/// under rcu_read_lock alone with IRQs on: it takes the IPI mid-walk and
/// reads on in a table that is already free. Since 6.5 such a walker can
/// hold only the mmap read lock beside MADV_DONTNEED, which with PT_RECLAIM
/// frees the PTE tables it empties; only a grace period waits for it.
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
