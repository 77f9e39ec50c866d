import PageTableLab
/// One stress run's summary. The snake_case keys are a public interface
/// (scripts parse them): add keys, never rename.
public struct StressResult: Encodable, Sendable, Equatable {
    public var scenario: String
    /// The scenario's kernel path (`collapse`: shmem or anon); absent from
    /// the JSON where a scenario has one.
    public var path: String?
    public var mode: String
    /// True when the mode is the kernel with its fix (detections must be 0).
    public var safe: Bool
    /// An unsafe mode's own detector (a key of `detections`), which must
    /// fire for the run to pass; nil (JSON null) for safe modes.
    public var expectedDetector: Detector?
    public var seed: UInt64
    /// Walker threads (each takes `walker_contexts` in turn).
    public var walkers: Int
    /// Updater threads.
    public var updaters = 1
    /// The walkers each walker thread runs, each with the lock context it
    /// walks in (`{"walker": "pte_offset_map", "context": "mmap-read"}`).
    public var walkerContexts: [Scenario.Walker] = []
    /// How TLB flushes reached the walkers (module parameter tlb_flush).
    public var tlbFlush = TLBFlushKind.ipi
    /// VmPTE at the end of the run, and the tables the mm really held then
    /// (linked below its PGD, or deposited): equal, or a table was lost.
    public var vmPTEBytes = 0
    public var tableBytesHeld = 0
    public var durationSeconds: Double
    /// Updater operations (faults, unmaps, collapses, …) completed.
    public var ops: Int
    public var walks: Int
    public var uafDetected: Int
    public var leakedPages: Int
    public var tablesFreed: Int
    public var rcuCallbacks: Int
    public var tlbFlushes: Int
    /// The highest deferred memory a DeferredMemoryMonitor saw liburcu hold.
    public var peakDeferredBytes: Int
    public var freeLatencyUs: FreeLatency.Summary
    /// The detections by detector, and the walks behind them.
    public var detections: WalkCounters
    /// The THP events the updaters caused, by their /proc/vmstat names:
    /// what says a run reached huge PMDs, their splits and collapses, and
    /// not only PTE tables.
    public var thpEvents = THPEvents()
    /// The THP policy the faults followed: the module parameters' for a
    /// scenario that takes them, the lab's default (madvise, never) for the
    /// others.
    public var thp = THPPolicy(THPSettings())
    /// Which lock the faults and DONTNEEDs ran under, their VMA's or the
    /// mmap read lock, and how many of the first overlapped a writer
    /// holding the mmap write lock.
    public var vmaLocks = VMALocks()
    /// Each kind of op the updaters took, done and refused, for a scenario
    /// that counts them (`race`); absent from the JSON otherwise.
    public var opKinds: [String: OpTally.Count]?
    /// Refused frees, double queueing, failed notifier invalidations:
    /// nonzero fails a safe run.
    public var integrity: Integrity
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
    /// sva-exit: processes that exited with their PASID still bound, and
    /// the DMA translations that faulted (a PASID released or not yet
    /// bound, an address not mapped).
    public var exitsWhileBound: Int?
    public var dmaFaults: Int?
    /// oom-reap: how each process's reap ended, and the faults that got
    /// SIGBUS because a reap had been (MMF_UNSTABLE).
    public var oomReaps: OOMReaps?
    public var sigbusFaults: Int?
    /// Of those, the faults that began before the reap was known to be
    /// over: they ran beside it.
    public var sigbusBesideReap: Int?

    /// What oom_reap_task_mm did, one count per process (`contended`: the
    /// trylocks that failed and were tried again; `beside_exit`: reaps
    /// that exit_mmap began before they ended. Such a reap found
    /// MMF_OOM_SKIP clear, so exit's unmap had not ended when the reap's
    /// zap began: the two overlapped).
    public struct OOMReaps: Codable, Sendable, Equatable {
        public var reaped = 0
        public var skipped = 0
        public var gone = 0
        public var contended = 0
        public var besideExit = 0

        enum CodingKeys: String, CodingKey {
            case reaped, skipped, gone, contended
            case besideExit = "beside_exit"
        }
    }

    public struct Percentiles: Codable, Sendable, Equatable {
        public var p50: Double
        public var p99: Double
    }

    public struct THPEvents: Codable, Sendable, Equatable {
        public var faultAlloc = 0
        public var faultFallback = 0
        public var collapseAlloc = 0
        public var splitPMD = 0

        enum CodingKeys: String, CodingKey {
            case faultAlloc = "thp_fault_alloc"
            case faultFallback = "thp_fault_fallback"
            case collapseAlloc = "thp_collapse_alloc"
            case splitPMD = "thp_split_pmd"
        }
    }

    public struct THPPolicy: Codable, Sendable, Equatable {
        public var enabled: String
        public var shmemEnabled: String

        public init(_ settings: THPSettings) {
            enabled = settings.enabled.rawValue
            shmemEnabled = settings.shmemEnabled.rawValue
        }

        enum CodingKeys: String, CodingKey {
            case enabled
            case shmemEnabled = "shmem_enabled"
        }
    }

    public struct VMALocks: Codable, Sendable, Equatable {
        public var faultVMA = 0
        public var faultMMap = 0
        public var faultBesideWriter = 0
        public var dontneedVMA = 0
        public var dontneedMMap = 0
        public var dontneedBesideWriter = 0

        enum CodingKeys: String, CodingKey {
            case faultVMA = "fault_vma"
            case faultMMap = "fault_mmap"
            case faultBesideWriter = "fault_beside_writer"
            case dontneedVMA = "dontneed_vma"
            case dontneedMMap = "dontneed_mmap"
            case dontneedBesideWriter = "dontneed_beside_writer"
        }
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

    /// Decide `pass` and `verdict`. A safe run fails on any detection, a
    /// leak or a broken integrity counter; an unsafe run fails unless its
    /// own detector fired (and on a leak). `problems` are the caller's own
    /// reasons to fail (an invalidation that never completed, say).
    mutating func judge(problems: [String] = []) {
        var reasons: [String] = []
        // A safe verdict rests on the interleavings the run made: none made
        // is no verdict (a window too short for one op and one walk).
        if safe && (ops == 0 || walks == 0) {
            reasons.append("the run made \(ops) ops and \(walks) walks: nothing was tested; give it a longer --duration")
        } else if safe && tablesFreed == 0 {
            reasons.append("the run freed no page table: nothing the walkers had to survive happened; give it a longer --duration")
        } else if safe && detections.mapped == 0 {
            reasons.append("no walk of \(walks) reached a mapped page: the walkers never met the tables the run freed; give it a longer --duration")
        }
        // Refused a few times in a row is the race; refused every time, 20
        // times or more, is an op the model no longer lets happen.
        for (kind, count) in (opKinds ?? [:]).sorted(by: { $0.key < $1.key }) where safe && count.done == 0 && count.refused >= 20 {
            reasons.append("\(kind) was refused all \(count.refused) times: the run never tested it")
        }
        let fired = detections.fired.map { "\($0.0.rawValue) \($0.1)" }.joined(separator: ", ")
        if safe && uafDetected > 0 { reasons.append("safe mode's detectors fired \(uafDetected) times (\(fired))") }
        if let expected = expectedDetector, detections[expected] == 0 {
            reasons.append("unsafe mode's own detector \(expected.rawValue) did not fire"
                           + (uafDetected > 0 ? " (only \(fired))" : ": the detector did not fire"))
        }
        // A stale table write loses the PTE it wrote, and the page with it:
        // that leak is the bug the detector is there for.
        if leakedPages != 0 && !(expectedDetector?.losesPages ?? false) {
            reasons.append("\(leakedPages) pages not returned to the allocator")
        }
        if safe { reasons += integrity.problems }
        reasons += problems
        pass = reasons.isEmpty
        verdict = reasons.joined(separator: "; ")
    }

    enum CodingKeys: String, CodingKey {
        case scenario, path, mode, safe, seed, walkers, updaters, ops, walks, pass, verdict, detections
        case walkerContexts = "walker_contexts"
        case tlbFlush = "tlb_flush"
        case vmPTEBytes = "vmpte_bytes"
        case tableBytesHeld = "table_bytes_held"
        case expectedDetector = "expected_detector"
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
        case freeErrors = "free_errors"
        case doubleQueued = "double_queued"
        case notifierFailures = "notifier_failures"
        case storesToFreedPages = "stores_to_freed_pages"
        case badPageStates = "bad_page_states"
        case qiDriver = "qi_driver"
        case qiLockup = "qi_lockup"
        case tablesFreedBy = "tables_freed_by"
        case tablesStranded = "tables_stranded"
        case exitsWhileBound = "exits_while_bound"
        case dmaFaults = "dma_faults"
        case oomReaps = "oom_reaps"
        case sigbusFaults = "sigbus_faults"
        case sigbusBesideReap = "sigbus_beside_reap"
        case thpEvents = "thp_events"
        case thp
        case vmaLocks = "vma_locks"
        case opKinds = "op_kinds"
    }

    /// Written by hand so that `expected_detector` is always present (null
    /// for a safe mode) and the integrity counters sit beside the other
    /// counts (`free_errors`, `double_queued`, `notifier_failures`,
    /// `stores_to_freed_pages`, `bad_page_states`).
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(scenario, forKey: .scenario)
        try c.encodeIfPresent(path, forKey: .path)
        try c.encode(mode, forKey: .mode)
        try c.encode(safe, forKey: .safe)
        try c.encode(expectedDetector, forKey: .expectedDetector)
        try c.encode(seed, forKey: .seed)
        try c.encode(walkers, forKey: .walkers)
        try c.encode(updaters, forKey: .updaters)
        try c.encode(walkerContexts, forKey: .walkerContexts)
        try c.encode(tlbFlush, forKey: .tlbFlush)
        try c.encode(durationSeconds, forKey: .durationSeconds)
        try c.encode(ops, forKey: .ops)
        try c.encode(walks, forKey: .walks)
        try c.encode(uafDetected, forKey: .uafDetected)
        try c.encode(leakedPages, forKey: .leakedPages)
        try c.encode(tablesFreed, forKey: .tablesFreed)
        try c.encode(rcuCallbacks, forKey: .rcuCallbacks)
        try c.encode(tlbFlushes, forKey: .tlbFlushes)
        try c.encode(vmPTEBytes, forKey: .vmPTEBytes)
        try c.encode(tableBytesHeld, forKey: .tableBytesHeld)
        try c.encode(peakDeferredBytes, forKey: .peakDeferredBytes)
        try c.encode(freeLatencyUs, forKey: .freeLatencyUs)
        try c.encode(detections, forKey: .detections)
        try c.encode(thp, forKey: .thp)
        try c.encode(thpEvents, forKey: .thpEvents)
        try c.encode(vmaLocks, forKey: .vmaLocks)
        try c.encodeIfPresent(opKinds, forKey: .opKinds)
        try c.encode(integrity.freeErrors, forKey: .freeErrors)
        try c.encode(integrity.doubleQueued, forKey: .doubleQueued)
        try c.encode(integrity.notifierFailures, forKey: .notifierFailures)
        try c.encode(integrity.storesToFreedPages, forKey: .storesToFreedPages)
        try c.encode(integrity.badPageStates, forKey: .badPageStates)
        try c.encode(pass, forKey: .pass)
        try c.encode(verdict, forKey: .verdict)
        try c.encodeIfPresent(iotlbInvalidations, forKey: .iotlbInvalidations)
        try c.encodeIfPresent(qiDescriptors, forKey: .qiDescriptors)
        try c.encodeIfPresent(qiWaitUs, forKey: .qiWaitUs)
        try c.encodeIfPresent(invalidationsPerTable, forKey: .invalidationsPerTable)
        try c.encodeIfPresent(writeAfterFree, forKey: .writeAfterFree)
        try c.encodeIfPresent(faultsInjected, forKey: .faultsInjected)
        try c.encodeIfPresent(qiDriver, forKey: .qiDriver)
        try c.encodeIfPresent(qiLockup, forKey: .qiLockup)
        try c.encodeIfPresent(tablesFreedBy, forKey: .tablesFreedBy)
        try c.encodeIfPresent(tablesStranded, forKey: .tablesStranded)
        try c.encodeIfPresent(exitsWhileBound, forKey: .exitsWhileBound)
        try c.encodeIfPresent(dmaFaults, forKey: .dmaFaults)
        try c.encodeIfPresent(oomReaps, forKey: .oomReaps)
        try c.encodeIfPresent(sigbusFaults, forKey: .sigbusFaults)
        try c.encodeIfPresent(sigbusBesideReap, forKey: .sigbusBesideReap)
    }
}
