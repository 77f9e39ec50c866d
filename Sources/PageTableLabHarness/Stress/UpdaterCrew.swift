import PageTableLab
import Synchronization

/// The updater threads of a stress run: the calling thread and `count - 1`
/// more, each taking the scenario's steps with its own seed, under the
/// locks each step takes itself. The first to reach the end (the duration,
/// the run's op budget, a detection worth stopping at, or an error) stops
/// them all.
final class UpdaterCrew: Sendable {
    private let options: StressOptions
    private let scenario: Scenario
    private let mm: MM
    private let region: StressRegion
    private let count: Int
    /// Detections that end the run under --stop-on-detect.
    private let watched: @Sendable () -> Int
    /// Walks and detections so far, for the progress line.
    private let walks: @Sendable () -> (Int, Int)
    private let stopFlag = Atomic<Bool>(false)
    /// Steps begun (what the op budget limits) and steps completed.
    private let begun = Atomic<Int>(0)
    private let ops = Atomic<Int>(0)
    private let failure = LabMutex<(any Error)?>(nil)

    init(options: StressOptions, scenario: Scenario, mm: MM, region: StressRegion, count: Int,
         watched: @escaping @Sendable () -> Int, walks: @escaping @Sendable () -> (Int, Int)) {
        self.options = options
        self.scenario = scenario
        self.mm = mm
        self.region = region
        self.count = count
        self.watched = watched
        self.walks = walks
    }

    /// Run every updater to the end: the ops done, the seconds taken, and
    /// the first error an updater met.
    func run() -> (ops: Int, elapsed: Double, failure: (any Error)?) {
        let start = monotonicNanoseconds()
        let others = (1..<count).map { index in RCUThread { [self] in update(index, start: start) } }
        update(0, start: start)
        for thread in others { thread.join() }
        let elapsed = Double(monotonicNanoseconds() - start) / 1e9
        return (ops.load(ordering: .relaxed), elapsed, failure.withLock { $0 })
    }

    private func update(_ index: Int, start: UInt64) {
        var rng = SplitMix64(seed: options.seed &+ UInt64(index) &* 0x9E37_79B9_7F4A_7C15)
        var nextReport = start
        let budget = options.maxOps ?? .max
        while !stopFlag.load(ordering: .relaxed) {
            let now = monotonicNanoseconds()
            let elapsed = Double(now - start) / 1e9
            if elapsed >= options.duration || (options.stopOnDetection && watched() > 0) { break }
            guard begun.add(1, ordering: .relaxed).oldValue < budget else { break }
            do {
                try scenario.step(mm, region, &rng)
            } catch {
                failure.withLock { $0 = $0 ?? error }
                break
            }
            ops.add(1, ordering: .relaxed)
            if index == 0, let progress = options.progress, now >= nextReport {
                nextReport = now + 500_000_000
                let (walks, uaf) = walks()
                progress(StressProgress(elapsed: elapsed, duration: options.duration, ops: ops.load(ordering: .relaxed),
                                        walks: walks, uaf: uaf))
            }
        }
        stopFlag.store(true, ordering: .relaxed)
    }
}
