#if canImport(Glibc)
import Glibc
#endif
internal import CNUMA
internal import CSupport

/// The buddy algorithm over one node's free area: one doubly linked list of
/// free blocks per order, threaded through the descriptors (PFN + 1, 0 for
/// none), so freeing allocates nothing. Called with the zone lock held.
extension PageAllocator {
    /// Run `body` under node `index`'s zone->lock.
    @inline(__always)
    func withZoneLocked<R>(_ index: Int, _ body: (Zone) -> R) -> R {
        let zone = zones + index
        ptlab_zone_lock(zone)
        defer { ptlab_zone_unlock(zone) }
        return body(zone)
    }

    func takeBlock(_ zone: Zone, node index: Int, order: Int) -> UnsafeMutablePointer<ptdesc>? {
        let heads = ptlab_zone_free_heads(zone)!
        var found = order
        while found <= maxOrder && heads[found] == 0 { found += 1 }
        if found > maxOrder {
            guard mapChunk(zone, node: index) else { return nil }
            found = maxOrder
        }
        let block = memmap + Int(heads[found] - 1)
        unlink(zone, block, order: found)
        // Split: the upper halves go back, smallest last.
        while found > order {
            found -= 1
            let upper = block + (1 << found)
            link(zone, upper, order: found)
        }
        block.pointee.order = UInt8(order)
        return block
    }

    /// takeBlock without bringing up a new chunk: nil unless a block of at
    /// least `order` is already free.
    func takeBlockIfFree(_ zone: Zone, node index: Int, order: Int) -> UnsafeMutablePointer<ptdesc>? {
        let heads = ptlab_zone_free_heads(zone)!
        guard order <= maxOrder, (order...maxOrder).contains(where: { heads[$0] != 0 }) else { return nil }
        return takeBlock(zone, node: index, order: order)
    }

    func putBlock(_ zone: Zone, _ d: UnsafeMutablePointer<ptdesc>, order: Int) {
        var block = d
        var order = order
        while order < maxOrder {
            let buddyPFN = block.pointee.pfn ^ (1 << UInt32(order))
            let buddy = memmap + Int(buddyPFN)
            guard buddy.pointee.on_free_list != 0, Int(buddy.pointee.order) == order else { break }
            unlink(zone, buddy, order: order)
            if buddy < block { block = buddy }
            order += 1
        }
        link(zone, block, order: order)
    }

    private func link(_ zone: Zone, _ d: UnsafeMutablePointer<ptdesc>, order: Int) {
        let heads = ptlab_zone_free_heads(zone)!
        let head = heads[order]
        d.pointee.buddy_prev = 0
        d.pointee.buddy_next = head
        if head != 0 { memmap[Int(head - 1)].buddy_prev = d.pointee.pfn + 1 }
        heads[order] = d.pointee.pfn + 1
        d.pointee.order = UInt8(order)
        d.pointee.on_free_list = 1
    }

    private func unlink(_ zone: Zone, _ d: UnsafeMutablePointer<ptdesc>, order: Int) {
        let next = d.pointee.buddy_next, prev = d.pointee.buddy_prev
        if prev != 0 { memmap[Int(prev - 1)].buddy_next = next } else { ptlab_zone_free_heads(zone)![order] = next }
        if next != 0 { memmap[Int(next - 1)].buddy_prev = prev }
        d.pointee.buddy_next = 0
        d.pointee.buddy_prev = 0
        d.pointee.on_free_list = 0
    }

    /// Bring up the node's next chunk: real memory bound to the node, and
    /// descriptors for its frames. Only on the allocation side.
    private func mapChunk(_ zone: Zone, node index: Int) -> Bool {
        let mapped = Int(ptlab_zone_chunks_mapped(zone))
        guard mapped < pagesPerNode / chunkPages else { return false }
        let nodeID = nodes[index].id
        let bytes = chunkPages << 12
        guard let base = acquireChunk(bytes: bytes, node: nodeID) else { return false }
        let firstPFN = Int(nodes[index].pfnBase) + mapped * chunkPages
        chunkBases[firstPFN >> maxOrder] = base
        for i in 0..<chunkPages {
            let d = memmap + firstPFN + i
            d.pointee.pfn = UInt32(firstPFN + i)
            d.pointee.node = UInt16(nodeID)
            ptlab_page_set_state(d, PTLAB_PAGE_FREE.rawValue)
        }
        ptlab_asan_poison_pages(base, bytes)
        ptlab_zone_add_chunk(zone)
        link(zone, memmap + firstPFN, order: maxOrder)
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
