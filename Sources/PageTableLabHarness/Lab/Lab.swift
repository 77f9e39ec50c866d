import PageTableLab
/// The lab as a kernel module: `init` is module_init, `unload` module_exit.
///
/// Bring-up puts the module parameters into effect (RCU workers, the
/// deferred-memory bound) and loads the page allocator, the process's one
/// memmap. Tear-down drains every deferred free (rcu_barrier), checks that
/// every page came back, reports what did not, and unloads the allocator.
/// Per-run machinery (an mm, an IOMMU, a work item) is brought up and torn
/// down by whoever uses it, before `unload`.
public final class Lab {
    public let parameters: ModuleParameters
    public let allocator: PageAllocator
    private var loaded = true

    /// What module_exit found.
    public struct UnloadReport: Sendable, Codable, Equatable {
        /// Pages still allocated, per node id: all zero after a clean run.
        public var leakedPages: [Int: Int]
        /// Deferred callbacks still outstanding after the barrier: zero.
        public var outstandingCallbacks: Int64
        public var clean: Bool { leakedPages.values.allSatisfy { $0 == 0 } && outstandingCallbacks == 0 }

        enum CodingKeys: String, CodingKey {
            case leakedPages = "leaked_pages"
            case outstandingCallbacks = "outstanding_callbacks"
        }
    }

    public init(parameters: ModuleParameters = ModuleParameters()) throws {
        self.parameters = parameters
        try parameters.applyRCU()
        allocator = try PageAllocator(parameters: parameters.allocator)
    }

    /// module_exit. Must not run inside a read section or a callback.
    @discardableResult
    public func unload() throws -> UnloadReport {
        guard loaded else { return UnloadReport(leakedPages: [:], outstandingCallbacks: 0) }
        try RCU.withRegisteredThread { () throws(RCUError) in try RCU.barrier() }
        var leaked: [Int: Int] = [:]
        for node in allocator.topology.nodeIDs { leaked[node] = try allocator.allocatedPages(node: node) }
        let report = UnloadReport(leakedPages: leaked, outstandingCallbacks: DeferredBound.snapshot().outstandingCallbacks)
        allocator.unload()
        loaded = false
        return report
    }

    deinit { _ = try? unload() }
}
