internal import CSupport

/// struct mmu_table_batch: one page of table pointers freed by one RCU
/// callback. The kernel's header is an rcu_head (16 bytes) and `nr`, so a
/// page holds MAX_TABLE_BATCH = (4096 - 24) / 8 = 509 tables. The lab keeps
/// the same layout and count, but queues the batch on the batch page's own
/// descriptor head (liburcu's head is larger than the kernel's), so nothing
/// is allocated to free it.
struct TableBatch {
    static let maxTableBatch = (4096 - 24) / 8

    let page: Page
    let slots: UnsafeMutablePointer<UnsafeMutablePointer<ptdesc>>

    init(page: Page, allocator: PageAllocator) {
        self.page = page
        let base = allocator.address(of: page).assumingMemoryBound(to: UInt64.self)
        base[0] = 0
        slots = UnsafeMutableRawPointer(base + 3).assumingMemoryBound(to: UnsafeMutablePointer<ptdesc>.self)
    }

    /// Recover the batch from the page an RCU callback is handed.
    init(existing page: Page, allocator: PageAllocator) {
        self.page = page
        let base = allocator.address(of: page).assumingMemoryBound(to: UInt64.self)
        slots = UnsafeMutableRawPointer(base + 3).assumingMemoryBound(to: UnsafeMutablePointer<ptdesc>.self)
    }

    private var header: UnsafeMutablePointer<UInt64> {
        UnsafeMutableRawPointer(slots).assumingMemoryBound(to: UInt64.self) - 3
    }

    var count: Int { Int(header[0]) }

    /// Append; true when the batch is now full.
    func append(_ table: Page) -> Bool {
        slots[count] = table.desc
        header[0] += 1
        return count == Self.maxTableBatch
    }
}

extension MMUGather {
    /// tlb_remove_table: queue an unlinked table for freeing after the flush
    /// and a grace period.
    func removeTable(_ table: Page) {
        switch mm.profile.tableFree {
        case .immediate:
            // The bug being modelled: no flush, no grace period.
            stats.freedBeforeFlush += 1
            PageTables.dtorFree(table, allocator: mm.allocator)
            return
        case .rcu, .noFlush, .noRCU:
            break
        }
        guard PageTables.markDeferred(table) else { return }
        stats.tablesQueued += 1
        if tableBatch == nil {
            guard !mm.profile.failBatchAllocation,
                  let page = try? mm.allocator.alloc(node: .local) else {
                // The bug of the no-invalidate fallback: no flush first.
                if mm.profile.batchFallback != .noInvalidate { tableInvalidate() }
                removeTableOne(table)
                return
            }
            tableBatch = TableBatch(page: page, allocator: mm.allocator)
        }
        if tableBatch!.append(table) { tableFlush() }
    }

    /// tlb_table_invalidate: tables that a hardware walker may have cached
    /// must be flushed out of its paging-structure caches before they go.
    func tableInvalidate() {
        flushTLBOnly()
    }

    /// tlb_table_flush: flush, then one call_rcu for the whole batch (or,
    /// without RCU table freeing, free it now: the flush was the only wait).
    func tableFlush() {
        guard let batch = tableBatch else { return }
        tableInvalidate()
        checkFlushed(batch)
        tableBatch = nil
        if mm.profile.tableFree == .noRCU {
            freeTableBatch(batch.page, allocator: mm.allocator)
            return
        }
        queueRCU(batch.page, bytes: UInt64(4096 * (batch.count + 1)), callback: tlbRemoveTableRCU)
    }

    /// Count tables about to be handed to a free path although no flush has
    /// happened since their unlink: a missing-flush bug made visible.
    private func checkFlushed(_ batch: TableBatch) {
        let now = mm.tlb.currentGeneration
        for i in 0..<batch.count where batch.slots[i].pointee.tlb_gen > now {
            stats.freedBeforeFlush += 1
        }
    }

    func queueRCU(_ page: Page, bytes: UInt64, callback: CRCUCallback) {
        do {
            try RCU.call(ptlab_ptdesc_rcu_head(page.desc), bytes: bytes, callback)
            stats.rcuCallbacks += 1
        } catch {
            // The updater is not a registered thread (RCU.call's only
            // error): it cannot be inside a read section either, so it can
            // wait out a grace period itself and free.
            RCU.synchronizeUnchecked()
            callback(ptlab_ptdesc_rcu_head(page.desc))
        }
    }

    /// tlb_remove_table_one: no page for a batch.
    func removeTableOne(_ table: Page) {
        stats.batchFallbacks += 1
        if table.desc.pointee.tlb_gen > mm.tlb.currentGeneration { stats.freedBeforeFlush += 1 }
        if mm.profile.tableFree == .noRCU {
            // No RCU table freeing at all: tables go with the pages, after
            // the flush just made.
            PageTables.dtorFree(table, allocator: mm.allocator)
            return
        }
        switch mm.profile.batchFallback {
        case .rcuOne:
            queueRCU(table, bytes: 4096, callback: tlbRemoveTableOneRCU)
        case .ipiSync:
            mm.tlb.syncOne()
            PageTables.dtorFree(table, allocator: mm.allocator)
        case .synchronize, .noInvalidate:
            do {
                try RCU.synchronize()
            } catch {
                // Inside a read section the wait would wait for itself:
                // defer the free instead of making it unprotected.
                queueRCU(table, bytes: 4096, callback: tlbRemoveTableOneRCU)
                return
            }
            PageTables.dtorFree(table, allocator: mm.allocator)
        }
    }
}

/// tlb_remove_table_rcu: after the grace period, dtor and free every table
/// of the batch, then the batch page. Runs on liburcu's worker.
func tlbRemoveTableRCU(_ head: UnsafeMutablePointer<ptlab_rcu_head>?) {
    guard let head else { return }
    _ = PageAllocator.withLoaded { freeTableBatch(Page(ptlab_ptdesc_of_rcu(head)), allocator: $0) }
}

/// __tlb_remove_table for every table of the batch on `page`, then the page.
@inline(__always)
func freeTableBatch(_ page: Page, allocator: PageAllocator) {
    let batch = TableBatch(existing: page, allocator: allocator)
    for i in 0..<batch.count { PageTables.dtorFree(Page(batch.slots[i]), allocator: allocator) }
    PageTables.release(page, allocator: allocator)
}

/// __tlb_remove_table_one_rcu: one table on its own rcu_head.
func tlbRemoveTableOneRCU(_ head: UnsafeMutablePointer<ptlab_rcu_head>?) {
    guard let head else { return }
    _ = PageAllocator.withLoaded { PageTables.dtorFree(Page(ptlab_ptdesc_of_rcu(head)), allocator: $0) }
}
