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

    /// log2 of how many deferred frees each thread queues per timed one,
    /// unless set otherwise. A sample costs two clock reads (one when the
    /// free is queued, one when it happens) and this histogram's lock: tens
    /// of nanoseconds, which must stay a small part of a table's free once
    /// spread over the frees not sampled (BENCHMARKS.md). One in 256 still
    /// gives a flood of 2^18 tables 1,024 samples, and a second of steady
    /// freeing some hundred thousand; a short stress that wants its tail
    /// sets 0 and times every free. The sample is every 2^shift-th free each
    /// thread queues, which has nothing to do with how long a table waits,
    /// so the distribution is not skewed; and unlike a choice by PFN it
    /// samples a run that recycles a few table pages.
    public static let defaultSampleShift = 8
    public static let sampleShifts = 0...16

    /// One deferred free in 2^sampleShift that each thread queues is timed
    /// (the module parameter free_latency_sample_shift). Set it between
    /// runs: each thread's count goes on from where it was, so the first
    /// sample after a change may come early.
    public static var sampleShift: Int {
        get { Int(ptlab_latency_shift()) }
        set {
            precondition(sampleShifts.contains(newValue), "free-latency sample shift \(newValue) is outside \(sampleShifts)")
            ptlab_latency_set_shift(UInt32(newValue))
        }
    }

    public static var sampleEvery: UInt32 { 1 << UInt32(sampleShift) }

    /// Whether the free the calling thread queues now is timed.
    @inline(__always)
    static func samplesNextQueued() -> Bool { ptlab_latency_sample() != 0 }

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
