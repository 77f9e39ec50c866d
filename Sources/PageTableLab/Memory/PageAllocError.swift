/// What can go wrong between a caller and the page allocator. Every case
/// names the page or node, so a report can point at the culprit.
public enum PageAllocError: Error, Equatable, CustomStringConvertible {
    case unknownNode(Int, known: [Int])
    case orderTooLarge(order: Int, max: Int)
    case outOfMemory(order: Int, node: Int)
    case pfnOutOfRange(pfn: UInt64, limit: UInt64)
    case doubleFree(pfn: UInt32)
    case tailPageFree(pfn: UInt32)
    case notAllocated(pfn: UInt32, state: UInt32)
    /// free_pages_prepare's "Bad page state ... nonzero mapcount": user
    /// entries still map the page (or a page of the compound one freed).
    case stillMapped(pfn: UInt32, mapcount: Int)
    case alreadyLoaded
    case invalidParameter(String)

    public var description: String {
        switch self {
        case .unknownNode(let n, let known): "unknown NUMA node \(n) (nodes: \(known.map(String.init).joined(separator: ",")))"
        case .orderTooLarge(let o, let max): "order \(o) is larger than the largest block, order \(max)"
        case .outOfMemory(let o, let n):
            "out of memory: no order-\(o) block on node \(n) or any fallback node (each node's arena holds node_budget_pages)"
        case .pfnOutOfRange(let p, let limit): "PFN \(p) is out of range (memmap holds \(limit) frames)"
        case .doubleFree(let p): "double free of PFN \(p)"
        case .tailPageFree(let p): "PFN \(p) is a tail page of a compound allocation; free its head"
        case .notAllocated(let p, let s): "PFN \(p) is not allocated (state \(s))"
        case .stillMapped(let p, let m): "bad page state: PFN \(p) freed while \(m) user entries still map it (nonzero mapcount)"
        case .alreadyLoaded: "a page allocator is already loaded (one memmap per process, like the kernel's)"
        case .invalidParameter(let s): "invalid allocator parameter: \(s)"
        }
    }
}
