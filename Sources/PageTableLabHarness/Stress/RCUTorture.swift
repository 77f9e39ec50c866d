#if canImport(Glibc)
import PageTableLab
import Glibc
#endif
import Synchronization

/// An rcutorture-style check of the RCU layer itself.
///
/// A writer keeps replacing a published object; after each replacement it
/// waits for a grace period and counts it. Readers, inside read sections,
/// take the published object, dawdle, and then look at its age: how many
/// counted grace periods ended since it was retired. A reader still holding
/// it after a whole grace period is exactly what RCU forbids, so any age
/// above zero is a failure. The `noGracePeriod` writer skips the wait — the
/// failure every read-side bug looks like — and must be caught.
public struct RCUTorture {
    public enum Writer: String, Sendable, CaseIterable, Codable {
        /// synchronize_rcu between retiring and counting.
        case synchronize
        /// Unsafe: count the grace period without waiting for it.
        case noGracePeriod = "no-grace-period"
    }

    public struct Result: Sendable, Codable, Equatable {
        public var writer: String
        public var updates: Int
        public var reads: Int
        /// Reads that saw an object older than one grace period.
        public var failures: Int
        public var maxAge: Int
        public var pass: Bool

        enum CodingKeys: String, CodingKey {
            case writer, updates, reads, failures, pass
            case maxAge = "max_age_gp"
        }
    }

    /// The objects the writer publishes: a fixed pool, reused round-robin.
    final class Pool: Sendable {
        static let size = 64
        final class Slot: Sendable {
            /// Grace-period count when the slot was retired (.max: live).
            let retiredAt = Atomic<UInt64>(.max)
        }
        let slots = (0..<size).map { _ in Slot() }
        let current = Atomic<Int>(0)
        let gracePeriods = Atomic<UInt64>(0)
    }

    public let writer: Writer
    public let readers: Int
    public let updates: Int

    public init(writer: Writer, readers: Int = 2, updates: Int = 2_000) {
        self.writer = writer
        self.readers = readers
        self.updates = updates
    }

    /// Run until `updates` replacements are done (or, unsafe, until the
    /// first failure is seen).
    public func run() -> Result {
        let pool = Pool()
        let stop = Atomic<Bool>(false)
        let reads = Atomic<Int>(0)
        let failures = Atomic<Int>(0)
        let maxAge = Atomic<UInt64>(0)
        let started = Atomic<Int>(0)
        let threads = (0..<readers).map { _ in
            RCUThread {
                var local = 0
                while !stop.load(ordering: .relaxed) {
                    RCU.read {
                        let slot = pool.current.load(ordering: .acquiring)
                        // Hold it a while, as a real reader works on what it found.
                        for _ in 0..<64 { _ = pool.current.load(ordering: .relaxed) }
                        let retired = pool.slots[slot].retiredAt.load(ordering: .acquiring)
                        let now = pool.gracePeriods.load(ordering: .acquiring)
                        if retired != .max && now > retired {
                            failures.add(1, ordering: .relaxed)
                            let age = now - retired
                            if age > maxAge.load(ordering: .relaxed) { maxAge.store(age, ordering: .relaxed) }
                        }
                    }
                    local += 1
                    if local == 1 { started.add(1, ordering: .releasing) }
                }
                reads.add(local, ordering: .relaxed)
            }
        }
        var done = 0
        // The writer starts once every reader is reading.
        while started.load(ordering: .acquiring) < readers { sched_yield() }
        RCU.withRegisteredThread {
            while done < updates && !(writer == .noGracePeriod && failures.load(ordering: .relaxed) > 0) {
                let old = pool.current.load(ordering: .relaxed)
                let new = (old + 1) % Pool.size
                pool.slots[new].retiredAt.store(.max, ordering: .releasing)
                pool.current.store(new, ordering: .releasing)
                pool.slots[old].retiredAt.store(pool.gracePeriods.load(ordering: .relaxed), ordering: .releasing)
                // The writer is registered and outside any read section, so
                // the wait cannot be refused; if it were, the slot would be
                // reused with readers in it.
                if writer == .synchronize {
                    do { try RCU.synchronize() } catch { preconditionFailure("rcutorture's writer: \(error)") }
                }
                pool.gracePeriods.add(1, ordering: .acquiringAndReleasing)
                done += 1
            }
        }
        stop.store(true, ordering: .relaxed)
        for t in threads { t.join() }
        let failed = failures.load(ordering: .relaxed)
        return Result(writer: writer.rawValue, updates: done, reads: reads.load(ordering: .relaxed),
                      failures: failed, maxAge: Int(maxAge.load(ordering: .relaxed)),
                      pass: writer == .synchronize ? failed == 0 : failed > 0)
    }
}
