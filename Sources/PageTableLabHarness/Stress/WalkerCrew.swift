#if canImport(Glibc)
import Glibc
#endif
import PageTableLab
import Synchronization

/// The walker threads of a stress run. Each is a CPU of the mm: it answers
/// TLB-flush IPIs between walks, and keeps its own counters, published once
/// at the end (and a rough running total for the progress line).
///
/// `StressRunner` makes one per run; a prototype that drives its own
/// updater loop can make one itself, around any mm (with DMA walkers, an
/// IOMMU bound to it: `SVABinding`), and `stop` it for the counts.
public final class WalkerCrew: Sendable {
    private let stopFlag = Atomic<Bool>(false)
    private let totals = LabMutex(WalkCounters())
    private let walks = Atomic<Int>(0)
    private let uaf = Atomic<Int>(0)
    private let watched = Atomic<Int>(0)
    /// Threads that have made their first walk.
    private let walking = Atomic<Int>(0)
    private let count: Int
    /// The detector whose first detection ends an unsafe run (nil: any).
    private let watching: Detector?
    private let threads: LabMutex<[RCUThread]>

    /// Each of `count` threads takes the scenario's `walkers` in turn, one
    /// per step, each in its lock context; a detection by `watching` (by
    /// any detector, if nil) counts in `watchedSoFar`.
    public init(mm: MM, region: StressRegion, walkers: [Scenario.Walker], count: Int, seed: UInt64, watching: Detector?,
         iommu: IntelIOMMU?) {
        precondition(iommu != nil || !walkers.contains { $0.kind == .dma }, "DMA walkers need an IOMMU bound to the mm")
        threads = LabMutex([])
        self.watching = watching
        self.count = count
        let cpus = NUMATopology.current.nodes.flatMap(\.cpus)
        for id in 0..<count {
            let pin = cpus.isEmpty ? nil : cpus[id % cpus.count]
            let thread = RCUThread(cpu: pin) { [self] in
                walk(mm: mm, region: region, walkers: walkers, id: id, seed: seed, iommu: iommu)
            }
            threads.withLock { $0.append(thread) }
        }
    }

    /// Walks so far (rough: published every 1,024 per thread).
    public var walksSoFar: Int { walks.load(ordering: .relaxed) }
    /// Use-after-free detections so far, by any detector.
    public var uafSoFar: Int { uaf.load(ordering: .relaxed) }
    /// Detections by the watched detector (by any, if none is watched).
    public var watchedSoFar: Int { watched.load(ordering: .relaxed) }

    private func walk(mm: MM, region: StressRegion, walkers: [Scenario.Walker], id: Int, seed: UInt64,
                      iommu: IntelIOMMU?) {
        // A DMA engine is not a CPU: flushes do not wait for it.
        let cpu = walkers.contains(where: \.kind.isCPU) ? CPU(id: id, tlb: mm.tlb) : nil
        var rng = SplitMix64(seed: seed &+ UInt64(id + 1) &* 0x1000_0001)
        var counters = WalkCounters()
        var step = 0
        var reportedUAF = 0
        var reportedWatched = 0
        while !stopFlag.load(ordering: .relaxed) {
            cpu?.handleInterrupts()
            let address = region.randomAddress(&rng)
            let walker = walkers[step % walkers.count]
            switch walker.kind {
            case .gupFast: mm.gupFast(address, counters: &counters)
            case .pteOffsetMap: mm.pteOffsetMap(address, context: walker.context, cpu: cpu!, counters: &counters)
            case .pteOffsetMapLock: mm.pteOffsetMapLock(address, cpu: cpu, counters: &counters)
            case .hardware: mm.hardwareAccess(address, cpu: cpu!, counters: &counters)
            case .dma: iommu!.translate(DMARequest(pasid: SVABinding.pasid, address: address), counters: &counters)
            }
            step += 1
            if step == 1 { walking.add(1, ordering: .releasing) }
            if step & 1023 == 0 { walks.add(1024, ordering: .relaxed) }
            if counters.useAfterFree != reportedUAF {
                uaf.add(counters.useAfterFree - reportedUAF, ordering: .relaxed)
                reportedUAF = counters.useAfterFree
                let seen = watching.map { counters[$0] } ?? reportedUAF
                if seen != reportedWatched {
                    watched.add(seen - reportedWatched, ordering: .relaxed)
                    reportedWatched = seen
                }
            }
        }
        cpu?.offline()
        totals.withLock { $0 = $0 + counters }
    }

    /// Wait until every walker thread is walking: updaters that start
    /// before a thread is scheduled would race fewer walkers than the run
    /// reports, and a short run (a test's few dozen ops) none at all.
    public func waitUntilEveryWalkerWalks() {
        while walking.load(ordering: .acquiring) < count { sched_yield() }
    }

    /// Stop every walker, wait for it, and return the summed counters.
    public func stop() -> WalkCounters {
        stopFlag.store(true, ordering: .relaxed)
        for t in threads.withLock({ $0 }) { t.join() }
        return totals.withLock { $0 }
    }
}
