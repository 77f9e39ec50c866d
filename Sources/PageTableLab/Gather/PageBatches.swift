internal import CSupport

/// The gather's data-page batches (struct mmu_gather_batch): an 8-entry
/// local batch, then up to MAX_GATHER_BATCH_COUNT batch pages of
/// MAX_GATHER_BATCH entries, each page taken with GFP_NOWAIT. When no batch
/// can be had the caller must flush, which frees what was gathered and
/// reuses the batches.
struct PageBatches {
    /// (PAGE_SIZE - sizeof(struct mmu_gather_batch)) / sizeof(void *).
    static let maxGatherBatch = (4096 - 16) / 8
    /// 10000 / MAX_GATHER_BATCH: bounds the pages a gather pins.
    static let maxGatherBatchCount = 10_000 / maxGatherBatch
    static let localBatch = 8

    let allocator: PageAllocator
    private let local: UnsafeMutablePointer<UnsafeMutablePointer<ptdesc>>
    private var localCount = 0
    /// Batch pages in order; the page memory holds the descriptor pointers.
    private var batchPages: [Page] = []
    private var counts: [Int] = []
    /// -1 while the local batch is active, else an index into batchPages.
    private var active = -1

    init(allocator: PageAllocator) {
        self.allocator = allocator
        local = .allocate(capacity: Self.localBatch)
        batchPages.reserveCapacity(Self.maxGatherBatchCount)
        counts.reserveCapacity(Self.maxGatherBatchCount)
    }

    var batchCount: Int { batchPages.count }

    /// Add a page; true when full and no further batch can be had.
    /// As the kernel does since folio batching, a batch counts as full one
    /// slot early (nr >= max - 1): the last slot is kept for a two-word entry.
    mutating func add(_ page: Page) -> Bool {
        if active < 0 {
            local[localCount] = page.desc
            localCount += 1
            if localCount >= Self.localBatch - 1 { return !nextBatch() }
            return false
        }
        slots(active)[counts[active]] = page.desc
        counts[active] += 1
        if counts[active] >= Self.maxGatherBatch - 1 { return !nextBatch() }
        return false
    }

    /// tlb_next_batch: reuse a batch from an earlier flush, or get a page.
    private mutating func nextBatch() -> Bool {
        if active + 1 < batchPages.count {
            active += 1
            return true
        }
        guard batchPages.count < Self.maxGatherBatchCount,
              let page = try? allocator.alloc(node: .local) else { return false }
        batchPages.append(page)
        counts.append(0)
        active = batchPages.count - 1
        return true
    }

    private func slots(_ index: Int) -> UnsafeMutablePointer<UnsafeMutablePointer<ptdesc>> {
        allocator.address(of: batchPages[index]).assumingMemoryBound(to: UnsafeMutablePointer<ptdesc>.self) + 2
    }

    /// tlb_batch_pages_flush: free every gathered page; batches stay for reuse.
    mutating func freeAll() -> Int {
        var freed = 0
        for i in 0..<localCount { freed += release(local[i]) }
        localCount = 0
        for b in batchPages.indices {
            let s = slots(b)
            for i in 0..<counts[b] { freed += release(s[i]) }
            counts[b] = 0
        }
        active = -1
        return freed
    }

    private func release(_ desc: UnsafeMutablePointer<ptdesc>) -> Int {
        PageTables.release(Page(desc), allocator: allocator) ? 1 : 0
    }

    /// tlb_batch_list_free: give the batch pages back.
    mutating func releaseBatchPages() {
        for page in batchPages { PageTables.release(page, allocator: allocator) }
        batchPages.removeAll(keepingCapacity: true)
        counts.removeAll(keepingCapacity: true)
        local.deallocate()
    }
}
