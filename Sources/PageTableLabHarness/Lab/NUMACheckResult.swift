import PageTableLab
/// What `NUMACheck.run` found. The top-level keys are the verdicts (null: the
/// check could not run here, never a pass); the rest is the evidence.
public struct NUMACheckResult: Sendable, Codable {
    /// NUMA nodes with memory that this process may use.
    public var nodes: Int
    /// numa_available() >= 0: the kernel has NUMA support and move_pages works.
    public var numaAvailable: Bool
    public var topology: NUMATopology
    public var parameters: NUMACheck.Parameters
    /// Pages allocated for each node are resident there.
    public var placementOK: Bool?
    /// Tables built by a thread pinned to the last node's CPU are on that node.
    public var pagetablesNodeLocal: Bool?
    /// Allocations past the exhausted node's budget that came from another
    /// node; null with one node (nowhere to fall back to).
    public var fallbackAllocations: Int?
    /// The fallback went to the nearest node and was counted; null with one node.
    public var fallbackOK: Bool?
    /// Every counter checkpoint matched the ledger.
    public var countersOK: Bool
    /// Every check that could run held.
    public var checksPassed: Bool
    /// checksPassed on two nodes or more: what a one-node machine cannot prove.
    public var numaProven: Bool
    /// Checks that could not run here, and why.
    public var notApplicable: [String]
    public var placement: [NodePlacement]?
    public var pageTables: PageTablePlacement?
    public var fallback: FallbackReport?
    public var counters: [CounterCheckpoint]

    enum CodingKeys: String, CodingKey {
        case nodes
        case numaAvailable = "numa_available"
        case topology, parameters
        case placementOK = "placement_ok"
        case pagetablesNodeLocal = "pagetables_node_local"
        case fallbackAllocations = "fallback_allocations"
        case fallbackOK = "fallback_ok"
        case countersOK = "counters_ok"
        case checksPassed = "checks_passed"
        case numaProven = "numa_proven"
        case notApplicable = "not_applicable"
        case placement
        case pageTables = "page_tables"
        case fallback, counters
    }

    /// Encode nil verdicts as null rather than leaving the key out: a reader
    /// must see that a check did not run.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(nodes, forKey: .nodes)
        try c.encode(numaAvailable, forKey: .numaAvailable)
        try c.encode(topology, forKey: .topology)
        try c.encode(parameters, forKey: .parameters)
        try c.encode(placementOK, forKey: .placementOK)
        try c.encode(pagetablesNodeLocal, forKey: .pagetablesNodeLocal)
        try c.encode(fallbackAllocations, forKey: .fallbackAllocations)
        try c.encode(fallbackOK, forKey: .fallbackOK)
        try c.encode(countersOK, forKey: .countersOK)
        try c.encode(checksPassed, forKey: .checksPassed)
        try c.encode(numaProven, forKey: .numaProven)
        try c.encode(notApplicable, forKey: .notApplicable)
        try c.encodeIfPresent(placement, forKey: .placement)
        try c.encodeIfPresent(pageTables, forKey: .pageTables)
        try c.encodeIfPresent(fallback, forKey: .fallback)
        try c.encode(counters, forKey: .counters)
    }
}

/// Check 1 for one node.
public struct NodePlacement: Sendable, Codable, Equatable {
    public var node: Int
    /// 4 KiB frames allocated (order-0 pages and the compound block's frames).
    public var pages: Int
    /// Frames whose descriptor says this node.
    public var labelledOnNode: Int
    /// Frames per node move_pages reports (negative: -errno).
    public var resident: [Int: Int]
    public var ok: Bool
    public var error: String?

    enum CodingKeys: String, CodingKey {
        case node, pages
        case labelledOnNode = "labelled_on_node"
        case resident, ok, error
    }
}

/// Check 2: where an mm's tables went when its faults ran on one node's CPU.
public struct PageTablePlacement: Sendable, Codable, Equatable {
    /// The CPU the faulting thread was pinned to, and that CPU's node.
    public var cpu: Int?
    public var node: Int?
    /// The node the thread found itself on (numa_node_of_cpu(sched_getcpu())).
    public var cpuNode: Int?
    public var tables: [TableLocation] = []
    public var dataPages = 0
    public var dataResident: [Int: Int] = [:]
    public var ok = false
    public var error: String?

    enum CodingKeys: String, CodingKey {
        case cpu, node
        case cpuNode = "cpu_node"
        case tables
        case dataPages = "data_pages"
        case dataResident = "data_resident"
        case ok, error
    }
}

public struct TableLocation: Sendable, Codable, Equatable {
    public var level: String
    public var pfn: UInt32
    /// The descriptor's node.
    public var node: Int
    /// The node move_pages reports (negative: -errno).
    public var resident: Int
}

/// Check 3: one node filled to its budget, then asked for more.
public struct FallbackReport: Sendable, Codable, Equatable {
    public var node: Int
    public var budgetPages: Int
    /// The nearest other node (null with one node).
    public var expectedNode: Int?
    /// Of the budget's allocations, those that stayed on the node.
    public var allocatedOnNode = 0
    public var requested = 0
    /// Where the allocations past the budget landed, by descriptor, and by move_pages.
    public var landed: [Int: Int] = [:]
    public var resident: [Int: Int] = [:]
    public var numaForeign = 0
    public var numaMiss: Int?
    /// Allocations past the budget that another node served.
    public var fallbackAllocations = 0
    /// Why the allocation past the budget failed (expected with one node).
    public var exhaustedError: String?
    public var applicable = false
    public var note: String?
    public var ok = false
    public var error: String?

    enum CodingKeys: String, CodingKey {
        case node
        case budgetPages = "budget_pages"
        case expectedNode = "expected_node"
        case allocatedOnNode = "allocated_on_node"
        case requested, landed, resident
        case numaForeign = "numa_foreign"
        case numaMiss = "numa_miss"
        case fallbackAllocations = "fallback_allocations"
        case exhaustedError = "exhausted_error"
        case applicable, note, ok, error
    }
}

/// Check 4: one node's counters, as the ledger expects or as the allocator says.
public struct NodeCounters: Sendable, Codable, Equatable {
    public var node: Int
    public var allocatedPages = 0
    public var nrPageTablePages = 0
    public var numaHit = 0
    public var numaMiss = 0
    public var numaForeign = 0

    public init(node: Int) { self.node = node }

    public init(_ stats: NodeStats) {
        node = stats.node
        allocatedPages = stats.allocatedPages
        nrPageTablePages = stats.nrPageTablePages
        numaHit = stats.numaHit
        numaMiss = stats.numaMiss
        numaForeign = stats.numaForeign
    }

    enum CodingKeys: String, CodingKey {
        case node
        case allocatedPages = "allocated_pages"
        case nrPageTablePages = "nr_page_table_pages"
        case numaHit = "numa_hit"
        case numaMiss = "numa_miss"
        case numaForeign = "numa_foreign"
    }
}

public struct CounterCheckpoint: Sendable, Codable, Equatable {
    public var phase: String
    public var ok: Bool
    public var expected: [NodeCounters]
    public var actual: [NodeCounters]
    /// Why the ledger took a value from the allocator rather than its own books.
    public var note: String?

    public init(phase: String, expected: [NodeCounters], actual: [NodeCounters]) {
        self.phase = phase
        self.expected = expected
        self.actual = actual
        ok = expected == actual
    }
}
