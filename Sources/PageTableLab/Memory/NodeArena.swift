import Synchronization

/// One node's memory: its buddy free area behind the node lock (the
/// kernel's zone->lock) and its vmstat-named counters.
final class NodeArena: Sendable {
    let id: Int
    let index: Int
    let pfnBase: UInt32
    let area: SpinLocked<FreeArea>
    let numaMiss = Atomic<Int>(0)
    let numaForeign = Atomic<Int>(0)

    init(id: Int, index: Int, pfnBase: UInt32, maxOrder: Int, chunks: Int) {
        self.id = id
        self.index = index
        self.pfnBase = pfnBase
        self.area = SpinLocked(FreeArea(maxOrder: maxOrder, chunkLimit: chunks))
    }
}

/// free_area[]: one doubly linked list of free blocks per order, threaded
/// through the descriptors (PFN + 1, 0 for none), so freeing allocates nothing.
struct FreeArea: ~Copyable {
    var heads: [UInt32]
    var chunksMapped = 0
    let chunkLimit: Int

    init(maxOrder: Int, chunkLimit: Int) {
        heads = [UInt32](repeating: 0, count: maxOrder + 1)
        self.chunkLimit = chunkLimit
    }
}

/// Per-node counters under the kernel's names (/proc/vmstat, numastat).
public struct NodeStats: Sendable, Equatable, Codable {
    public var node: Int
    public var budgetPages: Int
    public var mappedPages: Int
    public var allocatedPages: Int
    public var freePages: Int
    public var nrPageTablePages: Int
    public var numaHit: Int
    public var numaMiss: Int
    public var numaForeign: Int

    enum CodingKeys: String, CodingKey {
        case node
        case budgetPages = "budget_pages"
        case mappedPages = "mapped_pages"
        case allocatedPages = "allocated_pages"
        case freePages = "nr_free_pages"
        case nrPageTablePages = "nr_page_table_pages"
        case numaHit = "numa_hit"
        case numaMiss = "numa_miss"
        case numaForeign = "numa_foreign"
    }
}
