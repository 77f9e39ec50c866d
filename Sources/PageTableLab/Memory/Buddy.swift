#if canImport(Glibc)
import Glibc
#endif
import CNUMA
import CSupport

/// The buddy algorithm over one node's free area. Called with the node lock
/// held; touches only descriptors, never the heap.
extension PageAllocator {
    func takeBlock(_ area: inout FreeArea, node index: Int, order: Int) -> UnsafeMutablePointer<ptdesc>? {
        var found = order
        while found <= maxOrder && area.heads[found] == 0 { found += 1 }
        if found > maxOrder {
            guard mapChunk(&area, node: index) else { return nil }
            found = maxOrder
        }
        let block = memmap + Int(area.heads[found] - 1)
        unlink(&area, block, order: found)
        // Split: the upper halves go back, smallest last.
        while found > order {
            found -= 1
            let upper = block + (1 << found)
            link(&area, upper, order: found)
        }
        block.pointee.order = UInt8(order)
        return block
    }

    /// takeBlock without bringing up a new chunk: nil unless a block of at
    /// least `order` is already free.
    func takeBlockIfFree(_ area: inout FreeArea, node index: Int, order: Int) -> UnsafeMutablePointer<ptdesc>? {
        guard order <= maxOrder, (order...maxOrder).contains(where: { area.heads[$0] != 0 }) else { return nil }
        return takeBlock(&area, node: index, order: order)
    }

    func putBlock(_ area: inout FreeArea, _ d: UnsafeMutablePointer<ptdesc>, order: Int) {
        var block = d
        var order = order
        while order < maxOrder {
            let buddyPFN = block.pointee.pfn ^ (1 << UInt32(order))
            let buddy = memmap + Int(buddyPFN)
            guard buddy.pointee.on_free_list != 0, Int(buddy.pointee.order) == order else { break }
            unlink(&area, buddy, order: order)
            if buddy < block { block = buddy }
            order += 1
        }
        link(&area, block, order: order)
    }

    private func link(_ area: inout FreeArea, _ d: UnsafeMutablePointer<ptdesc>, order: Int) {
        let head = area.heads[order]
        d.pointee.buddy_prev = 0
        d.pointee.buddy_next = head
        if head != 0 { memmap[Int(head - 1)].buddy_prev = d.pointee.pfn + 1 }
        area.heads[order] = d.pointee.pfn + 1
        d.pointee.order = UInt8(order)
        d.pointee.on_free_list = 1
    }

    private func unlink(_ area: inout FreeArea, _ d: UnsafeMutablePointer<ptdesc>, order: Int) {
        let next = d.pointee.buddy_next, prev = d.pointee.buddy_prev
        if prev != 0 { memmap[Int(prev - 1)].buddy_next = next } else { area.heads[order] = next }
        if next != 0 { memmap[Int(next - 1)].buddy_prev = prev }
        d.pointee.buddy_next = 0
        d.pointee.buddy_prev = 0
        d.pointee.on_free_list = 0
    }

    /// Bring up the node's next chunk: real memory bound to the node, and
    /// descriptors for its frames. Only on the allocation side.
    private func mapChunk(_ area: inout FreeArea, node index: Int) -> Bool {
        guard area.chunksMapped < area.chunkLimit else { return false }
        let nodeID = nodes[index].id
        let bytes = chunkPages << 12
        guard let base = acquireChunk(bytes: bytes, node: nodeID) else { return false }
        let firstPFN = Int(nodes[index].pfnBase) + area.chunksMapped * chunkPages
        chunkBases[firstPFN >> maxOrder] = base
        for i in 0..<chunkPages {
            let d = memmap + firstPFN + i
            d.pointee.pfn = UInt32(firstPFN + i)
            d.pointee.node = UInt16(nodeID)
            ptlab_page_set_state(d, PTLAB_PAGE_FREE.rawValue)
        }
        ptlab_asan_poison_pages(base, bytes)
        area.chunksMapped += 1
        link(&area, memmap + firstPFN, order: maxOrder)
        return true
    }

    /// A chunk aligned to its own size, so that an order-n block's address
    /// is as aligned as its PFN (as compound pages are in the kernel's direct
    /// map): reserve twice the size, trim both ends, then bind the rest to
    /// the node as numa_alloc_onnode would (mmap + numa_tonode_memory).
    func acquireChunk(bytes: Int, node: Int) -> UnsafeMutableRawPointer? {
        let reserved = mmap(nil, 2 * bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let reserved, reserved != MAP_FAILED else { return nil }
        let head = Int(bitPattern: reserved) & (bytes - 1) == 0 ? 0 : bytes - Int(bitPattern: reserved) & (bytes - 1)
        let base = reserved + head
        if head > 0 { munmap(reserved, head) }
        munmap(base + bytes, bytes - head)
        if topology.available { numa_tonode_memory(base, bytes, Int32(node)) }
        return base
    }

    func releaseChunk(_ base: UnsafeMutableRawPointer, bytes: Int) {
        ptlab_asan_unpoison_pages(base, bytes)
        if topology.available { numa_free(base, bytes) } else { munmap(base, bytes) }
    }
}
