internal import CSupport

/// struct mmu_table_batch: one page of table pointers freed together. The
/// kernel's header is an rcu_head (16 bytes) and `nr`, so a page holds
/// MAX_TABLE_BATCH = (4096 - 24) / 8 = 509 tables. The lab keeps the same
/// layout and count, but queues the batch on the batch page's own
/// descriptor head (liburcu's head is larger than the kernel's), so nothing
/// is allocated to free it.
public struct TableBatch {
    static let maxTableBatch = (4096 - 24) / 8

    /// The batch page, whose descriptor's rcu_head a policy may queue.
    public let page: Page
    let slots: UnsafeMutablePointer<UnsafeMutablePointer<ptdesc>>

    init(page: Page, allocator: PageAllocator) {
        self.page = page
        let base = allocator.address(of: page).assumingMemoryBound(to: UInt64.self)
        base[0] = 0
        slots = UnsafeMutableRawPointer(base + 3).assumingMemoryBound(to: UnsafeMutablePointer<ptdesc>.self)
    }

    /// The batch on `page`, as an RCU callback queued on `page.rcuHead`
    /// finds it again.
    public init(existing page: Page, allocator: PageAllocator) {
        self.page = page
        let base = allocator.address(of: page).assumingMemoryBound(to: UInt64.self)
        slots = UnsafeMutableRawPointer(base + 3).assumingMemoryBound(to: UnsafeMutablePointer<ptdesc>.self)
    }

    private var header: UnsafeMutablePointer<UInt64> {
        UnsafeMutableRawPointer(slots).assumingMemoryBound(to: UInt64.self) - 3
    }

    public var count: Int { Int(header[0]) }

    public subscript(_ i: Int) -> Page {
        precondition(i >= 0 && i < count, "table \(i) of a batch of \(count)")
        return Page(slots[i])
    }

    /// Append; true when the batch is now full.
    func append(_ table: Page) -> Bool {
        slots[count] = table.desc
        header[0] += 1
        return count == Self.maxTableBatch
    }

    /// __tlb_remove_table_free: pagetable_dtor_free for every table, then
    /// the batch page.
    public func free(allocator: PageAllocator) {
        let n = count
        for i in 0..<n {
            // The descriptors were written by another CPU a grace period
            // ago: ask for them a few tables ahead of their free.
            if i + Self.prefetchDepth < n { ptlab_ptdesc_prefetch_first_line(slots[i + Self.prefetchDepth]) }
            PageTables.dtorFree(Page(slots[i]), allocator: allocator)
        }
        release(allocator: allocator)
    }

    private static let prefetchDepth = 8

    /// The batch page alone back to the allocator.
    public func release(allocator: PageAllocator) {
        PageTables.release(page, allocator: allocator)
    }
}

extension MMUGather {
    /// tlb_remove_table: offer a table unlinked at flush generation
    /// `unlinkedAt` to the profile's policy, and batch it for after the
    /// flush unless the policy took it.
    @inline(__always)
    func removeTable(_ table: Page, unlinkedAt: UInt64) {
        guard batchesEveryTable || mm.profile.tableFree.removeTable(table, gather: self) == .batch else { return }
        guard PageTables.markDeferred(table) else { return }
        stats.tablesQueued += 1
        if tableBatch == nil && !openTableBatch() {
            removeTableOne(table, unlinkedAt: unlinkedAt)
            return
        }
        if unlinkedAt != batchRunGeneration {
            batchRunGeneration = unlinkedAt
            batchRunStart = tableBatch!.count
        }
        if tableBatch!.append(table) { tableFlush() }
    }

    /// A page for a new batch, taken as GFP_NOWAIT takes it: false, and
    /// tlb_remove_table_one for the table, when there is none.
    @inline(never)
    private func openTableBatch() -> Bool {
        guard !mm.profile.failBatchAllocation, let page = try? mm.allocator.alloc(node: .local) else { return false }
        tableBatch = TableBatch(page: page, allocator: mm.allocator)
        batchRunStart = 0
        return true
    }

    /// tlb_table_invalidate: tables that a hardware walker may have cached
    /// must be flushed out of its paging-structure caches before they go.
    public func tableInvalidate() {
        flushTLBOnly()
    }

    /// tlb_table_flush: flush, then hand the batch to the policy.
    func tableFlush() {
        guard let batch = tableBatch else { return }
        tableInvalidate()
        checkFlushed(batch)
        tableBatch = nil
        mm.profile.tableFree.freeBatch(batch, gather: self)
    }

    /// Count tables about to be handed to a free path although no flush has
    /// happened since their unlink: a missing-flush bug made visible. Only
    /// the batch's last run (see batchRunGeneration) can be unflushed, and
    /// it is when the flush generation is still the one it was unlinked at.
    private func checkFlushed(_ batch: TableBatch) {
        let runLength = batch.count - batchRunStart
        if runLength > 0 && batchRunGeneration == mm.tlb.currentGeneration {
            stats.freedBeforeFlush += runLength
        }
    }

    /// tlb_remove_table_one: no page for a batch.
    private func removeTableOne(_ table: Page, unlinkedAt: UInt64) {
        stats.batchFallbacks += 1
        mm.profile.tableFree.freeOne(table, gather: self)
        if unlinkedAt == mm.tlb.currentGeneration { stats.freedBeforeFlush += 1 }
    }

    /// call_rcu on `page`'s own head, counted in this gather's stats. An
    /// updater that is not a registered thread (RCU.call's only error)
    /// cannot be inside a read section either, so it waits out a grace
    /// period itself and runs the callback.
    public func callRCU(on page: Page, bytes: UInt64, _ callback: RCUCallback) {
        callRCU(on: page, bytes: bytes, unsafeBitCast(callback, to: CRCUCallback.self))
    }

    func callRCU(on page: Page, bytes: UInt64, _ callback: CRCUCallback) {
        do {
            try RCU.call(ptlab_ptdesc_rcu_head(page.desc), bytes: bytes, callback)
            stats.rcuCallbacks += 1
        } catch {
            RCU.synchronizeUnchecked()
            callback(ptlab_ptdesc_rcu_head(page.desc))
        }
    }
}

/// tlb_remove_table_rcu: after the grace period, dtor and free every table
/// of the batch, then the batch page. Runs on liburcu's worker.
func tlbRemoveTableRCU(_ head: UnsafeMutablePointer<ptlab_rcu_head>?) {
    guard let head else { return }
    _ = PageAllocator.withLoaded { TableBatch(existing: Page(ptlab_ptdesc_of_rcu(head)), allocator: $0).free(allocator: $0) }
}

/// __tlb_remove_table_one_rcu: one table on its own rcu_head.
func tlbRemoveTableOneRCU(_ head: UnsafeMutablePointer<ptlab_rcu_head>?) {
    guard let head else { return }
    _ = PageAllocator.withLoaded { PageTables.dtorFree(Page(ptlab_ptdesc_of_rcu(head)), allocator: $0) }
}
