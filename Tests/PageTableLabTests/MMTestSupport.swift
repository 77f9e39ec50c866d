import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// A loaded allocator and a registered thread for the length of `body`,
/// with every deferred free drained and every page checked back at the end,
/// and no refused free, double queueing or failed notifier beyond
/// `expecting` (what the test provokes on purpose).
func withLab<R>(profile: MMProfile = .v6_14, budgetPages: Int = 16_384, expecting: Integrity = Integrity(),
                file: StaticString = #filePath, line: UInt = #line,
                _ body: (PageAllocator) throws -> R) throws -> R {
    var params = PageAllocator.Parameters()
    params.nodeBudgetPages = budgetPages
    let allocator = try PageAllocator(parameters: params)
    defer { allocator.unload() }
    let integrityBefore = Integrity.snapshot()
    return try RCU.withRegisteredThread {
        let result = try body(allocator)
        try RCU.barrier()
        XCTAssertEqual(allocator.totalAllocatedPages, 0, "pages not returned to the allocator", file: file, line: line)
        assertIntegrity(since: integrityBefore, expecting: expecting, file: file, line: line)
        return result
    }
}

/// The integrity counters moved by exactly `expecting` since `before`.
func assertIntegrity(since before: Integrity, expecting: Integrity = Integrity(),
                     file: StaticString = #filePath, line: UInt = #line) {
    let delta = Integrity.snapshot() - before
    XCTAssertEqual(delta, expecting, "integrity counters: \(delta.problems)", file: file, line: line)
}

extension Integrity {
    /// The counts a test provokes on purpose, for `withLab(expecting:)`.
    static func counting(doubleQueued: Int = 0, storesToFreedPages: Int = 0, badPageStates: Int = 0) -> Integrity {
        var i = Integrity()
        i.doubleQueued = doubleQueued
        i.storesToFreedPages = storesToFreedPages
        i.badPageStates = badPageStates
        return i
    }
}

extension MMProfile {
    /// 6.14+ with THP `always` for anonymous memory, and for shmem as asked.
    static func thpAlways(shmem: THPSettings.ShmemEnabled = .never) -> MMProfile {
        var profile = MMProfile.v6_14
        profile.thp = THPSettings(enabled: .always, shmemEnabled: shmem)
        return profile
    }
}

let tib: UInt64 = 1 << 40
let gib: UInt64 = 1 << 30
let mib: UInt64 = 1 << 20

/// Run a trace against the live kernel, again (up to five runs) while the
/// run was contaminated: VmPTE is per process, and something else changing
/// it during the trace — another thread, or the host kernel's own work on
/// this process's memory — shows either as interference the runner caught
/// (`TraceRun.interfered`) or as page tables left after cleanup, which the
/// trace cannot leave (its regions end empty). Contamination does not
/// repeat on cue; a disagreement between model and kernel does.
func runTolerantOfInterference(_ trace: Trace, targets: () throws -> [any TraceTarget],
                               profile: CompareProfile) rethrows -> TraceRun {
    try runTolerantOfInterference([trace], targets: targets, profile: profile)[0]
}

/// The release live comparisons stand for: this kernel's, as `ptlab
/// compare` takes it (a trace that needs a newer one is skipped).
let runningKernel = KernelVersion.running

/// The same for many traces: first all in one runner, which settles the
/// model's RCU callbacks (rcu_barrier, 10 ms or more) once before the
/// kernel's passes and once at the end rather than twice a trace; then
/// each contaminated one again on its own, up to four more times.
func runTolerantOfInterference(_ traces: [Trace], targets: () throws -> [any TraceTarget],
                               profile: CompareProfile) rethrows -> [TraceRun] {
    var runs = CompareRunner(targets: try targets(), profile: profile, kernel: runningKernel).run(traces)
    for t in runs.indices {
        for _ in 1..<5 where runs[t].interfered || runs[t].afterCleanup.contains(where: { $0 != 0 }) {
            runs[t] = CompareRunner(targets: try targets(), profile: profile, kernel: runningKernel).run(traces[t])
        }
    }
    return runs
}

/// Hold a grace period open: another thread sits in a read section from
/// init until `release()`, so "not freed yet" can be asserted without a race.
final class GracePeriodHolder {
    private let leave = DispatchSemaphore(value: 0)
    private let reader: RCUThread
    private var released = false

    init() {
        let inside = DispatchSemaphore(value: 0)
        let leave = self.leave
        reader = RCUThread {
            RCU.read {
                inside.signal()
                leave.wait()
            }
        }
        inside.wait()
    }

    func release() {
        guard !released else { return }
        released = true
        leave.signal()
        reader.join()
    }

    deinit { release() }
}

/// `body` with a grace period held open for its length.
func withGracePeriodHeld<R>(_ body: () throws -> R) rethrows -> R {
    let holder = GracePeriodHolder()
    defer { holder.release() }
    return try body()
}

/// A stress run as the tests use it: two walkers; a fixed amount of work
/// (`ops`) for a safe mode, or — `ops` nil, an unsafe mode — until the
/// first detection, with 30 s only as a bound so a dead detector fails
/// rather than hangs. `body` runs it on a freshly loaded allocator.
func runStressForTest(_ scenario: String, _ mode: String, ops: Int?,
                      _ body: (StressOptions, PageAllocator) throws -> StressResult) throws -> StressResult {
    var options = StressOptions(scenario: scenario, mode: mode)
    options.walkers = 2
    options.duration = 30
    options.maxOps = ops
    options.stopOnDetection = ops == nil
    var params = PageAllocator.Parameters()
    params.nodeBudgetPages = 16_384
    let allocator = try PageAllocator(parameters: params)
    defer { allocator.unload() }
    let integrityBefore = Integrity.snapshot()
    let result = try body(options, allocator)
    assertIntegrity(since: integrityBefore)
    return result
}

extension MM {
    /// Whether a fault at `address` would take its VMA's lock alone now.
    /// The lock is dropped again at once, so that an assertion that fails
    /// cannot leave it held for a writer or exit() to wait on for ever.
    func faultWouldLockVMA(at address: UInt64) -> Bool {
        guard let locked = lockVMAUnderRCU(address) else { return false }
        vmaLocks.endRead(locked)
        return true
    }
}
