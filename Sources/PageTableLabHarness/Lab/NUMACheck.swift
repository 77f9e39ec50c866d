import PageTableLab
import Synchronization

/// Proof, on the machine the lab runs on, that "allocated on node N" is where
/// the kernel put the memory — asked of the kernel itself with move_pages(2),
/// never taken from the lab's own labels:
///
/// 1. placement: pages allocated for each node are resident on that node;
/// 2. page tables: an mm whose tables follow the faulting CPU (`.local`),
///    faulted by a thread pinned to a CPU of the last node, has every table
///    (and data page) on that node, as the kernel's pagetable_alloc does;
/// 3. fallback: exhausting a node's budget makes further allocations come
///    from the nearest other node, counted as numa_foreign on the node asked
///    for and numa_miss on the node that gave;
/// 4. counters: after every step, each node's allocated_pages,
///    nr_page_table_pages, numa_hit, numa_miss and numa_foreign equal a
///    ledger kept from the pages the check holds.
///
/// On one node, checks 1, 2 and 4 still run (they then prove less) and the
/// fallback is reported as not applicable, never as passed.
public enum NUMACheck {
    public struct Parameters: Sendable, Equatable, Codable {
        /// Small, so that exhausting a node is quick: one chunk per node.
        public var nodeBudgetPages = 1024
        public var chunkOrder = 10
        /// Order-0 pages per node in the placement check (plus one compound block).
        public var placementPages = 64
        /// The order of the compound block, which takes the node lock rather
        /// than the per-thread cache.
        public var placementOrder = 4
        /// Allocations asked of the exhausted node past its budget.
        public var fallbackPages = 32
        public init() {}

        enum CodingKeys: String, CodingKey {
            case nodeBudgetPages = "node_budget_pages"
            case chunkOrder = "chunk_order"
            case placementPages = "placement_pages"
            case placementOrder = "placement_order"
            case fallbackPages = "fallback_pages"
        }
    }

    /// Run every check on `topology` with an allocator of its own; throws
    /// when the allocator cannot be loaded (another is loaded, bad parameters).
    public static func run(_ parameters: Parameters = Parameters(),
                           topology: NUMATopology = .current) throws -> NUMACheckResult {
        guard parameters.placementPages > 0, parameters.fallbackPages > 0 else {
            throw PageAllocError.invalidParameter("placement_pages and fallback_pages must be positive")
        }
        guard parameters.placementOrder >= 0, parameters.placementOrder <= parameters.chunkOrder else {
            throw PageAllocError.invalidParameter("placement_order \(parameters.placementOrder) is outside 0...\(parameters.chunkOrder)")
        }
        guard (parameters.placementPages + (1 << parameters.placementOrder)) * 2 <= parameters.nodeBudgetPages else {
            throw PageAllocError.invalidParameter("placement needs at most half of node_budget_pages")
        }
        var allocatorParameters = PageAllocator.Parameters()
        allocatorParameters.nodeBudgetPages = parameters.nodeBudgetPages
        allocatorParameters.chunkOrder = parameters.chunkOrder
        let allocator = try PageAllocator(parameters: allocatorParameters, topology: topology)
        defer { allocator.unload() }

        var check = Run(allocator: allocator, parameters: parameters)
        check.checkpoint("loaded")
        var result = NUMACheckResult(
            nodes: topology.nodes.count, numaAvailable: topology.available, topology: topology,
            parameters: parameters, countersOK: false, checksPassed: true, numaProven: false,
            notApplicable: [], counters: [])
        if topology.available {
            // The fallback runs before the page tables: pages that liburcu's
            // worker frees stay in its per-thread cache, out of reach of
            // other threads (as another CPU's pageset is until drained), so
            // afterwards the node would fill before its exact budget.
            let placement = check.placement()
            let fallback = check.fallback()
            let pageTables = check.pageTables()
            result.placement = placement
            result.pageTables = pageTables
            result.fallback = fallback
            result.placementOK = placement.allSatisfy(\.ok)
            result.pagetablesNodeLocal = pageTables.ok
            if fallback.applicable {
                result.fallbackAllocations = fallback.fallbackAllocations
                result.fallbackOK = fallback.ok
            } else {
                result.notApplicable.append("fallback: \(fallback.note ?? "not applicable")")
            }
            result.checksPassed = placement.allSatisfy(\.ok) && pageTables.ok && fallback.ok
        } else {
            result.notApplicable.append("placement, page tables, fallback: numa_available() < 0, the kernel has no NUMA support")
        }
        result.counters = check.checkpoints
        result.countersOK = check.checkpoints.allSatisfy(\.ok)
        result.checksPassed = result.checksPassed && result.countersOK
        result.numaProven = result.checksPassed && topology.nodes.count >= 2
        return result
    }
}

/// One run of the checks: the allocator, and the ledger the counters must match.
private struct Run {
    let allocator: PageAllocator
    let parameters: NUMACheck.Parameters
    var topology: NUMATopology { allocator.topology }
    var expected: [Int: NodeCounters]
    var checkpoints: [CounterCheckpoint] = []

    init(allocator: PageAllocator, parameters: NUMACheck.Parameters) {
        self.allocator = allocator
        self.parameters = parameters
        expected = Dictionary(uniqueKeysWithValues: allocator.topology.nodeIDs.map { ($0, NodeCounters(node: $0)) })
    }

    /// An allocation of `pages` frames asked of `requested` that landed on `node`.
    mutating func recordAlloc(node: Int, requested: Int, pages: Int = 1) {
        expected[node]!.allocatedPages += pages
        if node == requested {
            expected[requested]!.numaHit += 1
        } else {
            expected[requested]!.numaForeign += 1
            expected[node]!.numaMiss += 1
        }
    }

    /// Free what the ledger holds for `page`, then the page: its order is
    /// read before the buddy can merge it into a larger block.
    mutating func free(_ page: Page) {
        expected[page.node]!.allocatedPages -= 1 << page.order
        try? allocator.free(page)
    }

    /// Compare every node's counters with the ledger.
    @discardableResult
    mutating func checkpoint(_ phase: String, actual: [NodeStats]? = nil) -> Bool {
        let point = CounterCheckpoint(phase: phase, expected: topology.nodeIDs.map { expected[$0]! },
                                      actual: (actual ?? allocator.stats()).map(NodeCounters.init))
        checkpoints.append(point)
        return point.ok
    }

    /// exit_mmap's gather allocates batch pages of its own (node-local, as
    /// tlb_remove_table's __get_free_page) and frees them: the check cannot
    /// see them, so numa_hit on the faulting node may grow by that much.
    /// Everything else must match exactly, so a foreign or leaked page
    /// still fails the checkpoint.
    private mutating func checkpointAfterExit(cpuNode: Int) -> Bool {
        let actual = allocator.stats()
        let grown = (actual.first { $0.node == cpuNode }?.numaHit ?? 0) - expected[cpuNode]!.numaHit
        var note: String?
        if grown > 0 {
            expected[cpuNode]!.numaHit += grown
            note = "numa_hit on node \(cpuNode) grew by \(grown): the exit's mmu_gather batch pages"
        }
        let ok = checkpoint("page tables: mm exited", actual: actual)
        checkpoints[checkpoints.count - 1].note = note
        return ok
    }

    // MARK: - 1. placement

    mutating func placement() -> [NodePlacement] {
        topology.nodeIDs.map { node in
            var pages: [Page] = []
            var error: String?
            do {
                for _ in 0..<parameters.placementPages { pages.append(try allocator.alloc(node: .node(node))) }
                pages.append(try allocator.alloc(order: parameters.placementOrder, node: .node(node)))
            } catch let failure {
                error = "\(failure)"
            }
            for page in pages { recordAlloc(node: page.node, requested: node, pages: 1 << page.order) }
            let frames = pages.flatMap(frames(of:))
            let labelled = frames.filter { $0.node == node }.count
            let placed = allocator.verifyPlacement(frames)
            let resident = histogram(allocator.residentNodes(of: frames))
            let heldOK = checkpoint("placement: node \(node) held")
            for page in pages { free(page) }
            let freedOK = checkpoint("placement: node \(node) freed")
            return NodePlacement(node: node, pages: frames.count, labelledOnNode: labelled, resident: resident,
                                 ok: error == nil && labelled == frames.count && placed && heldOK && freedOK,
                                 error: error)
        }
    }

    // MARK: - 2. page tables

    mutating func pageTables() -> PageTablePlacement {
        guard let target = topology.nodes.last(where: { !$0.cpus.isEmpty }) else {
            return PageTablePlacement(error: "no node has a CPU to fault from")
        }
        let cpu = target.cpus[0]
        let outcome = Box<PageTableWalk>()
        let allocator = self.allocator
        RCUThread(cpu: cpu) { outcome.set(Self.buildTables(allocator: allocator)) }.join()
        let walk = outcome.get()!
        var report = PageTablePlacement(cpu: cpu, node: target.id, cpuNode: walk.cpuNode, error: walk.error)
        guard walk.error == nil else { return report }

        // The mm asked every page of the faulting CPU's node (tableNode .local).
        let pages = walk.tables.map(\.node) + walk.data.map(\.node)
        for node in pages { recordAlloc(node: node, requested: walk.cpuNode) }
        for table in walk.tables { expected[table.node]!.nrPageTablePages += 1 }
        let builtOK = checkpoint("page tables: built", actual: walk.builtStats)
        for table in walk.tables { expected[table.node]!.nrPageTablePages -= 1 }
        for node in pages { expected[node]!.allocatedPages -= 1 }
        let exitedOK = checkpointAfterExit(cpuNode: walk.cpuNode)

        report.tables = walk.tables
        report.dataPages = walk.data.count
        report.dataResident = histogram(walk.data.map(\.resident))
        let onTarget = walk.tables.allSatisfy { $0.node == target.id && $0.resident == target.id }
            && walk.data.allSatisfy { $0.node == target.id && $0.resident == target.id }
        report.ok = walk.cpuNode == target.id && onTarget && builtOK && exitedOK
        return report
    }

    /// On the pinned thread: an mm with node-local tables, 4 MiB mapped and
    /// one byte written per 2 MiB (two PTE tables under one PMD and one PUD
    /// table), every page found by walking its tables and located with
    /// move_pages; then exit_mmap and a barrier, so that the RCU-deferred
    /// table frees have run when the thread returns.
    private static func buildTables(allocator: PageAllocator) -> PageTableWalk {
        var walk = PageTableWalk(cpuNode: allocator.topology.currentNode())
        let mm: MM
        do {
            mm = try MM(allocator: allocator, tableNode: .local)
        } catch {
            walk.error = "\(error)"
            return walk
        }
        var tables: [(Page, Level)] = []
        var data: [Page] = []
        do {
            let base: UInt64 = 0x100_0000_0000
            try mm.mmap(address: base, length: 4 << 20)
            try mm.touch(address: base, length: 4 << 20, stride: 2 << 20)
            collect(mm, mm.pgd, .pgd, tables: &tables, data: &data)
        } catch {
            walk.error = "\(error)"
        }
        let tableResidence = allocator.residentNodes(of: tables.map(\.0))
        walk.tables = zip(tables, tableResidence).map {
            TableLocation(level: $0.1.name, pfn: $0.0.pfn, node: $0.0.node, resident: $1)
        }
        walk.data = zip(data, allocator.residentNodes(of: data)).map { DataFrame(node: $0.node, resident: $1) }
        walk.builtStats = allocator.stats()
        mm.exit()
        do { try RCU.barrier() } catch { walk.error = "\(error)" }
        return walk
    }

    /// Every table of the mm at and below `table`, and the data pages its
    /// PTEs map. The mm is quiet: only this thread touches it.
    private static func collect(_ mm: MM, _ table: Page, _ level: Level, tables: inout [(Page, Level)], data: inout [Page]) {
        tables.append((table, level))
        for i in 0..<512 {
            let e = mm.slot(in: table, index: i).load()
            guard e.isPresent, let page = mm.allocator.pfnToPage(e.pfn) else { continue }
            if let child = mm.childLevel(of: level) {
                collect(mm, page, child, tables: &tables, data: &data)
            } else {
                data.append(page)
            }
        }
    }

    // MARK: - 3. fallback

    mutating func fallback() -> FallbackReport {
        let exhausted = topology.nodeIDs.last!
        var report = FallbackReport(node: exhausted, budgetPages: parameters.nodeBudgetPages,
                                    expectedNode: topology.fallbackOrder(from: exhausted).first)
        var held: [Page] = []
        exhaust(exhausted, holding: &held, report: &report)
        for page in held { free(page) }
        report.ok = report.ok && checkpoint("fallback: freed")
        return report
    }

    /// Fill `node` to its budget (every allocation a local hit), then ask
    /// for more and see where it comes from and how it is counted.
    private mutating func exhaust(_ node: Int, holding held: inout [Page], report: inout FallbackReport) {
        let budget = parameters.nodeBudgetPages
        for _ in 0..<budget {
            do {
                let page = try allocator.alloc(node: .node(node))
                recordAlloc(node: page.node, requested: node)
                held.append(page)
            } catch {
                report.error = "node \(node) gave out after \(held.count) of its \(budget) pages: \(error)"
                return
            }
        }
        report.allocatedOnNode = held.filter { $0.node == node }.count
        var extra: [Page] = []
        for _ in 0..<parameters.fallbackPages {
            do {
                let page = try allocator.alloc(node: .node(node))
                recordAlloc(node: page.node, requested: node)
                held.append(page)
                extra.append(page)
            } catch {
                report.exhaustedError = "\(error)"
                break
            }
        }
        report.requested = parameters.fallbackPages
        report.landed = histogram(extra.map(\.node))
        let placed = allocator.verifyPlacement(held)
        report.resident = histogram(allocator.residentNodes(of: extra))
        let stats = allocator.stats()
        report.numaForeign = stats.first { $0.node == node }!.numaForeign
        report.numaMiss = report.expectedNode.flatMap { other in stats.first { $0.node == other }?.numaMiss }
        let countersOK = checkpoint("fallback: node \(node) exhausted")
        guard let other = report.expectedNode else {
            // One node: nowhere to fall back to; past the budget the
            // allocation must fail, and nothing may count as foreign.
            report.note = "one NUMA node: nothing to fall back to (the allocation past the budget must fail)"
            report.ok = extra.isEmpty && report.exhaustedError != nil && report.allocatedOnNode == budget
                && report.numaForeign == 0 && placed && countersOK
            return
        }
        report.applicable = true
        report.fallbackAllocations = extra.filter { $0.node != node }.count
        report.ok = report.allocatedOnNode == budget && extra.count == parameters.fallbackPages
            && report.landed == [other: extra.count] && report.resident == [other: extra.count]
            && report.numaForeign == extra.count && report.numaMiss == extra.count && placed && countersOK
    }

    // MARK: - helpers

    /// Every 4 KiB frame of a (possibly compound) page.
    private func frames(of page: Page) -> [Page] {
        (0..<(1 << page.order)).map { page.subpage($0) }
    }

    /// How many times each value occurs: pages per node.
    private func histogram(_ nodes: [Int]) -> [Int: Int] {
        nodes.reduce(into: [:]) { $0[$1, default: 0] += 1 }
    }
}

/// A data page as the pinned thread saw it, before the mm's exit freed it.
private struct DataFrame: Sendable {
    var node: Int
    var resident: Int
}

/// What the pinned thread saw, handed back to the checking thread.
private struct PageTableWalk: Sendable {
    var cpuNode: Int
    var tables: [TableLocation] = []
    var data: [DataFrame] = []
    var builtStats: [NodeStats] = []
    var error: String?
}

/// A result passed out of a thread.
private final class Box<Value: Sendable>: Sendable {
    private let value = LabMutex<Value?>(nil)
    func set(_ v: Value) { value.withLock { $0 = v } }
    func get() -> Value? { value.withLock { $0 } }
}
