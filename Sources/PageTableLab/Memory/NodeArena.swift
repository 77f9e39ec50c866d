internal import CSupport
import Synchronization

/// One node: where its frames start and its vmstat-named NUMA counters. Its
/// free area and lock are a `struct ptlab_zone` the allocator holds, off
/// this class so that the freeing paths never retain it.
final class NodeArena: Sendable {
    let id: Int
    let index: Int
    let pfnBase: UInt32
    let numaMiss = Atomic<Int>(0)
    let numaForeign = Atomic<Int>(0)

    init(id: Int, index: Int, pfnBase: UInt32) {
        self.id = id
        self.index = index
        self.pfnBase = pfnBase
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

/// A node's `struct ptlab_zone`: its free area and zone->lock.
typealias Zone = UnsafeMutablePointer<ptlab_zone>
