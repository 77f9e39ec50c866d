// Memory/: the page allocator, the memmap, and struct page.
//
// What it models: mm/page_alloc.c's buddy allocator (free_area per order,
// __rmqueue_smallest's splits, __free_one_page's merges, zone->lock) with
// its per-CPU pagesets (struct per_cpu_pages, rmqueue_pcplist,
// free_pcppages_bulk), one memmap of descriptors indexed by PFN
// (pfn_to_page), compound allocations and split_page, NUMA placement with
// fallback in distance order (the zonelist), the counters mm/vmstat.c names
// (numa_hit, numa_miss, numa_foreign, nr_page_table_pages), and free-page
// poisoning. The memory is real and node-bound: each node's budget
// (node_budget_pages) is brought up as the allocator needs it, in naturally
// aligned chunks of 2^chunk_order pages bound with numa_tonode_memory, as
// numa_alloc_onnode does. A syscall per 4 KiB page would cost 7-9 us.
//
// How the pieces fit. An order-0 allocation pops this thread's pcp list
// (a thread stands for a CPU), refilled from the node's buddy lists 64
// pages at a time under zone->lock; higher orders come from the buddy lists
// directly and are marked compound (head, tail pages). A node that has
// nothing left falls back to the next nearest, counted as numa_foreign on
// the node asked for and numa_miss on the node that gave. A free moves the
// descriptor from ALLOCATED (or DEFERRED: queued for an RCU or work free)
// to FREE with one compare-and-swap, bumps its generation, optionally
// poisons the page, and pushes it on this thread's pcp list, which drains
// 64 back to the buddy lists when it reaches its high mark (512) and
// everything at thread exit.
//
// Where it differs from the kernel, on purpose. Which frames move between
// a pcp list and the buddy lists: a refill takes one whole 64-page block
// when one is free (the kernel's rmqueue_bulk takes pages smallest order
// first, so leftover fragments go out before a block is split), and a
// drain gives back the newest pages, as a whole block where they form one
// (the kernel's free_pcppages_bulk gives back the oldest). The counts are
// the kernel's; the frames are not, and nothing the lab compares with the
// kernel sees frames. The kernel's order costs the steady gather a third
// to a half of its rate here, each refill unlinking and splitting page by
// page under the lock (BENCHMARKS.md, "Round by round"). The pcp geometry
// is also the pre-6.7 fixed one: no PCP auto-tuning of batch and high.
//
// The rules:
//  - One memmap per process, as in the kernel: a second PageAllocator
//    cannot be loaded. RCU callbacks reach the loaded one through
//    PageAllocator.withLoaded, lent, not retained.
//  - Nothing from free() down allocates: it runs on liburcu's
//    worker and in the deferred kernel-table work. Free lists are threaded
//    through the descriptors, pcp lists live in static TLS, counters are
//    per-thread deltas that readers sum (vm_stat_diff style).
//  - zone->lock is taken only to refill, drain, hand out or take back a
//    compound block, and bring up a chunk (allocation side only).
//  - A bad free (double free, tail page, never allocated) is an error that
//    names the PFN; paths that cannot fail count it in Integrity instead.
//  - Every free changes the state and the generation, so a walker that
//    recorded them sees a racing free with or without page_poison.
//
// Files:
//   PageAllocator.swift   load/unload, alloc, free, split_page, pcp refill and drain, counters
//   Buddy.swift           one node's free area; chunk bring-up and release
//   Page.swift            Page (struct page / ptdesc as the API sees it), PageState
//   PagePoison.swift      the poison byte and its fill
//   NUMATopology.swift    nodes, CPUs and distances from libnuma; numa_node_id; fallback order
//   NodeArena.swift       per-node counters, NodeStats with vmstat/numastat names
//   Placement.swift       move_pages(2): where the kernel really put a page
//   PageAllocError.swift  errors, each naming its page or node
// The descriptor itself, struct ptdesc, is C: CSupport/include/CSupport/ptdesc.h.

#if canImport(Glibc)
import Glibc
#endif
internal import CNUMA
internal import CSupport
import Synchronization

/// Where an allocation should come from.
public enum NodePreference: Sendable, Equatable {
    /// The node of the CPU the calling thread runs on (numa_node_id()).
    case local
    /// A given node; exhausted, the allocation falls back by distance.
    case node(Int)
}

/// The lab's buddy allocator over real NUMA memory.
///
/// Each node's budget is reserved in chunks from `numa_alloc_onnode` as it
/// is needed (a syscall per 4 KiB page would be a thousand times too slow),
/// and the memmap holds one `ptdesc` per frame, as `struct page` does. Order-0
/// pages go through a per-thread cache like the kernel's per-cpu pageset;
/// larger orders, and cache refills and drains, take the node's lock.
///
/// There is one memmap per process, like the kernel's: a second allocator
/// cannot be made while one is loaded.
public final class PageAllocator: @unchecked Sendable {
    public struct Parameters: Sendable, Equatable, Codable {
        /// Pages each node may hand out before falling back to another node.
        public var nodeBudgetPages: Int = 65_536
        /// Log2 of the pages per chunk taken from libnuma; also the largest order.
        public var chunkOrder: Int = 10
        /// Fill freed pages with 0x6b, so stale readers see poison. Off by
        /// default, as the kernel's page_poison= is: a production kernel
        /// (this machine's has no CONFIG_PAGE_POISONING) frees a page
        /// without writing it, and a 4 KiB write per free is most of what a
        /// flood of deferred frees costs (BENCHMARKS.md). Detection does not
        /// depend on it: walkers check the descriptor's state and
        /// generation, which every free changes.
        public var poison: Bool = false
        public init() {}

        /// The largest `chunkOrder`: the buddy's orders stop there.
        public static let maxChunkOrder = Int(PTLAB_MAX_ORDER)

        /// The rules between the parameters themselves, which loading an
        /// allocator applies; a caller taking them from a user can check
        /// them before anything runs.
        public func validate() throws(PageAllocError) {
            guard chunkOrder >= 0, chunkOrder <= Self.maxChunkOrder else {
                throw .invalidParameter("chunk_order \(chunkOrder) is outside 0...\(Self.maxChunkOrder)")
            }
            guard nodeBudgetPages >= 1 << chunkOrder, nodeBudgetPages % (1 << chunkOrder) == 0 else {
                throw .invalidParameter("node_budget_pages \(nodeBudgetPages) must be a positive multiple of 2^chunk_order (\(1 << chunkOrder))")
            }
        }
    }

    public let topology: NUMATopology
    public let parameters: Parameters
    public let maxOrder: Int
    public let pagesPerNode: Int
    public let frameCount: Int
    let chunkPages: Int
    let memmap: UnsafeMutablePointer<ptdesc>
    let chunkBases: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    let nodes: [NodeArena]
    /// One node: numa_node_id() and a PFN's node need no lookup.
    let singleNode: Bool
    /// Each node's free area and lock, indexed like `nodes`.
    let zones: UnsafeMutablePointer<ptlab_zone>
    /// Node id → index into `nodes` (and the per-thread cache slots).
    let nodeIndexByID: [Int]
    let epoch: UInt64
    /// Pages moved between the per-thread cache and a node at a time: the
    /// kernel's pcp->batch (zone_batchsize) is 63 on any zone of a GiB or
    /// more.
    static let pcpBatchOrder = 6
    static let pcpBatch = 1 << pcpBatchOrder

    private static let loaded = Atomic<Bool>(false)
    private static let epochs = Atomic<UInt64>(0)
    /// The allocator loaded now (module_init), if any.
    public internal(set) nonisolated(unsafe) static var current: PageAllocator? {
        didSet { ptlab_set_loaded_allocator(current.map { Unmanaged.passUnretained($0).toOpaque() }) }
    }

    /// Run `body` with the loaded allocator, lent rather than retained: the
    /// way in for RCU callbacks (see ptlab_loaded_allocator). `current`
    /// keeps it alive, and unload waits for every callback before clearing
    /// it. False when none is loaded.
    @inline(__always)
    public static func withLoaded(_ body: (PageAllocator) -> Void) -> Bool {
        guard let p = ptlab_loaded_allocator() else { return false }
        Unmanaged<PageAllocator>.fromOpaque(p)._withUnsafeGuaranteedRef(body)
        return true
    }

    public init(parameters: Parameters = Parameters(), topology: NUMATopology = .current) throws(PageAllocError) {
        try parameters.validate()
        let chunkPages = 1 << parameters.chunkOrder
        guard topology.nodes.count <= Int(PTLAB_PCP_MAX_NODES) else {
            throw .invalidParameter("\(topology.nodes.count) nodes; at most \(PTLAB_PCP_MAX_NODES) supported")
        }
        guard parameters.nodeBudgetPages * topology.nodes.count < Int(UInt32.max) else {
            throw .invalidParameter("node_budget_pages too large for 32-bit PFNs")
        }
        guard !Self.loaded.exchange(true, ordering: .acquiringAndReleasing) else { throw .alreadyLoaded }

        self.topology = topology
        self.parameters = parameters
        self.chunkPages = chunkPages
        self.maxOrder = parameters.chunkOrder
        self.pagesPerNode = parameters.nodeBudgetPages
        self.frameCount = pagesPerNode * topology.nodes.count
        self.epoch = Self.epochs.add(1, ordering: .relaxed).newValue

        // The memmap is reserved, not touched: the kernel faults its zero
        // pages in as chunks are brought up.
        let memmapBytes = MemoryLayout<ptdesc>.stride * frameCount
        let raw = mmap(nil, memmapBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        precondition(raw != MAP_FAILED, "cannot reserve the memmap (\(memmapBytes) bytes)")
        memmap = raw!.bindMemory(to: ptdesc.self, capacity: frameCount)
        let chunkCount = frameCount / chunkPages
        chunkBases = .allocate(capacity: chunkCount)
        chunkBases.initialize(repeating: nil, count: chunkCount)

        var byID = [Int](repeating: -1, count: (topology.nodeIDs.max() ?? 0) + 1)
        var arenas: [NodeArena] = []
        for (index, node) in topology.nodes.enumerated() {
            byID[node.id] = index
            arenas.append(NodeArena(id: node.id, index: index, pfnBase: UInt32(index * pagesPerNode)))
        }
        nodes = arenas
        singleNode = arenas.count == 1
        // Line-aligned, so that one node's lock never shares a line with another's.
        zones = UnsafeMutableRawPointer.allocate(byteCount: MemoryLayout<ptlab_zone>.stride * arenas.count, alignment: 64)
            .bindMemory(to: ptlab_zone.self, capacity: arenas.count)
        for index in arenas.indices { ptlab_zone_init(zones + index) }
        nodeIndexByID = byID

        ptlab_pcp_reset_counters()
        Self.current = self
        ptlab_pcp_set_drain_hook(pcpDrainOnThreadExit)
    }

    /// Give every chunk back. The caller (the lab's unload) has already
    /// waited for every deferred free: nothing may point into the arena.
    public func unload() {
        guard Self.current === self else { return }
        ptlab_pcp_set_drain_hook(nil)
        Self.current = nil
        for chunk in 0..<(frameCount / chunkPages) {
            if let base = chunkBases[chunk] {
                releaseChunk(base, bytes: chunkPages << 12)
                chunkBases[chunk] = nil
            }
        }
        munmap(memmap, MemoryLayout<ptdesc>.stride * frameCount)
        chunkBases.deallocate()
        UnsafeMutableRawPointer(zones).deallocate()
        Self.loaded.store(false, ordering: .releasing)
    }

    // MARK: - frame numbers

    /// The descriptor of `pfn`, if the frame exists and its chunk is up.
    public func page(pfn: UInt64) throws(PageAllocError) -> Page {
        guard pfn < UInt64(frameCount) else { throw .pfnOutOfRange(pfn: pfn, limit: UInt64(frameCount)) }
        guard chunkBase(pfn: UInt32(pfn)) != nil else { throw .pfnOutOfRange(pfn: pfn, limit: UInt64(frameCount)) }
        return Page(memmap + Int(pfn))
    }

    /// PFN → the page's memory; nil for a frame outside the memmap, so a
    /// garbage entry read by a walker is caught rather than dereferenced.
    @inline(__always)
    public func address(pfn: UInt64) -> UnsafeMutableRawPointer? {
        guard pfn < UInt64(frameCount), let base = chunkBase(pfn: UInt32(pfn)) else { return nil }
        return base + (Int(pfn) & (chunkPages - 1)) << 12
    }

    @inline(__always)
    public func address(of page: Page) -> UnsafeMutableRawPointer {
        address(pfn: UInt64(page.pfn))!
    }

    /// pfn_to_page; nil for a frame outside the memmap (a garbage PFN read
    /// from a stale entry).
    public func pfnToPage(_ pfn: UInt64) -> Page? { descriptor(pfn: pfn).map(Page.init) }

    @inline(__always)
    func descriptor(pfn: UInt64) -> UnsafeMutablePointer<ptdesc>? {
        pfn < UInt64(frameCount) ? memmap + Int(pfn) : nil
    }

    func chunkBase(pfn: UInt32) -> UnsafeMutableRawPointer? {
        chunkBases[Int(pfn) >> maxOrder]
    }

    /// page_to_pfn: the descriptor's place in the memmap.
    @inline(__always)
    func pfn(of d: UnsafeMutablePointer<ptdesc>) -> UInt32 { UInt32(truncatingIfNeeded: d - memmap) }

    /// The node a frame belongs to, from its PFN alone: each node's frames
    /// are one range of `pagesPerNode`.
    @inline(__always)
    func nodeIndex(ofPFN pfn: UInt32) -> Int { singleNode ? 0 : Int(pfn) / pagesPerNode }

    func nodeIndex(ofID id: Int) throws(PageAllocError) -> Int {
        guard id >= 0, id < nodeIndexByID.count, nodeIndexByID[id] >= 0 else {
            throw .unknownNode(id, known: topology.nodeIDs)
        }
        return nodeIndexByID[id]
    }

    // MARK: - allocation

    /// Allocate 2^order naturally aligned pages. `zero` is __GFP_ZERO.
    ///
    /// A local order-0 page on a one-node machine, from this thread's
    /// cache, is inlined into the caller: it is most of what allocating a
    /// page table costs, and the general path's frame (typed errors, the
    /// zonelist fallback) would be paid by every table.
    @inline(__always)
    public func alloc(order: Int = 0, node: NodePreference = .local, zero: Bool = false) throws(PageAllocError) -> Page {
        if order == 0, singleNode, case .local = node, let d = allocCached(0) {
            return finishHit(d, node: 0, order: 0, zero: zero)
        }
        return try allocGeneral(order: order, node: node, zero: zero)
    }

    @inline(never)
    private func allocGeneral(order: Int, node: NodePreference, zero: Bool) throws(PageAllocError) -> Page {
        guard order >= 0, order <= maxOrder else { throw .orderTooLarge(order: order, max: maxOrder) }
        let preferredID: Int
        let preferred: Int
        switch node {
        case .local where singleNode:
            // numa_node_id() on a one-node machine, without asking the CPU.
            preferredID = nodes[0].id
            preferred = 0
        case .local:
            preferredID = topology.currentNode()
            preferred = try nodeIndex(ofID: preferredID)
        case .node(let id):
            preferredID = id
            preferred = try nodeIndex(ofID: id)
        }
        if let d = allocFrom(preferred, order: order) {
            return finishHit(d, node: preferred, order: order, zero: zero)
        }
        for otherID in topology.fallbackOrder(from: preferredID) {
            let other = try nodeIndex(ofID: otherID)
            if let d = allocFrom(other, order: order) {
                nodes[preferred].numaForeign.add(1, ordering: .relaxed)
                nodes[other].numaMiss.add(1, ordering: .relaxed)
                return finishAlloc(d, order: order, zero: zero)
            }
        }
        throw .outOfMemory(order: order, node: preferredID)
    }

    /// A page from the node asked for: NUMA_HIT, counted per thread like
    /// the kernel's per-cpu event (a shared atomic here cost more than the
    /// rest of the fast path together), then handed out.
    @inline(__always)
    private func finishHit(_ d: UnsafeMutablePointer<ptdesc>, node index: Int, order: Int, zero: Bool) -> Page {
        ptlab_pcp_count_numa_hit(ptlab_this_pcp(), Int32(index))
        return finishAlloc(d, order: order, zero: zero)
    }

    @inline(__always)
    private func finishAlloc(_ d: UnsafeMutablePointer<ptdesc>, order: Int, zero: Bool) -> Page {
        let page = Page(d)
        if ptlab_asan_enabled() != 0 { ptlab_asan_unpoison_pages(address(of: page), 4096 << order) }
        if zero { memset(address(of: page), 0, 4096 << order) }
        return page
    }

    /// An order-0 page from this thread's cache, inline: it is most of
    /// what allocating a page table costs. Refills and compound pages go
    /// out of line.
    @inline(__always)
    private func allocFrom(_ index: Int, order: Int) -> UnsafeMutablePointer<ptdesc>? {
        guard order == 0, let d = allocCached(index) else { return allocFromSlow(thisPCP(), index, order: order) }
        return d
    }

    /// An order-0 page of node `index` from this thread's cache; nil when
    /// it is empty.
    @inline(__always)
    private func allocCached(_ index: Int) -> UnsafeMutablePointer<ptdesc>? {
        let pcp = thisPCP()
        guard case let cached = ptlab_pcp_pop(pcp, Int32(index)), cached != 0 else { return nil }
        return takeCached(pcp, index, pfn: cached - 1)
    }

    /// A cached page handed out. A refill hands out a block's pages without
    /// touching their descriptors; each becomes order 0 here, on a line the
    /// caller is about to write anyway.
    @inline(__always)
    private func takeCached(_ pcp: UnsafeMutablePointer<ptlab_pcp>, _ index: Int, pfn: UInt32) -> UnsafeMutablePointer<ptdesc> {
        let d = memmap + Int(pfn)
        d.pointee.order = 0
        ptlab_page_set_state(d, PTLAB_PAGE_ALLOCATED.rawValue)
        ptlab_pcp_add_allocated(pcp, Int32(index), 1)
        return d
    }

    @inline(never)
    private func allocFromSlow(_ pcp: UnsafeMutablePointer<ptlab_pcp>, _ index: Int, order: Int) -> UnsafeMutablePointer<ptdesc>? {
        if order == 0 {
            refill(pcp, node: index)
            let cached = ptlab_pcp_pop(pcp, Int32(index))
            return cached == 0 ? nil : takeCached(pcp, index, pfn: cached - 1)
        }
        guard let d = withZoneLocked(index, { takeBlock($0, node: index, order: order) }) else {
            return nil
        }
        markCompound(d, order: order)
        ptlab_pcp_add_allocated(pcp, Int32(index), Int64(1 << order))
        return d
    }

    private func markCompound(_ d: UnsafeMutablePointer<ptdesc>, order: Int) {
        d.pointee.order = UInt8(order)
        ptlab_page_set_flags(d, PTLAB_PG_HEAD)
        for tail in 1..<(1 << order) {
            d[tail].order = UInt8(order)
            ptlab_page_set_state(d + tail, PTLAB_PAGE_TAIL.rawValue)
        }
        ptlab_page_set_state(d, PTLAB_PAGE_ALLOCATED.rawValue)
    }

    /// split_page: a compound allocation becomes 2^order order-0 pages,
    /// each allocated and freed on its own from now on (what splitting a
    /// THP's folio leaves behind). The pages stay counted as allocated.
    public func split(_ page: Page) {
        let d = page.desc
        precondition(ptlab_page_state(d) == PTLAB_PAGE_ALLOCATED.rawValue, "split_page of a page that is not allocated")
        guard ptlab_page_flags(d) & PTLAB_PG_HEAD != 0 else { return }
        let order = Int(d.pointee.order)
        ptlab_page_clear_flags(d, PTLAB_PG_HEAD)
        d.pointee.order = 0
        for tail in 1..<(1 << order) {
            d[tail].order = 0
            ptlab_page_set_state(d + tail, PTLAB_PAGE_ALLOCATED.rawValue)
        }
    }

    // MARK: - freeing (no allocation from here down)

    /// Free a page (the head of a compound allocation). A page queued for a
    /// deferred free (state DEFERRED) may be freed by its callback.
    ///
    /// Inlined, with everything but an order-0 page going back to this
    /// thread's cache out of line: it is most of an RCU callback's work, and
    /// a call with its frame was a measurable part of the rest.
    @inline(__always)
    public func free(_ page: Page) throws(PageAllocError) {
        let d = page.desc
        // One compare-and-swap from the state seen, not a guess and a
        // retry: a deferred free would pay two locked instructions.
        var found = ptlab_page_state(d)
        let head = ptlab_page_flags(d) & PTLAB_PG_HEAD != 0
        if found == PTLAB_PAGE_ALLOCATED.rawValue || found == PTLAB_PAGE_DEFERRED.rawValue {
            // free_pages_prepare's "nonzero mapcount": a data page (no
            // table has a level of none) that user entries still map.
            if ptlab_page_level(d) == PTLAB_PT_NONE.rawValue, ptlab_page_mapcount(d) != 0 || head {
                try checkUnmapped(d, head: head)
            }
            found = ptlab_page_transition(d, found, PTLAB_PAGE_FREE.rawValue)
        }
        guard found == PTLAB_PAGE_ALLOCATED.rawValue || found == PTLAB_PAGE_DEFERRED.rawValue else {
            throw freeError(d, found: found)
        }
        // Order, PFN and node without the descriptor's second line, which
        // an RCU callback would otherwise wait for (see struct ptdesc): only
        // a compound head has an order, and the PFN is the address.
        let order = head ? Int(d.pointee.order) : 0
        let pfn = pfn(of: d)
        ptlab_page_retire(d)
        if parameters.poison || ptlab_asan_enabled() != 0 { poisonFreed(pfn: pfn, order: order) }
        let index = nodeIndex(ofPFN: pfn)
        let pcp = thisPCP()
        ptlab_pcp_add_allocated(pcp, Int32(index), -Int64(1 << order))
        guard order == 0 else { return freeCompound(d, order: order, node: index) }
        if ptlab_pcp_push(pcp, Int32(index), pfn) == 0 { drainAndCache(pcp, node: index, pfn: pfn) }
    }

    /// A page, or any page of a compound one, still mapped: the free is
    /// refused (the kernel's bad_page takes such a page out of circulation
    /// too), since the entries that map it would reach its next user.
    @inline(never)
    private func checkUnmapped(_ d: UnsafeMutablePointer<ptdesc>, head: Bool) throws(PageAllocError) {
        let pages = head ? 1 << Int(d.pointee.order) : 1
        for page in d..<d + pages {
            let mapcount = ptlab_page_mapcount(page)
            guard mapcount == 0 else { throw .stillMapped(pfn: pfn(of: page), mapcount: Int(mapcount)) }
        }
    }

    /// The state free() found, as the error it is.
    @inline(never)
    private func freeError(_ d: UnsafeMutablePointer<ptdesc>, found: UInt32) -> PageAllocError {
        switch found {
        case PTLAB_PAGE_FREE.rawValue: .doubleFree(pfn: d.pointee.pfn)
        case PTLAB_PAGE_TAIL.rawValue: .tailPageFree(pfn: d.pointee.pfn)
        default: .notAllocated(pfn: d.pointee.pfn, state: found)
        }
    }

    @inline(never)
    private func poisonFreed(pfn: UInt32, order: Int) {
        if parameters.poison { ptlab_poison_pages(address(pfn: UInt64(pfn)), 4096 << order) }
        ptlab_asan_poison_pages(address(pfn: UInt64(pfn)), 4096 << order)
    }

    @inline(never)
    private func freeCompound(_ d: UnsafeMutablePointer<ptdesc>, order: Int, node index: Int) {
        for tail in 1..<(1 << order) { ptlab_page_set_state(d + tail, PTLAB_PAGE_FREE.rawValue) }
        withZoneLocked(index) { putBlock($0, d, order: order) }
    }

    /// The cache is at its high mark: a batch back to the node, then the page.
    @inline(never)
    private func drainAndCache(_ pcp: UnsafeMutablePointer<ptlab_pcp>, node index: Int, pfn: UInt32) {
        drain(pcp, node: index, count: Self.pcpBatch)
        _ = ptlab_pcp_push(pcp, Int32(index), pfn)
    }

    /// Free by frame number, for callers that hold a PFN (trace tools, tests).
    public func free(pfn: UInt64) throws(PageAllocError) {
        try free(page(pfn: pfn))
    }

    // MARK: - per-thread cache

    @inline(__always)
    private func thisPCP() -> UnsafeMutablePointer<ptlab_pcp> {
        let pcp = ptlab_this_pcp()!
        if pcp.pointee.epoch != epoch {
            // A cache left from an earlier allocator holds frames of an arena
            // that is gone: forget them.
            _ = ptlab_pcp_register()
            ptlab_pcp_forget(pcp, epoch)
        }
        return pcp
    }

    private func refill(_ pcp: UnsafeMutablePointer<ptlab_pcp>, node index: Int) {
        withZoneLocked(index) { zone in
            // A whole block of the batch's order when one is free: one split
            // for the batch, not a split and a relink per page. Its PFNs
            // are counted from its head, highest pushed first so that the
            // cache hands them out in address order: reading each
            // descriptor here would take a cache miss per page under the
            // lock, which the allocation that follows takes anyway.
            if ptlab_pcp_count(pcp, Int32(index)) + UInt32(Self.pcpBatch) <= PTLAB_PCP_HIGH,
               let block = takeBlockIfFree(zone, node: index, order: Self.pcpBatchOrder) {
                _ = ptlab_pcp_push_run(pcp, Int32(index), pfn(of: block), UInt32(Self.pcpBatch))
                return
            }
            for _ in 0..<Self.pcpBatch {
                guard let d = takeBlock(zone, node: index, order: 0) else { break }
                _ = ptlab_pcp_push(pcp, Int32(index), d.pointee.pfn)
            }
        }
    }

    private func drain(_ pcp: UnsafeMutablePointer<ptlab_pcp>, node index: Int, count: Int) {
        withZoneLocked(index) { zone in
            var left = count
            while left > 0 {
                if left >= Self.pcpBatch, maxOrder >= Self.pcpBatchOrder,
                   case let base = ptlab_pcp_take_block(pcp, Int32(index), UInt32(Self.pcpBatchOrder)), base != 0 {
                    putBlock(zone, memmap + Int(base - 1), order: Self.pcpBatchOrder)
                    ptlab_zone_count_pcp_drain(zone, 1)
                    left -= Self.pcpBatch
                    continue
                }
                // No whole block: pages from under the one still filling
                // up, which stays, unless this drain must empty the cache.
                let cached = Int(ptlab_pcp_count(pcp, Int32(index)))
                let partial = Int(ptlab_pcp_partial_block(pcp, Int32(index), UInt32(Self.pcpBatchOrder)))
                let pfn = ptlab_pcp_pop_below(pcp, Int32(index), UInt32(min(partial, max(0, cached - left))))
                guard pfn != 0 else { break }
                putBlock(zone, memmap + Int(pfn - 1), order: 0)
                ptlab_zone_count_pcp_drain(zone, 0)
                left -= 1
            }
        }
    }

    /// What the per-thread caches' drains gave back to node `index`: whole
    /// blocks, and single pages (each a buddy merge of its own).
    func pcpDrains(node index: Int) -> (blocks: UInt64, pages: UInt64) {
        withZoneLocked(index) { (ptlab_zone_pcp_blocks_in($0), ptlab_zone_pcp_pages_in($0)) }
    }

    /// Return every page a dying thread had cached for this allocator.
    fileprivate func drainAll(_ pcp: UnsafeMutablePointer<ptlab_pcp>) {
        guard pcp.pointee.epoch == epoch else { return }
        for index in nodes.indices {
            drain(pcp, node: index, count: Int(PTLAB_PCP_HIGH))
        }
    }

    // MARK: - counters

    /// Pages handed out on each node now (vm_stat_diff summed over threads).
    public func allocatedPages(node id: Int) throws(PageAllocError) -> Int {
        Int(ptlab_pcp_sum_allocated(Int32(try nodeIndex(ofID: id))))
    }

    public func stats(node id: Int) throws(PageAllocError) -> NodeStats {
        let index = try nodeIndex(ofID: id)
        let arena = nodes[index]
        let mapped = withZoneLocked(index) { Int(ptlab_zone_chunks_mapped($0)) } * chunkPages
        let allocated = Int(ptlab_pcp_sum_allocated(Int32(index)))
        return NodeStats(
            node: id, budgetPages: pagesPerNode, mappedPages: mapped,
            allocatedPages: allocated, freePages: pagesPerNode - allocated,
            nrPageTablePages: Int(ptlab_pcp_sum_nr_pagetable(Int32(index))),
            numaHit: Int(ptlab_pcp_sum_numa_hit(Int32(index))),
            numaMiss: arena.numaMiss.load(ordering: .relaxed),
            numaForeign: arena.numaForeign.load(ordering: .relaxed))
    }

    public func stats() -> [NodeStats] {
        topology.nodeIDs.map { try! stats(node: $0) }
    }

    /// Pages allocated across all nodes: zero after a clean unload.
    public var totalAllocatedPages: Int {
        nodes.indices.reduce(0) { $0 + Int(ptlab_pcp_sum_allocated(Int32($1))) }
    }

    /// NR_PAGETABLE: the page-table constructor and destructor account
    /// here, per thread as the kernel's per-cpu vmstat does.
    @inline(__always)
    public func accountPageTable(_ page: Page, delta: Int) {
        ptlab_pcp_add_nr_pagetable(ptlab_pcp_counting(), Int32(nodeIndex(ofPFN: pfn(of: page.desc))), Int64(delta))
    }
}

private func pcpDrainOnThreadExit(_ pcp: UnsafeMutablePointer<ptlab_pcp>?) {
    guard let pcp, let allocator = PageAllocator.current else { return }
    allocator.drainAll(pcp)
}
