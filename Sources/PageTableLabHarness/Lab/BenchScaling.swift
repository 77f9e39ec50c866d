import PageTableLab
import Synchronization

/// Throughput against producer threads, with liburcu's one call_rcu worker
/// and then with one worker per CPU. Switching to per-CPU workers cannot be
/// undone in a process, so this runs last, and only when asked for.
extension Bench {
    public struct ScalingPoint: Sendable, Codable, Equatable {
        /// "default" or "per-cpu" (RCU.Workers).
        public var workers: String
        /// "call_rcu": the C baseline's 64-byte object through RCU.call;
        /// "pte_free_defer": PTE tables allocated and deferred.
        public var path: String
        public var threads: Int
        /// Median over rounds, objects per second, barrier included.
        public var perSec: Double

        enum CodingKeys: String, CodingKey {
            case workers, path, threads
            case perSec = "per_sec"
        }
    }

    static let scalingPaths = ["call_rcu", "pte_free_defer"]

    static func scaling(count: Int, threadCounts: [Int], rounds: Int, mm: MM, allocator: PageAllocator,
                        progress: (String) -> Void) throws -> [ScalingPoint] {
        var points: [ScalingPoint] = []
        for workers in [RCU.Workers.default, .perCPU] {
            guard RCU.useWorkers(workers) else { throw BenchError.invalidConfiguration("liburcu refused per-CPU call_rcu workers") }
            for path in scalingPaths {
                for threads in threadCounts {
                    progress("scaling: \(path), \(threads) thread(s), \(workers.rawValue) workers")
                    var samples: [Double] = []
                    for _ in 0..<rounds {
                        samples.append(try producersPerSec(path: path, count: count, threads: threads, mm: mm, allocator: allocator))
                    }
                    points.append(ScalingPoint(workers: workers.rawValue, path: path, threads: threads, perSec: median(samples)))
                }
            }
        }
        return points
    }

    /// `threads` registered producers share `count` objects of `path`; the
    /// clock runs from their start to the barrier after they have all queued.
    private static func producersPerSec(path: String, count: Int, threads: Int, mm: MM, allocator: PageAllocator) throws -> Double {
        let failures = Atomic<Int>(0)
        let share = count / threads
        let t0 = nowNs()
        let producers = (0..<threads).map { t in
            RCUThread {
                do {
                    if path == "call_rcu" {
                        try mallocCalls(share)
                    } else {
                        try deferTables(t * share..<(t + 1) * share, mm: mm, allocator: allocator)
                    }
                } catch {
                    failures.add(1, ordering: .relaxed)
                }
            }
        }
        for p in producers { p.join() }
        try RCU.barrier()
        let seconds = (nowNs() - t0) / 1e9
        let failed = failures.load(ordering: .relaxed)
        guard failed == 0 else { throw BenchError.callbackFreeFailed(count: failed) }
        return Double(share * threads) / seconds
    }
}
