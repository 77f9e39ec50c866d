#if canImport(Glibc)
import PageTableLab
import Glibc
#endif
import Synchronization

/// `ptlab stress kernel-free` and `ptlab stress iommu-faults`: DMA walkers
/// on SVA-bound PASIDs translating kernel addresses, while a thread maps
/// and unmaps kernel memory so that kernel page tables are freed, by every
/// kernel function that frees them (KernelChurn), and reused under them.
public struct KernelFreeStress {
    /// The kernel's own policies, by the mode names `--mode` takes.
    public static let policies: [any KernelTableFreePolicy] = [.deferred, .perPage, .noInvalidate]
    public static let modes = policies.map(\.name)
    static let pasids: [UInt32] = [1, 2]

    public let options: StressOptions
    public let policy: any KernelTableFreePolicy
    /// True when the policy must be caught (by the IOMMU's caches).
    public let unsafe: Bool
    /// iommu-faults: inject IQE, ITE, ICE and queue-full while churning.
    public let injectFaults: Bool
    /// Tests: runs after the run's last flush and before the harness meets
    /// what is still armed, which is where a fault from the last injection
    /// waits when no churn flush met it: a test can put one there.
    var beforeUnbind: ((IntelIOMMU) -> Void)?

    /// The kernel's policy named by `options.mode`, or `policy` (a
    /// prototype's own, which is `unsafe` when it is expected to be caught).
    public init(_ options: StressOptions, injectFaults: Bool = false, policy: (any KernelTableFreePolicy)? = nil,
                unsafe: Bool = false) throws(StressError) {
        let scenario = injectFaults ? "iommu-faults" : "kernel-free"
        guard let policy = policy ?? Self.policies.first(where: { $0.name == options.mode }) else {
            throw .unknownMode(scenario: scenario, mode: options.mode, known: Self.modes)
        }
        let unsafe = unsafe || policy is NoInvalidateKernelTableFree
        guard !injectFaults || !unsafe else {
            throw .invalidOption("iommu-faults runs the deferred or per-page path; no-invalidate injects nothing")
        }
        guard options.walkers >= 1, options.walkers <= 64 else { throw .invalidOption("--walkers must be 1...64") }
        guard options.duration > 0 else { throw .invalidOption("--duration must be positive") }
        self.options = options
        self.policy = policy
        self.unsafe = unsafe
        self.injectFaults = injectFaults
    }

    public var safe: Bool { !unsafe }

    public func run(allocator: PageAllocator) throws -> StressResult {
        let books = StressBooks(allocator)
        return try RCU.withRegisteredThread {
            // The churn runs on CPU 0, and the work is bound there too, as
            // schedule_work binds it to the queueing CPU.
            let cpu0 = NUMATopology.current.nodes.first?.cpus.first
            if let cpu0 { pinCurrentThread(toCPU: cpu0) }
            defer { unpinCurrentThread() }
            let layout = KernelLayout.fourLevel
            let iommu = try IntelIOMMU(allocator: allocator, parameters: options.iommu)
            let sva = SVA(iommu: iommu)
            let freer = KernelPageTableFree(policy: policy, allocator: allocator, workCPU: cpu0) {
                sva.invalidateKVARange(start: layout.pageOffset)
            }
            let kernel = try InitMM(allocator: allocator, freer: freer, fiveLevel: layout.fiveLevel)
            let device = try iommu.attachDevice(sid: 1, did: 1, ats: true)
            var mms: [MM] = []
            var bonds: [SVABond] = []
            for pasid in Self.pasids {
                let mm = try MM(allocator: allocator, kernel: kernel)
                mms.append(mm)
                bonds.append(try sva.bind(mm, pasid: pasid, did: 1, devices: [device]))
            }
            let faults = FaultSchedule(pasid: Self.pasids[0])
            let blocks = OnlineBlocks()
            let entered = EnteredBlocks(walkers: options.walkers)
            let seed = options.seed
            let walkers = DMAWalkers(iommu: iommu, count: options.walkers, request: { w, i in
                var rng = SplitMix64(seed: seed ^ UInt64(w) << 56 ^ i)
                let r = rng.next()
                let pasid = Self.pasids[Int(r % UInt64(Self.pasids.count))]
                let (address, block) = KernelChurn.walkTarget(layout, blocks, rng.next())
                entered.set(w, block)
                return DMARequest(pasid: pasid, address: address, write: r & 2 == 2)
            }, onResult: { w, _ in
                if let b = entered.take(w) { blocks.leave(b) }
            })

            var churn = KernelChurn(kernel: kernel, blocks: blocks)
            var rng = SplitMix64(seed: seed)
            let (ops, elapsed, failure) = options.runIOMMUUpdater(iommu: iommu, walkers: walkers, safe: safe) { i in
                try churn.step(&rng)
                if injectFaults && (i + 1) % 16 == 0 { faults.injectNext(iommu: iommu) }
            }
            walkers.stop()
            try churn.tearDown()
            freer.shutdown()
            beforeUnbind?(iommu)
            if injectFaults && iommu.lockup == nil { faults.drain(sva) }
            // After a lockup the queue takes no more work: the unbinds'
            // flushes fail, and nothing walks any more to care.
            var unbindFailures = 0
            for bond in bonds {
                do { try sva.unbind(bond) } catch { unbindFailures += 1 }
            }
            for mm in mms { mm.exit() }
            let tablesFreedBy = kernel.tablesFreedBy
            let kernelFlushes = kernel.rangeFlushes.load(ordering: .relaxed) + kernel.fullFlushes.load(ordering: .relaxed)
            kernel.release()
            let end = try IOMMURunEnd(iommu: iommu, sva: sva, walkers: walkers, books: books, failure: failure)
            let tables = freer.tablesFreed.load(ordering: .relaxed)
            var problems: [String] = []
            if let lockup = end.lockupProblem {
                problems.append(lockup)
            } else {
                let failures = sva.kvaFailures.load(ordering: .relaxed)
                if failures > 0 { problems.append("\(failures) KVA invalidations never completed") }
                if unbindFailures > 0 { problems.append("\(unbindFailures) unbinds failed") }
                let lost = faults.lost.load(ordering: .relaxed)
                if lost > 0 { problems.append("\(lost) submissions lost in a full queue") }
            }
            if end.stats.misdirectedCompletions > 0 {
                problems.append("\(end.stats.misdirectedCompletions) waits taken as done before they ran (misdirected status writes)")
            }
            var result = StressResult(
                iommuRun: injectFaults ? "iommu-faults" : "kernel-free", mode: policy.name, safe: safe, options: options,
                ops: ops, elapsed: elapsed, dma: walkers, end: end, books: books, tablesFreed: tables, rcuCallbacks: 0,
                tlbFlushes: kernelFlushes,
                invalidationsPerTable: tables == 0 ? 0 : Double(freer.invalidations.load(ordering: .relaxed)) / Double(tables),
                faultsInjected: injectFaults ? faults.counts(iommu) : nil)
            result.tablesFreedBy = Dictionary(uniqueKeysWithValues: tablesFreedBy.map { ($0.key.rawValue, $0.value) })
            result.tablesStranded = freer.tablesStranded.load(ordering: .relaxed)
            result.judge(problems: problems)
            return result
        }
    }
}

/// Which online block each DMA walker is in, between its request and its
/// result.
private final class EnteredBlocks: Sendable {
    private final class Cell: Sendable {
        let block = Atomic<Int>(-1)
    }

    private let cells: [Cell]

    init(walkers: Int) {
        cells = (0..<walkers).map { _ in Cell() }
    }

    func set(_ walker: Int, _ block: Int?) {
        cells[walker].block.store(block ?? -1, ordering: .relaxed)
    }

    /// The block walker `walker` entered, forgetting it.
    func take(_ walker: Int) -> Int? {
        let b = cells[walker].block.exchange(-1, ordering: .relaxed)
        return b < 0 ? nil : b
    }
}
