#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// `ptlab stress kernel-free` and `ptlab stress iommu-faults`: DMA walkers
/// on SVA-bound PASIDs translating kernel (vmalloc) addresses, while a
/// thread maps and unmaps kernel memory so kernel PTE and PMD tables are
/// freed and reused under them.
public struct KernelFreeStress {
    public static let modes = KernelPageTableFree.Mode.allCases.map(\.rawValue)
    /// 2 MiB slots of the vmalloc area the churn maps and unmaps, in areas
    /// of 1–16 slots.
    static let slots = 64
    static let pasids: [UInt32] = [1, 2]

    public let options: StressOptions
    public let mode: KernelPageTableFree.Mode
    /// iommu-faults: inject IQE, ITE, ICE and queue-full while churning.
    public let injectFaults: Bool

    public init(_ options: StressOptions, injectFaults: Bool = false) throws(StressError) {
        let scenario = injectFaults ? "iommu-faults" : "kernel-free"
        guard let mode = KernelPageTableFree.Mode(rawValue: options.mode) else {
            throw .unknownMode(scenario: scenario, mode: options.mode, known: Self.modes)
        }
        guard !injectFaults || mode != .noInvalidate else {
            throw .invalidOption("iommu-faults runs the deferred or per-page path; no-invalidate injects nothing")
        }
        guard options.walkers >= 1, options.walkers <= 64 else { throw .invalidOption("--walkers must be 1...64") }
        guard options.duration > 0 else { throw .invalidOption("--duration must be positive") }
        self.options = options
        self.mode = mode
        self.injectFaults = injectFaults
    }

    public var safe: Bool { mode != .noInvalidate }

    /// What ends a run with --stop-on-detect: the unsafe mode's own
    /// detector (the IOMMU's caches), or any detection in a safe mode.
    private func watchedDetections(_ iommu: IntelIOMMU) -> UInt64 {
        let s = iommu.counters.snapshot()
        return safe ? s.useAfterFree : s.useAfterFreeFromCache
    }

    public func run(allocator: PageAllocator) throws -> StressResult {
        let startAllocated = allocator.totalAllocatedPages
        let integrityBefore = Integrity.snapshot()
        FreeLatency.reset()
        let deferredMonitor = DeferredMemoryMonitor(periodMicroseconds: 250)
        return try RCU.withRegisteredThread {
            // The churn runs on CPU 0, and the work is bound there too, as
            // schedule_work binds it to the queueing CPU.
            let cpu0 = NUMATopology.current.nodes.first?.cpus.first
            if let cpu0 { pinCurrentThread(toCPU: cpu0) }
            defer { unpinCurrentThread() }
            let iommu = try IntelIOMMU(allocator: allocator)
            let sva = SVA(iommu: iommu)
            let freer = KernelPageTableFree(mode: mode, allocator: allocator, workCPU: cpu0) { sva.invalidateKVARange() }
            let kernel = try InitMM(allocator: allocator, freer: freer)
            let device = try iommu.attachDevice(sid: 1, did: 1, ats: true)
            var mms: [MM] = []
            var bonds: [SVABond] = []
            for pasid in Self.pasids {
                let mm = try MM(allocator: allocator, kernel: kernel)
                mms.append(mm)
                bonds.append(try sva.bind(mm, pasid: pasid, did: 1, devices: [device]))
            }
            let faults = FaultSchedule()
            let seed = options.seed
            let walkers = DMAWalkers(iommu: iommu, count: options.walkers, request: { w, i in
                var rng = SplitMix64(seed: seed ^ UInt64(w) << 56 ^ i)
                let r = rng.next()
                let pasid = Self.pasids[Int(r % UInt64(Self.pasids.count))]
                let address = InitMM.vmallocStart + (r >> 8) % UInt64(Self.slots) << 21 + (r >> 20) % 16 << 12
                return DMARequest(pasid: pasid, address: address, write: r & 1 == 1)
            })

            var rng = SplitMix64(seed: seed)
            var mapped = [Bool](repeating: false, count: Self.slots)
            var ops = 0
            let start = monotonicNanoseconds()
            var elapsed = 0.0
            var nextReport = start
            while elapsed < options.duration, ops < options.maxOps ?? .max,
                  !(options.stopOnDetection && watchedDetections(iommu) > 0) {
                // vmalloc/vfree of areas of 1–16 slots: a vfree of a large
                // area frees its tables in a burst, as the kernel's do.
                let first = Int(rng.next() % UInt64(Self.slots))
                let count = min(1 + Int(rng.next() % 16), Self.slots - first)
                let base = InitMM.vmallocStart + UInt64(first) << 21
                if mapped[first] {
                    try kernel.vunmap(address: base, length: UInt64(count) << 21)
                    for i in first..<(first + count) { mapped[i] = false }
                } else {
                    for i in first..<(first + count) where !mapped[i] {
                        try kernel.vmap(address: InitMM.vmallocStart + UInt64(i) << 21, length: (1 + rng.next() % 16) << 12)
                        mapped[i] = true
                    }
                }
                ops += 1
                if injectFaults && ops % 16 == 0 { faults.injectNext(iommu: iommu, sva: sva) }
                let now = monotonicNanoseconds()
                elapsed = Double(now - start) / 1e9
                if let progress = options.progress, now >= nextReport {
                    nextReport = now + 500_000_000
                    progress(StressProgress(elapsed: elapsed, duration: options.duration, ops: ops,
                                            walks: Int(walkers.translations.load(ordering: .relaxed)),
                                            uaf: Int(iommu.counters.snapshot().useAfterFree)))
                }
            }
            walkers.stop()
            for slot in mapped.indices where mapped[slot] {
                try kernel.vunmap(address: InitMM.vmallocStart + UInt64(slot) << 21, length: 1 << 21)
            }
            freer.shutdown()
            for bond in bonds { try sva.unbind(bond) }
            for mm in mms { mm.exit() }
            kernel.release()
            let stats = iommu.counters.snapshot()
            let wait = iommu.qiWaitMicroseconds
            _ = iommu.shutdown()
            let deferredPeak = deferredMonitor.stop()
            try RCU.barrier()

            let detections = WalkCounters(iommu: stats)
            let tables = freer.tablesFreed.load(ordering: .relaxed)
            var problems: [String] = []
            if sva.kvaFailures.load(ordering: .relaxed) > 0 {
                problems.append("\(sva.kvaFailures.load(ordering: .relaxed)) KVA invalidations never completed")
            }
            if faults.lost.load(ordering: .relaxed) > 0 {
                problems.append("\(faults.lost.load(ordering: .relaxed)) submissions lost in a full queue")
            }
            var result = StressResult(
                scenario: injectFaults ? "iommu-faults" : "kernel-free", path: nil, mode: mode.rawValue, safe: safe,
                expectedDetector: safe ? nil : .iommuFromCache,
                seed: seed, walkers: options.walkers, durationSeconds: elapsed, ops: ops,
                walks: Int(walkers.translations.load(ordering: .relaxed)), uafDetected: detections.useAfterFree,
                leakedPages: allocator.totalAllocatedPages - startAllocated,
                tablesFreed: tables, rcuCallbacks: 0, tlbFlushes: 0,
                peakDeferredBytes: Int(deferredPeak),
                freeLatencyUs: FreeLatency.summary(), detections: detections,
                integrity: Integrity.snapshot() - integrityBefore, pass: false, verdict: "",
                iotlbInvalidations: Int(stats.iotlbInvalidations), qiDescriptors: Int(stats.qiDescriptors),
                qiWaitUs: .init(p50: Double(wait.valueAtPercentile(50)), p99: Double(wait.valueAtPercentile(99))),
                invalidationsPerTable: tables == 0 ? 0 : Double(freer.invalidations.load(ordering: .relaxed)) / Double(tables),
                writeAfterFree: Int(stats.writeAfterFree),
                faultsInjected: injectFaults ? faults.counts(iommu) : nil)
            result.judge(problems: problems)
            return result
        }
    }
}

/// Round-robin fault injection for iommu-faults: IQE, ITE, ICE, then a
/// queue-full episode (fetching stalled while submitters pile up).
final class FaultSchedule: Sendable {
    private let next = Atomic<Int>(0)
    private let queueFull = Atomic<Int>(0)
    /// fillQueue submitters that have returned, over all episodes.
    private let submittersFinished = Atomic<Int>(0)

    func injectNext(iommu: IntelIOMMU, sva: SVA) {
        switch next.add(1, ordering: .relaxed).newValue % 4 {
        case 1: iommu.faultInjection.injectIQE()
        case 2: iommu.faultInjection.injectITE()
        case 3: iommu.faultInjection.injectICE()
        default: fillQueue(iommu: iommu, sva: sva)
        }
    }

    /// Stall the hardware, let three submitters of large batches fill the
    /// ring until one must wait for room (qi_submit_sync's count + 2 rule),
    /// then let the hardware go: every submission must still complete.
    /// The stall ends as soon as a submitter waits for room or one has
    /// finished (one that failed early never fills the ring).
    private func fillQueue(iommu: IntelIOMMU, sva: SVA) {
        let before = iommu.counters.snapshot().queueFull
        let finishedBefore = submittersFinished.load(ordering: .acquiring)
        let flush = InvalidationDescriptor.pasidIOTLB(
            PASIDIOTLBInvalidation(did: 1, pasid: KernelFreeStress.pasids[0], granularity: .pasid)).encode()
        let batch = [RawDescriptor](repeating: flush, count: iommu.queueLength * 2 / 5)
        iommu.faultInjection.stallFetching()
        let submitters = (0..<3).map { _ in
            RCUThread { [self] in
                submit(batch, to: iommu)
                submittersFinished.add(1, ordering: .releasing)
            }
        }
        while iommu.counters.snapshot().queueFull == before,
              submittersFinished.load(ordering: .acquiring) == finishedBefore {
            sched_yield()
        }
        iommu.faultInjection.resumeFetching()
        for t in submitters { t.join() }
        queueFull.add(1, ordering: .relaxed)
    }

    /// An IQE injected earlier and not yet consumed may land on the batch:
    /// refused, so the caller submits it again, as any caller of
    /// qi_submit_sync would. Once is enough: only the thread blocked in
    /// fillQueue injects, so no other IQE can be armed meanwhile.
    private func submit(_ batch: [RawDescriptor], to iommu: IntelIOMMU) {
        do {
            do {
                try iommu.qiSubmitSync(batch)
            } catch QIError.invalidDescriptor(_, _, _, true, _) {
                try iommu.qiSubmitSync(batch)
            }
        } catch {
            lost.add(1, ordering: .relaxed)
        }
    }

    /// Queue-full submissions that failed, other than by an injected IQE
    /// (resubmitted): each one is something lost.
    let lost = Atomic<Int>(0)

    func counts(_ iommu: IntelIOMMU) -> StressResult.FaultsInjected {
        let i = iommu.faultInjection.injected
        return .init(iqe: Int(i.iqe), ite: Int(i.ite), ice: Int(i.ice), queueFull: queueFull.load(ordering: .relaxed))
    }
}
