import CSupport

/// A page: a pointer to its descriptor in the memmap (struct page / ptdesc).
/// For a compound allocation this is the head page.
public struct Page: Hashable, @unchecked Sendable {
    public let desc: UnsafeMutablePointer<ptdesc>

    @inlinable public init(_ desc: UnsafeMutablePointer<ptdesc>) { self.desc = desc }

    @inlinable public var pfn: UInt32 { desc.pointee.pfn }
    @inlinable public var node: Int { Int(desc.pointee.node) }
    @inlinable public var order: Int { Int(desc.pointee.order) }
    @inlinable public var bytes: Int { 4096 << order }
    @inlinable public var state: UInt32 { ptlab_page_state(desc) }
    @inlinable public var generation: UInt32 { ptlab_page_generation(desc) }
    @inlinable public var isAllocated: Bool { state == PTLAB_PAGE_ALLOCATED.rawValue }
}
