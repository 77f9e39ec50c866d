import CSupport
import Synchronization
import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// The NUMA page allocator: placement, the page state machine, poisoning,
/// per-thread caches under concurrency, buddy alignment, and its errors.
/// One allocator per process: every test loads its own and unloads it.
final class PageAllocatorTests: XCTestCase {
    private func load(budget: Int = 4096, chunkOrder: Int = 8, poison: Bool = true) throws -> PageAllocator {
        var p = PageAllocator.Parameters()
        p.nodeBudgetPages = budget
        p.chunkOrder = chunkOrder
        p.poison = poison
        return try PageAllocator(parameters: p)
    }

    /// "Allocated on node N" must be where the kernel put the memory, which
    /// move_pages(2) reports independently of the allocator's own books.
    func testPagesLandOnTheRequestedNode() throws {
        let allocator = try load()
        defer { allocator.unload() }
        for node in allocator.topology.nodeIDs {
            let pages = try (0..<32).map { _ in try allocator.alloc(node: .node(node)) }
            XCTAssertTrue(pages.allSatisfy { $0.node == node })
            XCTAssertTrue(allocator.verifyPlacement(pages), "a page is not on node \(node)")
            if allocator.topology.available {
                XCTAssertEqual(allocator.residentNodes(of: pages), [Int](repeating: node, count: pages.count))
            }
            for page in pages { try allocator.free(page) }
        }
        XCTAssertEqual(allocator.totalAllocatedPages, 0)
    }

    func testLocalAllocationUsesTheCallingCPUsNode() throws {
        let allocator = try load()
        defer { allocator.unload() }
        let page = try allocator.alloc(node: .local)
        defer { try? allocator.free(page) }
        XCTAssertEqual(page.node, allocator.topology.currentNode())
        XCTAssertEqual(try allocator.stats(node: page.node).numaHit, 1)
    }

    func testDoubleFreeIsAnError() throws {
        let allocator = try load()
        defer { allocator.unload() }
        let page = try allocator.alloc()
        try allocator.free(page)
        XCTAssertThrowsError(try allocator.free(page)) {
            XCTAssertEqual($0 as? PageAllocError, .doubleFree(pfn: page.pfn))
        }
        XCTAssertThrowsError(try allocator.free(pfn: UInt64(page.pfn))) {
            XCTAssertEqual($0 as? PageAllocError, .doubleFree(pfn: page.pfn))
        }
        XCTAssertEqual(allocator.totalAllocatedPages, 0, "a rejected free changed the books")
    }

    func testFreeingATailPageIsAnError() throws {
        let allocator = try load()
        defer { allocator.unload() }
        let head = try allocator.alloc(order: 2)
        let tail = try allocator.page(pfn: UInt64(head.pfn) + 1)
        XCTAssertThrowsError(try allocator.free(tail)) {
            XCTAssertEqual($0 as? PageAllocError, .tailPageFree(pfn: tail.pfn))
        }
        try allocator.free(head)
    }

    /// A stale reader of a freed page must see poison, and a new generation.
    func testFreeingPoisonsAndBumpsTheGeneration() throws {
        let allocator = try load()
        defer { allocator.unload() }
        let page = try allocator.alloc(order: 1, zero: true)
        let bytes = UnsafeMutableRawBufferPointer(start: allocator.address(of: page), count: page.bytes)
        XCTAssertTrue(bytes.allSatisfy { $0 == 0 }, "zero: true gave a dirty page")
        bytes.copyBytes(from: [UInt8](repeating: 0x11, count: page.bytes))
        let generation = page.generation
        try allocator.free(page)
        XCTAssertTrue(bytes.allSatisfy { $0 == UInt8(PTLAB_POISON_FREE) }, "freed page is not poisoned with 0x6b")
        XCTAssertEqual(page.generation, generation &+ 1)
        XCTAssertEqual(page.state, PageState.free)
    }

    /// The free path's fill takes vector stores for aligned whole pages and
    /// memset otherwise: both must leave nothing but poison.
    func testPoisonFillCoversEveryByte() {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 3 * 4096, alignment: 4096)
        defer { buffer.deallocate() }
        for (offset, count) in [(0, 4096), (0, 8192), (1, 4096), (64, 200), (4096, 128)] {
            buffer.initializeMemory(as: UInt8.self, repeating: 0)
            ptlab_poison_pages(buffer.baseAddress! + offset, count)
            for (i, byte) in buffer.enumerated() {
                let inside = i >= offset && i < offset + count
                if byte != (inside ? UInt8(PTLAB_POISON_FREE) : 0) {
                    return XCTFail("fill of \(count) bytes at +\(offset): byte \(i) is \(byte)")
                }
            }
        }
    }

    func testPoisonOffLeavesContents() throws {
        let allocator = try load(poison: false)
        defer { allocator.unload() }
        let page = try allocator.alloc()
        let p = allocator.address(of: page).assumingMemoryBound(to: UInt8.self)
        p.pointee = 0x11
        try allocator.free(page)
        XCTAssertEqual(p.pointee, 0x11)
    }

    /// Freeing resets what a walker checks: level, table flags, owner.
    func testFreeingClearsTheTableIdentity() throws {
        let allocator = try load()
        defer { allocator.unload() }
        let page = try allocator.alloc()
        ptlab_page_set_level(page.desc, PTLAB_PT_PTE.rawValue)
        ptlab_page_set_flags(page.desc, PTLAB_PG_TABLE | PTLAB_PT_KERNEL)
        try allocator.free(page)
        XCTAssertEqual(ptlab_page_level(page.desc), PTLAB_PT_NONE.rawValue)
        XCTAssertEqual(ptlab_page_flags(page.desc), 0)
        XCTAssertNil(page.desc.pointee.pt_mm)
    }

    /// Several threads allocate and free at once through their per-thread
    /// caches and the node lock: no page is handed to two holders, and the
    /// books balance once every thread (and its cache) is gone.
    func testConcurrentAllocFreeBalances() throws {
        let allocator = try load(budget: 8192)
        defer { allocator.unload() }
        let threads = 4, rounds = 200, held = 40
        let failures = FailureCount()
        let workers = (0..<threads).map { t in
            RCUThread {
                let mark = UInt64(t + 1)
                for _ in 0..<rounds {
                    var pages: [Page] = []
                    for i in 0..<held {
                        guard let page = try? allocator.alloc(order: i % 7 == 0 ? 1 : 0) else {
                            failures.count.add(1, ordering: .relaxed)
                            continue
                        }
                        allocator.address(of: page).storeBytes(of: mark, as: UInt64.self)
                        pages.append(page)
                    }
                    for page in pages {
                        // Had another thread been handed the page, its mark would be here.
                        if allocator.address(of: page).load(as: UInt64.self) != mark { failures.count.add(1, ordering: .relaxed) }
                        if (try? allocator.free(page)) == nil { failures.count.add(1, ordering: .relaxed) }
                    }
                }
            }
        }
        workers.forEach { $0.join() }
        XCTAssertEqual(failures.count.load(ordering: .relaxed), 0)
        XCTAssertEqual(allocator.totalAllocatedPages, 0, "allocated pages do not return to 0")
        for stats in allocator.stats() {
            XCTAssertEqual(stats.allocatedPages, 0)
            XCTAssertEqual(stats.freePages, stats.budgetPages)
        }
    }

    /// The per-thread cache takes and gives back whole blocks when it can
    /// (one split, one insertion): every page of a node handed out once,
    /// freed by another thread whose exit drains its cache, must merge back
    /// into the node's one top-order block. A page lost, duplicated, or
    /// inserted at the wrong order leaves the block unavailable.
    func testCacheBatchesComeBackAsWholeBlocks() throws {
        let allocator = try load(budget: 256, chunkOrder: 8)
        defer { allocator.unload() }
        let node = allocator.topology.nodeIDs[0]
        let pages = try (0..<256).map { _ in try allocator.alloc(node: .node(node)) }
        XCTAssertEqual(Set(pages.map(\.pfn)).count, 256, "a page was handed out twice")
        let failures = FailureCount()
        let freer = RCUThread {
            for page in pages where (try? allocator.free(page)) == nil { failures.count.add(1, ordering: .relaxed) }
        }
        freer.join()
        XCTAssertEqual(failures.count.load(ordering: .relaxed), 0)
        let whole = try allocator.alloc(order: 8, node: .node(node))
        XCTAssertEqual(whole.pfn % 256, 0)
        try allocator.free(whole)
        XCTAssertEqual(allocator.totalAllocatedPages, 0)
    }

    /// A drain finds a whole block among the cache's newest entries even
    /// when the cache held pages from before, so that the run of frees no
    /// longer lines up with the top of the cache: here five older pages,
    /// then frames 32...50 freed in order. Looking only at the newest 16
    /// (35...50) found no block, and every drain of such a run merged page
    /// by page.
    func testTakeBlockFindsTheWholeBlockBelowAPartialOne() {
        var pcp = ptlab_pcp()
        for pfn: UInt32 in [7, 100, 3, 900, 12] + Array(32...50) { XCTAssertEqual(ptlab_pcp_push(&pcp, 0, pfn), 1) }
        XCTAssertEqual(ptlab_pcp_take_block(&pcp, 0, 4), 32 + 1, "frames 32...47, as PFN + 1")
        var left: [UInt32] = []
        while case let pfn = ptlab_pcp_pop(&pcp, 0), pfn != 0 { left.append(pfn - 1) }
        XCTAssertEqual(Array(left.reversed()), [7, 100, 3, 900, 12, 48, 49, 50], "the rest, in order")

        // A whole block in any order is one too.
        for pfn: UInt32 in Array((64...79).reversed()) { _ = ptlab_pcp_push(&pcp, 0, pfn) }
        XCTAssertEqual(ptlab_pcp_take_block(&pcp, 0, 4), 64 + 1)
        XCTAssertEqual(ptlab_pcp_count(&pcp, 0), 0)

        // No whole block in either window: nothing is taken.
        for pfn: UInt32 in [7, 100, 3, 900, 12] + Array(33...50) { _ = ptlab_pcp_push(&pcp, 0, pfn) }
        XCTAssertEqual(ptlab_pcp_take_block(&pcp, 0, 4), 0)
        XCTAssertEqual(ptlab_pcp_count(&pcp, 0), 23)
    }

    /// A cache nearly full of older pages leaves room for one batch of a
    /// run, and a run freed in order from a frame four past a block
    /// boundary meets every drain four pages out of step: neither window
    /// holds a whole block. The drain that finds none gives back pages from
    /// under the block still filling up, so the next one finds it whole;
    /// taking the newest batch instead, every drain of the run went page by
    /// page.
    func testDrainsFallIntoStepWithAnUnalignedRun() throws {
        let batch = PageAllocator.pcpBatch, high = Int(PTLAB_PCP_HIGH)
        let budget = 4 * high
        let allocator = try load(budget: budget, chunkOrder: budget.trailingZeroBitCount, poison: false)
        defer { allocator.unload() }
        let node = allocator.topology.nodeIDs[0]
        let pages = try (0..<budget).map { _ in try allocator.alloc(node: .node(node)) }.sorted { $0.pfn < $1.pfn }
        XCTAssertEqual(pages.map(\.pfn), Array(0..<UInt32(budget)), "a fresh node hands out frames in order")
        let olderRange = (budget - batch - (high - batch))..<(budget - batch), runRange = 4..<(4 + 10 * batch)
        let older = Array(pages[olderRange]), run = Array(pages[runRange])
        let drains = Mutex<(blocks: UInt64, pages: UInt64)>((0, 0))
        let failures = FailureCount()
        let freer = RCUThread {
            for page in older + run where (try? allocator.free(page)) == nil { failures.count.add(1, ordering: .relaxed) }
            let seen = allocator.pcpDrains(node: 0)
            drains.withLock { $0 = seen }
        }
        freer.join()
        XCTAssertEqual(failures.count.load(ordering: .relaxed), 0)
        let seen = drains.withLock { $0 }
        XCTAssertLessThanOrEqual(seen.pages, UInt64(batch), "one drain page by page, to fall into step")
        XCTAssertGreaterThanOrEqual(seen.blocks, 7, "then whole blocks")
        for (i, page) in pages.enumerated() where !olderRange.contains(i) && !runRange.contains(i) { try allocator.free(page) }
        XCTAssertEqual(allocator.totalAllocatedPages, 0)
    }

    /// An order-n block is naturally aligned, by frame number and by address,
    /// as the kernel's compound pages are.
    func testOrderNBlocksAreNaturallyAligned() throws {
        let allocator = try load(budget: 4096, chunkOrder: 8)
        defer { allocator.unload() }
        var pages: [Page] = []
        for order in 0...allocator.maxOrder {
            // An order-0 page first, so that the next block is not simply
            // the start of a chunk.
            pages.append(try allocator.alloc(order: 0))
            let page = try allocator.alloc(order: order)
            pages.append(page)
            XCTAssertEqual(page.order, order)
            XCTAssertEqual(Int(page.pfn) % (1 << order), 0, "order-\(order) block at PFN \(page.pfn)")
            XCTAssertEqual(Int(bitPattern: allocator.address(of: page)) % (4096 << order), 0,
                           "order-\(order) block at an address aligned to less than its size")
            for tail in 1..<(1 << order) {
                XCTAssertEqual(ptlab_page_state(page.desc + tail), PTLAB_PAGE_TAIL.rawValue)
            }
        }
        XCTAssertThrowsError(try allocator.alloc(order: allocator.maxOrder + 1)) {
            XCTAssertEqual($0 as? PageAllocError, .orderTooLarge(order: allocator.maxOrder + 1, max: allocator.maxOrder))
        }
        for page in pages { try allocator.free(page) }
        XCTAssertEqual(allocator.totalAllocatedPages, 0)
    }

    func testUnknownNodeIsAnError() throws {
        let allocator = try load()
        defer { allocator.unload() }
        let missing = (allocator.topology.nodeIDs.max() ?? 0) + 1
        for node in [missing, -1] {
            XCTAssertThrowsError(try allocator.alloc(node: .node(node))) {
                XCTAssertEqual($0 as? PageAllocError, .unknownNode(node, known: allocator.topology.nodeIDs))
            }
        }
    }

    /// An exhausted node falls back to the nearest other node; with one node
    /// there is nowhere to go and the allocation fails cleanly.
    func testExhaustedNodeFallsBackOrFails() throws {
        let allocator = try load(budget: 32, chunkOrder: 4)
        defer { allocator.unload() }
        let node = allocator.topology.nodeIDs[0]
        let pages = try (0..<32).map { _ in try allocator.alloc(node: .node(node)) }
        XCTAssertTrue(pages.allSatisfy { $0.node == node })
        if let nearest = allocator.topology.fallbackOrder(from: node).first {
            let page = try allocator.alloc(node: .node(node))
            XCTAssertEqual(page.node, nearest)
            XCTAssertEqual(try allocator.stats(node: node).numaForeign, 1)
            XCTAssertEqual(try allocator.stats(node: nearest).numaMiss, 1)
            try allocator.free(page)
        } else {
            XCTAssertThrowsError(try allocator.alloc(node: .node(node))) {
                XCTAssertEqual($0 as? PageAllocError, .outOfMemory(order: 0, node: node))
            }
        }
        for page in pages { try allocator.free(page) }
        XCTAssertEqual(allocator.totalAllocatedPages, 0)
    }

    func testPFNOutOfRangeIsAnError() throws {
        let allocator = try load()
        defer { allocator.unload() }
        let limit = UInt64(allocator.frameCount)
        for pfn in [limit, limit + 1, UInt64.max] {
            XCTAssertThrowsError(try allocator.page(pfn: pfn)) {
                XCTAssertEqual($0 as? PageAllocError, .pfnOutOfRange(pfn: pfn, limit: limit))
            }
            XCTAssertThrowsError(try allocator.free(pfn: pfn)) {
                XCTAssertEqual($0 as? PageAllocError, .pfnOutOfRange(pfn: pfn, limit: limit))
            }
            XCTAssertNil(allocator.address(pfn: pfn))
            XCTAssertNil(allocator.descriptor(pfn: pfn))
        }
    }

    func testPFNTranslationRoundTrips() throws {
        let allocator = try load()
        defer { allocator.unload() }
        let page = try allocator.alloc()
        defer { try? allocator.free(page) }
        XCTAssertEqual(try allocator.page(pfn: UInt64(page.pfn)), page)
        XCTAssertEqual(allocator.address(pfn: UInt64(page.pfn)), allocator.address(of: page))
        XCTAssertEqual(allocator.descriptor(pfn: UInt64(page.pfn)), page.desc)
    }

    /// One memmap per process, like the kernel's.
    func testSecondAllocatorIsRefusedUntilUnload() throws {
        let allocator = try load()
        XCTAssertThrowsError(try load()) {
            XCTAssertEqual($0 as? PageAllocError, .alreadyLoaded)
        }
        allocator.unload()
        try load().unload()
    }

    func testBadParametersAreErrors() {
        XCTAssertThrowsError(try load(budget: 100, chunkOrder: 4)) {
            guard case .invalidParameter(let what) = $0 as? PageAllocError else { return XCTFail("\($0)") }
            XCTAssertTrue(what.contains("node_budget_pages"), what)
        }
        XCTAssertThrowsError(try load(chunkOrder: 19)) {
            guard case .invalidParameter(let what) = $0 as? PageAllocError else { return XCTFail("\($0)") }
            XCTAssertTrue(what.contains("chunk_order"), what)
        }
    }
}

private final class FailureCount: Sendable {
    let count = Atomic<Int>(0)
}
