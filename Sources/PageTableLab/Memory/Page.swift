internal import CSupport

/// A page: its descriptor in the memmap (struct page / ptdesc). For a
/// compound allocation this is the head page. The descriptor itself is the
/// lab's C struct and stays inside the library; what a page says about
/// itself is read through these properties.
public struct Page: Hashable, @unchecked Sendable {
    let desc: UnsafeMutablePointer<ptdesc>

    init(_ desc: UnsafeMutablePointer<ptdesc>) { self.desc = desc }

    /// The page whose descriptor embeds `head` (container_of): the way back
    /// from an RCU callback queued on `rcuHead`.
    public init(embedding head: RCUHead) { desc = ptlab_ptdesc_of_rcu(head.raw) }

    /// The rcu_head every page descriptor embeds (ptdesc->pt_rcu_head), free
    /// for whoever owns the page to queue it with `RCU.call`.
    public var rcuHead: RCUHead { RCUHead(ptlab_ptdesc_rcu_head(desc)) }

    public var pfn: UInt32 { desc.pointee.pfn }
    public var node: Int { Int(desc.pointee.node) }
    public var order: Int { Int(desc.pointee.order) }
    public var bytes: Int { 4096 << order }
    public var state: PageState { PageState(rawValue: ptlab_page_state(desc)) ?? .tail }
    /// Bumped at every free: a walker that saw a table at one generation and
    /// finds another has raced with a free.
    public var generation: UInt32 { ptlab_page_generation(desc) }
    public var isAllocated: Bool { state == .allocated }

    /// nth_page: the `n`th 4 KiB frame of this (compound) page.
    public func subpage(_ n: Int) -> Page {
        precondition(n >= 0 && n < 1 << order, "subpage \(n) of an order-\(order) page")
        return Page(desc + n)
    }
}

/// Where a page is in its life.
public enum PageState: UInt32, Sendable, CaseIterable {
    /// On a free list or a per-thread cache.
    case free = 0
    /// Handed out.
    case allocated = 1
    /// Queued for a deferred free (RCU or work): still allocated to readers
    /// that found it before it was unlinked.
    case deferred = 2
    /// A tail page of a compound allocation.
    case tail = 3
}
