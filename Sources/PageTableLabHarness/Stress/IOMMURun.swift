import PageTableLab

// What the IOMMU runs (kernel-free, iommu-faults, sva-exit) share: one
// updater thread stepping while DMA walkers translate, and the same end.

extension StressOptions {
    /// The updater loop of the IOMMU runs: `step(i)` for i = 0, 1, … until
    /// the duration or the op budget is spent, the queue locks up, or (with
    /// --stop-on-detect) something was caught: any use-after-free in a safe
    /// mode, in an unsafe one its own detector's (the IOMMU's caches).
    /// Progress about twice a second. An error from a step ends the loop and
    /// is returned, not thrown: the caller's teardown must run first.
    func runIOMMUUpdater(iommu: IntelIOMMU, walkers: DMAWalkers, safe: Bool,
                         _ step: (Int) throws -> Void) -> (ops: Int, elapsed: Double, failure: Error?) {
        func detected() -> UInt64 {
            let s = iommu.counters.snapshot()
            return safe ? s.useAfterFree : s.useAfterFreeFromCache
        }
        let start = monotonicNanoseconds()
        var ops = 0
        var elapsed = 0.0
        var nextReport = start
        while elapsed < duration, ops < maxOps ?? .max, iommu.lockup == nil, !(stopOnDetection && detected() > 0) {
            do {
                try step(ops)
            } catch {
                return (ops, elapsed, error)
            }
            ops += 1
            let now = monotonicNanoseconds()
            elapsed = Double(now - start) / 1e9
            if let progress, now >= nextReport {
                nextReport = now + 500_000_000
                progress(StressProgress(elapsed: elapsed, duration: duration, ops: ops,
                                        walks: Int(walkers.translations.load(ordering: .relaxed)),
                                        uaf: Int(iommu.counters.snapshot().useAfterFree)))
            }
        }
        return (ops, elapsed, nil)
    }
}

/// The end of an IOMMU run, once its walkers have stopped and its PASIDs are
/// unbound: the IOMMU's counts read and the IOMMU shut down, with it the
/// bonds whose unbind never completed, the deferred-memory monitor
/// stopped, every callback waited for; only then is the error a step ended
/// the loop with thrown.
struct IOMMURunEnd {
    let stats: IOMMUStats
    let lockup: QILockup?
    let driver: QIDriver
    let qiWaitUs: StressResult.Percentiles
    let deferredPeak: Int
    var detections: WalkCounters

    init(iommu: IntelIOMMU, sva: SVA, walkers: DMAWalkers, books: StressBooks, failure: Error?) throws {
        stats = iommu.counters.snapshot()
        let wait = iommu.qiWaitMicroseconds
        qiWaitUs = .init(p50: Double(wait.valueAtPercentile(50)), p99: Double(wait.valueAtPercentile(99)))
        lockup = iommu.lockup
        driver = iommu.parameters.driver
        _ = iommu.shutdown()
        sva.shutdown()
        deferredPeak = Int(books.deferredMonitor.stop())
        try RCU.barrier()
        if let failure { throw failure }
        detections = WalkCounters(iommu: stats)
        detections.mapped = Int(walkers.translated.load(ordering: .relaxed))
    }

    /// A lockup as the verdict names it: Linux's driver would have hung there.
    var lockupProblem: String? { lockup.map { "qi_submit_sync locked up (qi_driver=\(driver.rawValue)): \($0)" } }
}

extension StressResult {
    /// An IOMMU run's report, before its scenario's own keys and the
    /// verdict. An unsafe mode is caught by the IOMMU's caches.
    init(iommuRun scenario: String, mode: String, safe: Bool, options: StressOptions, ops: Int, elapsed: Double,
         dma walkers: DMAWalkers, end: IOMMURunEnd, books: StressBooks, tablesFreed: Int, rcuCallbacks: Int, tlbFlushes: Int,
         invalidationsPerTable: Double?, faultsInjected: FaultsInjected?) {
        self.init(
            scenario: scenario, path: nil, mode: mode, safe: safe, expectedDetector: safe ? nil : .iommuFromCache,
            seed: options.seed, walkers: options.walkers, durationSeconds: elapsed, ops: ops,
            walks: Int(walkers.translations.load(ordering: .relaxed)), uafDetected: end.detections.useAfterFree,
            leakedPages: books.leakedPages, tablesFreed: tablesFreed, rcuCallbacks: rcuCallbacks, tlbFlushes: tlbFlushes,
            peakDeferredBytes: end.deferredPeak, freeLatencyUs: FreeLatency.summary(), detections: end.detections,
            integrity: books.integritySince, pass: false, verdict: "",
            iotlbInvalidations: Int(end.stats.iotlbInvalidations), qiDescriptors: Int(end.stats.qiDescriptors),
            qiWaitUs: end.qiWaitUs, invalidationsPerTable: invalidationsPerTable,
            writeAfterFree: Int(end.stats.writeAfterFree), faultsInjected: faultsInjected)
        walkerContexts = [.dma]
        qiDriver = end.driver.rawValue
        qiLockup = end.lockup?.description
    }
}
