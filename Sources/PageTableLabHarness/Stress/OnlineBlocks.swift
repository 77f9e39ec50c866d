#if canImport(Glibc)
import PageTableLab
import Glibc
#endif
import Synchronization

/// The direct-map blocks of a kernel-free run as DMA walkers see them. A
/// walker enters a block only while it is online; taking a block offline
/// waits until every walker has left it. Memory offlining moves every user
/// away before hot-remove touches the page tables, and hot-remove relies on
/// that: it queues a table for freeing before it unlinks it.
final class OnlineBlocks: Sendable {
    static let count = 4

    private final class Block: Sendable {
        /// Its direct-map address while online; 0 while offline.
        let address = Atomic<UInt64>(0)
        let users = Atomic<Int>(0)
    }

    private let blocks = (0..<count).map { _ in Block() }

    /// Enter block `i`: its address, or nil when it is offline.
    func enter(_ i: Int) -> UInt64? {
        let b = blocks[i]
        b.users.add(1, ordering: .sequentiallyConsistent)
        let address = b.address.load(ordering: .sequentiallyConsistent)
        if address == 0 { b.users.subtract(1, ordering: .sequentiallyConsistent) }
        return address == 0 ? nil : address
    }

    func leave(_ i: Int) {
        blocks[i].users.subtract(1, ordering: .sequentiallyConsistent)
    }

    func online(_ i: Int, at address: UInt64) {
        blocks[i].address.store(address, ordering: .sequentiallyConsistent)
    }

    /// Take block `i` offline and return once no walker is in it. The
    /// walkers leave after one translation each, so this ends.
    func offline(_ i: Int) {
        let b = blocks[i]
        b.address.store(0, ordering: .sequentiallyConsistent)
        while b.users.load(ordering: .sequentiallyConsistent) > 0 { sched_yield() }
    }
}
