#if canImport(Glibc)
import Glibc
#endif
import PageTableLab
import Synchronization

/// `ptlab stress oom-reap`: processes killed for memory while their threads
/// are still at work, reaped by the OOM reaper (or process_mrelease) beside
/// those threads and then beside their own exit.
///
/// Each process is a new mm: private memory over all but the region's last
/// PTE table, shared memory over that one, all faulted in. Its threads
/// (`--updaters`, default 2) fault private and shared pages and
/// MADV_DONTNEED private ranges (PT_RECLAIM frees the tables they empty),
/// each under its VMA's lock, while walker threads walk it (GUP-fast,
/// pte_offset_map, pte_offset_map_lock). After a random number of their
/// ops the process is killed. In three processes of four a reaper thread
/// runs oom_reap_task_mm at once, under the mmap read lock beside the
/// faults, the DONTNEEDs and the walks; each thread faults a few more times
/// after the reap, then dies, and the process exits. In the fourth the
/// threads die first, and the reaper (process_mrelease, or the OOM reaper
/// that has waited for the victim) and exit_mmap start together: the
/// reaper a step ahead or a step behind (its zap beside exit's unmap, each
/// PTE taken by whichever clears it first, exit's free_pgtables after it),
/// or once exit has unmapped (it meets exit's write lock, or MMF_OOM_SKIP).
///
/// What must hold: no walker meets a freed table, no page is lost or freed
/// twice, and no fault that begins after a reap has finished maps private
/// memory again (MMF_UNSTABLE: it gets SIGBUS; the mm counts one that
/// does, `MM.refaultsAfterReap`). The unsafe mode
/// `ignore-unstable` is the kernel before MMF_UNSTABLE, caught by
/// `reaped_refault`: a thread reads zeros where its data was.
public struct OOMReapStress {
    /// The mode names `--mode` takes, the safe one first.
    public static let modes = ["kernel", "ignore-unstable"]
    /// What each walker thread walks in turn.
    public static let walkers: [Scenario.Walker] = [.gupFast, .pteOffsetMap(.rcu), .pteOffsetMapLock]
    static let stride: UInt64 = 64 << 10

    public let options: StressOptions
    public let safe: Bool
    public var updaters: Int { options.updaters ?? 2 }

    public init(_ options: StressOptions) throws(StressError) {
        guard Self.modes.contains(options.mode) else {
            throw .unknownMode(scenario: "oom-reap", mode: options.mode, known: Self.modes)
        }
        guard options.walkers >= 1, options.walkers <= 64 else { throw .invalidOption("--walkers must be 1...64") }
        guard (1...16).contains(options.updaters ?? 2) else { throw .invalidOption("--updaters must be 1...16 for oom-reap") }
        guard options.duration > 0, options.duration <= 86_400 else { throw .invalidOption("--duration must be in (0, 86400] seconds") }
        guard options.tables >= 2, options.tables <= 512 else { throw .invalidOption("oom-reap needs 2...512 tables (private and shared)") }
        self.options = options
        safe = options.mode == Self.modes[0]
    }

    public func run(allocator: PageAllocator) throws -> StressResult {
        var profile = MMProfile()
        profile.thp = options.thp
        profile.tlbFlush = options.tlbFlush
        profile.faultsIgnoreUnstable = !safe
        let region = StressRegion(base: StressRunner.regionBase, tables: options.tables)
        let books = StressBooks(allocator)
        let tally = ReapTally()
        return try RCU.withRegisteredThread {
            var rng = SplitMix64(seed: options.seed)
            var counters = WalkCounters()
            var tlbFlushes = 0
            var thp = StressResult.THPEvents()
            var vmaLocks = StressResult.VMALocks()
            let start = monotonicNanoseconds()
            var elapsed = 0.0
            var nextReport = start
            var failure: (any Error)?
            while elapsed < options.duration, tally.ops.load(ordering: .relaxed) < options.maxOps ?? .max,
                  !(options.stopOnDetection && tally.detected(safe: safe, walks: counters)) {
                do {
                    let mm = try MM(allocator: allocator, profile: profile)
                    counters = counters + (try live(mm, region: region, seed: rng.next(), rng: &rng, tally: tally))
                    tlbFlushes += mm.tlb.remoteFlushes.load(ordering: .relaxed)
                    thp = thp + StressResult.THPEvents(mm.thpEvents)
                    vmaLocks = vmaLocks + StressResult.VMALocks(mm.vmaLockEvents)
                } catch {
                    failure = error
                    break
                }
                let now = monotonicNanoseconds()
                elapsed = Double(now - start) / 1e9
                if let progress = options.progress, now >= nextReport {
                    nextReport = now + 500_000_000
                    progress(StressProgress(elapsed: elapsed, duration: options.duration, ops: tally.ops.load(ordering: .relaxed),
                                            walks: counters.walks, uaf: counters.useAfterFree))
                }
            }
            let deferredPeak = books.deferredMonitor.stop()
            try RCU.barrier()
            if let failure { throw failure }
            counters[.reapedRefault] = tally.refaults.load(ordering: .relaxed)
            var result = StressResult(
                scenario: "oom-reap", path: nil, mode: options.mode, safe: safe, expectedDetector: safe ? nil : .reapedRefault,
                seed: options.seed, walkers: options.walkers, durationSeconds: elapsed, ops: tally.ops.load(ordering: .relaxed),
                walks: counters.walks, uafDetected: counters.useAfterFree, leakedPages: books.leakedPages,
                tablesFreed: books.tablesFreedSince, rcuCallbacks: books.callbacksSince, tlbFlushes: tlbFlushes,
                peakDeferredBytes: Int(deferredPeak), freeLatencyUs: FreeLatency.summary(), detections: counters,
                integrity: books.integritySince, pass: false, verdict: "")
            result.updaters = updaters
            result.walkerContexts = Self.walkers
            result.tlbFlush = options.tlbFlush
            result.thp = StressResult.THPPolicy(profile.thp)
            result.thpEvents = thp
            result.vmaLocks = vmaLocks
            result.oomReaps = tally.reaps
            result.sigbusFaults = tally.sigbus.load(ordering: .relaxed)
            result.sigbusBesideReap = tally.sigbusBesideReap.load(ordering: .relaxed)
            result.judge(problems: tally.problems(safe: safe))
            return result
        }
    }

    /// One process, from its mmap to its exit: the walkers' counts.
    private func live(_ mm: MM, region: StressRegion, seed: UInt64, rng: inout SplitMix64,
                      tally: ReapTally) throws -> WalkCounters {
        let privateLength = region.length - MM.pmdSize
        let life = Life(after: 1 + Int(rng.next() % 8), threads: updaters)
        do {
            try mm.mmap(address: region.base, length: privateLength)
            try mm.mmap(address: region.base + privateLength, length: MM.pmdSize, shared: true)
            try mm.touch(address: region.base, length: region.length, stride: Self.stride)
        } catch {
            mm.exit()
            throw error
        }
        let crew = WalkerCrew(mm: mm, region: region, walkers: Self.walkers, count: options.walkers, seed: seed,
                              watching: nil, iommu: nil)
        let threads = (0..<updaters).map { i in
            RCUThread { Self.fault(mm, region: region, seed: seed &+ UInt64(i + 1) &* 0x9E37_79B9_7F4A_7C15, life: life, tally: tally) }
        }
        crew.waitUntilEveryWalkerWalks()
        // The kill, after some of the threads' ops (they began while the
        // walkers were starting).
        let killAt = life.ops.load(ordering: .relaxed) + Int(rng.next() % 64)
        while life.ops.load(ordering: .relaxed) < killAt && life.running.load(ordering: .relaxed) > 0 { sched_yield() }
        let besideThreads = rng.next() % 4 != 0
        if besideThreads {
            // The reaper beside the threads, each of which faults `after`
            // times past the reap, then dies.
            RCUThread { tally.count(Self.reap(mm, life: life)) }.join()
            if !life.reaped.load(ordering: .acquiring) { life.stop.store(true, ordering: .relaxed) }
        } else {
            life.stop.store(true, ordering: .relaxed)
        }
        for thread in threads { thread.join() }
        let counters = crew.stop()
        if besideThreads {
            mm.exit()
        } else {
            Self.exitBesideAReaper(mm, start: rng.next() % 3, life: life, tally: tally)
        }
        tally.ops.add(life.ops.load(ordering: .relaxed), ordering: .relaxed)
        tally.refaults.add(mm.refaultsAfterReap.load(ordering: .relaxed), ordering: .relaxed)
        if mm.zapsOfFreedTables.load(ordering: .relaxed) > 0 { tally.freedUnderReap.add(1, ordering: .relaxed) }
        if mm.pgtablesBytes != 0 { tally.tablesLeftAfterExit.add(1, ordering: .relaxed) }
        if let error = life.failure.withLock({ $0 }) { throw error }
        return counters
    }

    /// The threads are dead: the reaper (process_mrelease, say) and
    /// exit_mmap start together, each on a CPU of its own (on one CPU the
    /// scheduler runs one to its end before the other begins). The reaper
    /// goes a step ahead (`start` 0), a step behind (1), or once exit has
    /// unmapped (2), when it meets exit's write lock or MMF_OOM_SKIP.
    private static func exitBesideAReaper(_ mm: MM, start: UInt64, life: Life, tally: ReapTally) {
        let started = Atomic<Bool>(false)
        let cpus = NUMATopology.current.nodes.flatMap(\.cpus)
        let reaper = RCUThread(cpu: cpus.count >= 2 ? cpus[1] : nil) {
            started.store(true, ordering: .relaxed)
            switch start {
            case 0: break
            case 1: while !mm.hasExited { sched_yield() }
            default: while !(mm.hasExited && mm.vmas.isEmpty) { sched_yield() }
            }
            tally.count(Self.reap(mm, life: life))
        }
        if cpus.count >= 2 { pinCurrentThread(toCPU: cpus[0]) }
        while !started.load(ordering: .relaxed) { sched_yield() }
        mm.exit()
        if cpus.count >= 2 { unpinCurrentThread() }
        reaper.join()
    }

    /// How one process's reap went. `besideExit`: exit_mmap began before
    /// the reap ended (their zaps may have run together).
    fileprivate struct Reap {
        var outcome: OOMReapOutcome
        var contended: Int
        var besideExit: Bool
    }

    /// oom_reap_task_mm as the reaper thread retries it: a contended
    /// trylock is tried again (the kernel's reaper retries ten times, a
    /// tenth of a second apart; exit's write lock is the only writer here).
    private static func reap(_ mm: MM, life: Life) -> Reap {
        var contended = 0
        while true {
            let outcome = mm.oomReap()
            guard outcome == .contended else {
                if outcome == .reaped { life.reaped.store(true, ordering: .releasing) }
                return Reap(outcome: outcome, contended: contended, besideExit: outcome == .reaped && mm.hasExited)
            }
            contended += 1
            sched_yield()
        }
    }

    /// One of the process's threads: faults, and DONTNEED with PT_RECLAIM,
    /// until it dies. A fault that got SIGBUS and began before the reap
    /// was known to be over ran beside it (the reaped refaults, faults that
    /// began after it and mapped all the same, the mm counts itself).
    private static func fault(_ mm: MM, region: StressRegion, seed: UInt64, life: Life, tally: ReapTally) {
        defer { life.running.subtract(1, ordering: .relaxed) }
        var rng = SplitMix64(seed: seed)
        var afterReap = 0
        let privateTables = region.tables - 1
        while !life.stop.load(ordering: .relaxed) && afterReap < life.after {
            let reapedBefore = life.reaped.load(ordering: .acquiring)
            let table = region.table(Int(rng.next() % UInt64(privateTables)))
            let page = table + (rng.next() % 512) << 12
            let choice = rng.next() % 8
            do {
                switch choice {
                case 0...4:
                    try mm.touch(address: page, length: 4096)
                case 5:
                    try mm.touch(address: region.table(privateTables) + (rng.next() % 512) << 12, length: 4096)
                case 6:
                    try mm.madviseDontneed(address: table, length: MM.pmdSize)
                default:
                    try mm.madviseDontneed(address: page & ~(Self.stride - 1), length: Self.stride)
                }
            } catch .unstableAddressSpace {
                tally.sigbus.add(1, ordering: .relaxed)
                if !reapedBefore { tally.sigbusBesideReap.add(1, ordering: .relaxed) }
            } catch {
                life.failure.withLock { $0 = $0 ?? error }
                return
            }
            life.ops.add(1, ordering: .relaxed)
            if reapedBefore { afterReap += 1 }
        }
    }
}

/// One process's shared state: its threads' ops, whether it has been
/// reaped, when its threads die.
private final class Life: Sendable {
    let ops = Atomic<Int>(0)
    let running: Atomic<Int>
    let reaped = Atomic<Bool>(false)
    let stop = Atomic<Bool>(false)
    /// Ops each thread makes after seeing the reap, before it dies.
    let after: Int
    let failure = LabMutex<(any Error)?>(nil)

    init(after: Int, threads: Int) {
        self.after = after
        running = Atomic(threads)
    }
}

/// The run's counts, over every process.
private final class ReapTally: Sendable {
    let ops = Atomic<Int>(0)
    let sigbus = Atomic<Int>(0)
    let sigbusBesideReap = Atomic<Int>(0)
    let refaults = Atomic<Int>(0)
    let freedUnderReap = Atomic<Int>(0)
    let tablesLeftAfterExit = Atomic<Int>(0)
    private let outcomes = LabMutex(StressResult.OOMReaps())

    func count(_ reap: OOMReapStress.Reap) {
        outcomes.withLock {
            $0.contended += reap.contended
            if reap.besideExit { $0.besideExit += 1 }
            switch reap.outcome {
            case .reaped: $0.reaped += 1
            case .skipped: $0.skipped += 1
            case .gone: $0.gone += 1
            case .contended: break
            }
        }
    }

    var reaps: StressResult.OOMReaps { outcomes.withLock { $0 } }

    func detected(safe: Bool, walks: WalkCounters) -> Bool {
        refaults.load(ordering: .relaxed) > 0 || (safe && walks.useAfterFree > 0)
    }

    /// What fails a run besides its detections.
    func problems(safe: Bool) -> [String] {
        var problems: [String] = []
        let freed = freedUnderReap.load(ordering: .relaxed)
        if freed > 0 { problems.append("\(freed) reaps walked a table freed under them") }
        let left = tablesLeftAfterExit.load(ordering: .relaxed)
        if left > 0 { problems.append("\(left) processes kept VmPTE after exit") }
        if safe && reaps.reaped == 0 {
            problems.append("no process was reaped: nothing was tested; give it a longer --duration")
        } else if safe && sigbus.load(ordering: .relaxed) == 0 {
            problems.append("no fault met a reaped process (sigbus_faults 0): the threads never faulted after a reap; give it a longer --duration")
        }
        return problems
    }
}
