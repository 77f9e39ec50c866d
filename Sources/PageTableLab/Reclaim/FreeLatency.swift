internal import CSupport
import Histogram
import Synchronization

/// Queue-to-free latency of deferred page-table frees: how long a table
/// unlinked by an updater waits (flush + grace period + worker) before it is
/// back in the allocator, for one free in `sampleEvery`. Recorded from RCU
/// callbacks, so the histogram is fixed-size (no resize, hence no
/// allocation) behind a short lock.
public enum FreeLatency {
    /// One minute, in nanoseconds: anything longer is clamped.
    static let ceiling: UInt64 = 60_000_000_000
    static let histogram = LabMutex(Histogram<UInt64>(highestTrackableValue: ceiling, numberOfSignificantValueDigits: .two))

    /// One deferred free in this many is timed. A sample costs two clock
    /// reads (one when the free is queued, one when it happens) and this
    /// histogram's lock: tens of nanoseconds, which must stay a small part
    /// of a table's free once spread over the frees not sampled
    /// (BENCHMARKS.md). One in 256 still gives a flood of 2^18 tables 1,024
    /// samples, and a second of steady freeing some hundred thousand. The
    /// sample is every 256th free each thread queues, which has nothing to
    /// do with how long a table waits, so the distribution is not skewed;
    /// and unlike a choice by PFN it samples a run that recycles a few
    /// table pages.
    static let sampleEvery: UInt32 = 256

    /// Whether the free the calling thread queues now is timed.
    @inline(__always)
    static func samplesNextQueued() -> Bool { ptlab_latency_sample(sampleEvery) != 0 }

    static func record(nanoseconds: UInt64) {
        histogram.withLock { _ = $0.record(min(nanoseconds, ceiling)) }
    }

    /// Percentiles in microseconds, Codable with the keys the stress JSON uses.
    public struct Summary: Codable, Sendable, Equatable {
        public var p50: Double
        public var p99: Double
        public var max: Double
        public var count: UInt64
    }

    public static func summary() -> Summary {
        histogram.withLock { h in
            Summary(p50: Double(h.valueAtPercentile(50)) / 1000, p99: Double(h.valueAtPercentile(99)) / 1000,
                    max: Double(h.totalCount == 0 ? 0 : h.max) / 1000, count: h.totalCount)
        }
    }

    /// The latency in microseconds at each of `percentiles`; empty when
    /// nothing was recorded.
    public static func microseconds(atPercentiles percentiles: [Double]) -> [Double] {
        histogram.withLock { h in h.totalCount == 0 ? [] : percentiles.map { Double(h.valueAtPercentile($0)) / 1000 } }
    }

    public static func reset() { histogram.withLock { $0.reset() } }
}
