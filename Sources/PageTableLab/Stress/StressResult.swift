/// One stress run's summary. The snake_case keys are a public interface
/// (scripts parse them): add keys, never rename.
public struct StressResult: Codable, Sendable, Equatable {
    public var scenario: String
    public var mode: String
    /// True when the mode is the kernel with its fix (detections must be 0).
    public var safe: Bool
    public var seed: UInt64
    public var walkers: Int
    public var durationSeconds: Double
    /// Updater operations (faults, unmaps, collapses, …) completed.
    public var ops: Int
    public var walks: Int
    public var uafDetected: Int
    public var leakedPages: Int
    public var tablesFreed: Int
    public var rcuCallbacks: Int
    public var tlbFlushes: Int
    public var peakDeferredBytes: Int
    public var freeLatencyUs: FreeLatency.Summary
    /// The detections by kind.
    public var detections: WalkCounters
    public var pass: Bool
    /// Why it failed, in words; empty when it passed.
    public var verdict: String

    // IOMMU runs only (absent from the JSON otherwise).
    public var iotlbInvalidations: Int?
    public var qiDescriptors: Int?
    public var qiWaitUs: Percentiles?
    public var invalidationsPerTable: Double?
    public var writeAfterFree: Int?
    public var faultsInjected: FaultsInjected?
    /// kernel-free and iommu-faults: the qi_submit_sync that ran (robust or
    /// linux); the first lockup of the linux one, if it had one; kernel
    /// tables freed by each kernel function; tables left unfreed because
    /// their invalidation never completed.
    public var qiDriver: String?
    public var qiLockup: String?
    public var tablesFreedBy: [String: Int]?
    public var tablesStranded: Int?

    public struct Percentiles: Codable, Sendable, Equatable {
        public var p50: Double
        public var p99: Double
    }

    public struct FaultsInjected: Codable, Sendable, Equatable {
        public var iqe: Int
        public var ite: Int
        public var ice: Int
        public var queueFull: Int

        enum CodingKeys: String, CodingKey {
            case iqe, ite, ice
            case queueFull = "queue_full"
        }
    }

    enum CodingKeys: String, CodingKey {
        case scenario, mode, safe, seed, walkers, ops, walks, pass, verdict, detections
        case durationSeconds = "duration_s"
        case uafDetected = "uaf_detected"
        case leakedPages = "leaked_pages"
        case tablesFreed = "tables_freed"
        case rcuCallbacks = "rcu_callbacks"
        case tlbFlushes = "tlb_flushes"
        case peakDeferredBytes = "peak_deferred_bytes"
        case freeLatencyUs = "free_latency_us"
        case iotlbInvalidations = "iotlb_invalidations"
        case qiDescriptors = "qi_descriptors"
        case qiWaitUs = "qi_wait_us"
        case invalidationsPerTable = "invalidations_per_table"
        case writeAfterFree = "write_after_free"
        case faultsInjected = "faults_injected"
        case qiDriver = "qi_driver"
        case qiLockup = "qi_lockup"
        case tablesFreedBy = "tables_freed_by"
        case tablesStranded = "tables_stranded"
    }
}
