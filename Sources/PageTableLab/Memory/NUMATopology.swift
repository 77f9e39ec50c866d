#if canImport(Glibc)
import Glibc
#endif
internal import CNUMA
internal import CSupport
import Synchronization

/// The machine's NUMA layout as libnuma reports it, or one pseudo-node when
/// the kernel has no NUMA support (said once on stderr).
public struct NUMATopology: Sendable, Equatable, Codable {
    public struct Node: Sendable, Equatable, Codable {
        public let id: Int
        /// The node's CPUs this process may run on (its affinity when it
        /// started: taskset, a cpuset), so that pinning a thread to one
        /// cannot fail.
        public let cpus: [Int]
        public let sizeBytes: Int64
    }

    public let available: Bool
    public let nodes: [Node]
    /// distances[a][b] as numa_distance reports (10 = local).
    public let distances: [[Int]]
    /// CPU → node id (-1: in no node), so that numa_node_id() is an array
    /// read: libnuma's numa_node_of_cpu allocates a bitmask on every call.
    public let nodeOfCPU: [Int]

    public init(available: Bool, nodes: [Node], distances: [[Int]]) {
        self.available = available
        self.nodes = nodes
        self.distances = distances
        var map = [Int](repeating: -1, count: (nodes.flatMap(\.cpus).max() ?? -1) + 1)
        for node in nodes {
            for cpu in node.cpus { map[cpu] = node.id }
        }
        nodeOfCPU = map
    }

    public static let current: NUMATopology = probe()

    public var nodeIDs: [Int] { nodes.map(\.id) }

    public func distance(_ a: Int, _ b: Int) -> Int {
        guard let i = nodes.firstIndex(where: { $0.id == a }),
              let j = nodes.firstIndex(where: { $0.id == b }) else { return Int.max }
        return distances[i][j]
    }

    /// Other nodes from nearest to farthest, as the kernel's zonelist orders them.
    public func fallbackOrder(from node: Int) -> [Int] {
        nodeIDs.filter { $0 != node }.sorted { (distance(node, $0), $0) < (distance(node, $1), $1) }
    }

    /// The node of the CPU this thread runs on now. With one node there is
    /// nothing to ask the CPU.
    public func currentNode() -> Int {
        if nodes.count == 1 { return nodes[0].id }
        let cpu = Int(ptlab_current_cpu())
        guard cpu >= 0, cpu < nodeOfCPU.count, nodeOfCPU[cpu] >= 0 else { return nodes[0].id }
        return nodeOfCPU[cpu]
    }

    static func probe() -> NUMATopology {
        guard numa_available() >= 0 else {
            warnNoNUMAOnce()
            let cpus = (0..<Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))).filter { ptlab_cpu_allowed(Int32($0)) != 0 }
            return NUMATopology(available: false, nodes: [Node(id: 0, cpus: cpus, sizeBytes: 0)], distances: [[10]])
        }
        var nodes: [Node] = []
        for id in 0...Int(numa_max_node()) where ptlab_numa_node_allowed(Int32(id)) != 0 {
            let size = numa_node_size64(Int32(id), nil)
            guard size > 0 else { continue }
            let mask = numa_allocate_cpumask()!
            defer { numa_free_cpumask(mask) }
            var cpus: [Int] = []
            if numa_node_to_cpus(Int32(id), mask) == 0 {
                for cpu in 0..<Int(numa_num_configured_cpus())
                where numa_bitmask_isbitset(mask, UInt32(cpu)) != 0 && ptlab_cpu_allowed(Int32(cpu)) != 0 {
                    cpus.append(cpu)
                }
            }
            nodes.append(Node(id: id, cpus: cpus, sizeBytes: size))
        }
        let distances = nodes.map { a in nodes.map { b in Int(numa_distance(Int32(a.id), Int32(b.id))) } }
        return NUMATopology(available: true, nodes: nodes, distances: distances)
    }

    private static let warned = Atomic<Bool>(false)
    private static func warnNoNUMAOnce() {
        if !warned.exchange(true, ordering: .relaxed) {
            ptlab_warn("ptlab: numa_available() < 0: no NUMA support, using one pseudo-node\n")
        }
    }
}
