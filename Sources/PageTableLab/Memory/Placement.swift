#if canImport(Glibc)
import Glibc
#endif
internal import CNUMA

extension PageAllocator {
    /// Where the kernel actually put each page, by move_pages(2) in query
    /// mode: a node id, or a negative errno (-ENOENT: not yet faulted in).
    /// This is the proof that "allocated on node N" is more than a label.
    public func residentNodes(of pages: [Page]) -> [Int] {
        guard !pages.isEmpty else { return [] }
        var addrs: [UnsafeMutableRawPointer?] = pages.map { address(of: $0) }
        var status = [Int32](repeating: 0, count: pages.count)
        let rc = addrs.withUnsafeMutableBufferPointer { a in
            status.withUnsafeMutableBufferPointer { s in
                move_pages(0, UInt(pages.count), a.baseAddress, nil, s.baseAddress, 0)
            }
        }
        if rc < 0 { return [Int](repeating: -Int(errno), count: pages.count) }
        return status.map(Int.init)
    }

    /// True when every page sits on the node its descriptor claims. Pages
    /// are touched first, since an untouched page has no node yet.
    public func verifyPlacement(_ pages: [Page]) -> Bool {
        // libnuma's touch is a locked read-modify-write that keeps the
        // contents: a Swift self-assignment is dropped by the optimizer, and
        // release builds then saw every page unfaulted (-ENOENT).
        for page in pages { numa_police_memory(address(of: page), 4096) }
        guard topology.available else { return true }
        return zip(pages, residentNodes(of: pages)).allSatisfy { $0.node == $1 }
    }
}
