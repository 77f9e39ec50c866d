import Synchronization

/// Every event the emulated IOMMU counts, updated lock-free from the
/// hardware thread, the drivers and the DMA walkers. Names follow what a
/// report prints (`iotlb_invalidations`, `qi_descriptors`, …).
public final class IOMMUCounters: Sendable {
    // hardware: the invalidation queue
    let descriptorsFetched = Atomic<UInt64>(0)
    // descriptors executed, by type
    let executedContextCache = Atomic<UInt64>(0)
    let executedIOTLB = Atomic<UInt64>(0)
    let executedDeviceTLB = Atomic<UInt64>(0)
    let executedInterruptEntryCache = Atomic<UInt64>(0)
    let executedWait = Atomic<UInt64>(0)
    let executedPASIDIOTLB = Atomic<UInt64>(0)
    let executedPASIDCache = Atomic<UInt64>(0)
    let executedPASIDDeviceTLB = Atomic<UInt64>(0)
    let statusWrites = Atomic<UInt64>(0)
    let completionInterrupts = Atomic<UInt64>(0)
    let waitsAborted = Atomic<UInt64>(0)
    let iqeRaised = Atomic<UInt64>(0)
    let iteRaised = Atomic<UInt64>(0)
    let iceRaised = Atomic<UInt64>(0)

    // driver: qi_submit_sync
    let qiSubmissions = Atomic<UInt64>(0)
    let qiDescriptors = Atomic<UInt64>(0)
    let qiRetries = Atomic<UInt64>(0)
    let queueFull = Atomic<UInt64>(0)
    let iqeHandled = Atomic<UInt64>(0)
    let iteHandled = Atomic<UInt64>(0)
    let iceHandled = Atomic<UInt64>(0)
    let qiTimeouts = Atomic<UInt64>(0)
    let qiLockups = Atomic<UInt64>(0)
    let misdirectedAborts = Atomic<UInt64>(0)
    let misdirectedCompletions = Atomic<UInt64>(0)
    let ringOverruns = Atomic<UInt64>(0)

    // translation: the DMA walker
    let walks = Atomic<UInt64>(0)
    let iotlbHits = Atomic<UInt64>(0)
    let iotlbMisses = Atomic<UInt64>(0)
    let pscHits = Atomic<UInt64>(0)
    let pasidCacheHits = Atomic<UInt64>(0)
    let pasidCacheMisses = Atomic<UInt64>(0)
    let contextCacheHits = Atomic<UInt64>(0)
    let contextCacheMisses = Atomic<UInt64>(0)
    let deviceTLBHits = Atomic<UInt64>(0)
    let faults = Atomic<UInt64>(0)
    let useAfterFree = Atomic<UInt64>(0)
    let useAfterFreeFromCache = Atomic<UInt64>(0)
    let writeAfterFree = Atomic<UInt64>(0)
    let accessedBitsSet = Atomic<UInt64>(0)
    let dirtyBitsSet = Atomic<UInt64>(0)

    init() {}

    func countExecuted(type: UInt8) {
        switch type {
        case 1: executedContextCache.add(1, ordering: .relaxed)
        case 2: executedIOTLB.add(1, ordering: .relaxed)
        case 3: executedDeviceTLB.add(1, ordering: .relaxed)
        case 4: executedInterruptEntryCache.add(1, ordering: .relaxed)
        case 5: executedWait.add(1, ordering: .relaxed)
        case 6: executedPASIDIOTLB.add(1, ordering: .relaxed)
        case 7: executedPASIDCache.add(1, ordering: .relaxed)
        default: executedPASIDDeviceTLB.add(1, ordering: .relaxed)
        }
    }

    public func snapshot() -> IOMMUStats {
        func l(_ a: borrowing Atomic<UInt64>) -> UInt64 { a.load(ordering: .relaxed) }
        let byType = [l(executedContextCache), l(executedIOTLB), l(executedDeviceTLB),
                      l(executedInterruptEntryCache), l(executedWait), l(executedPASIDIOTLB),
                      l(executedPASIDCache), l(executedPASIDDeviceTLB)]
        return IOMMUStats(
            descriptorsFetched: l(descriptorsFetched), executedByType: byType,
            iotlbInvalidations: byType[1] + byType[5],
            statusWrites: l(statusWrites), completionInterrupts: l(completionInterrupts),
            waitsAborted: l(waitsAborted), iqeRaised: l(iqeRaised), iteRaised: l(iteRaised), iceRaised: l(iceRaised),
            qiSubmissions: l(qiSubmissions), qiDescriptors: l(qiDescriptors), qiRetries: l(qiRetries),
            queueFull: l(queueFull), iqeHandled: l(iqeHandled), iteHandled: l(iteHandled),
            iceHandled: l(iceHandled), qiTimeouts: l(qiTimeouts), qiLockups: l(qiLockups),
            misdirectedAborts: l(misdirectedAborts), misdirectedCompletions: l(misdirectedCompletions), ringOverruns: l(ringOverruns),
            walks: l(walks), iotlbHits: l(iotlbHits), iotlbMisses: l(iotlbMisses), pscHits: l(pscHits),
            pasidCacheHits: l(pasidCacheHits), pasidCacheMisses: l(pasidCacheMisses),
            contextCacheHits: l(contextCacheHits), contextCacheMisses: l(contextCacheMisses),
            deviceTLBHits: l(deviceTLBHits), faults: l(faults),
            useAfterFree: l(useAfterFree), useAfterFreeFromCache: l(useAfterFreeFromCache),
            writeAfterFree: l(writeAfterFree), accessedBitsSet: l(accessedBitsSet), dirtyBitsSet: l(dirtyBitsSet))
    }
}

/// A plain copy of the counters, for reports (JSON) and tests.
public struct IOMMUStats: Sendable, Equatable, Codable {
    public var descriptorsFetched: UInt64
    /// Executed descriptors by type: element 0 is type 1 (context-cache) …
    /// element 7 is type 8 (PASID device-TLB).
    public var executedByType: [UInt64]
    /// IOTLB and PASID-IOTLB descriptors the hardware executed.
    public var iotlbInvalidations: UInt64
    public var statusWrites: UInt64
    public var completionInterrupts: UInt64
    /// Wait descriptors the hardware aborted after a device-TLB time-out.
    public var waitsAborted: UInt64
    public var iqeRaised: UInt64
    public var iteRaised: UInt64
    public var iceRaised: UInt64

    /// qi_submit_sync calls that reached the queue (a retry counts again).
    public var qiSubmissions: UInt64
    /// Descriptors callers submitted, without the appended waits.
    public var qiDescriptors: UInt64
    /// Resubmissions after an ITE aborted the submission's wait (-EAGAIN).
    public var qiRetries: UInt64
    /// Submissions that found fewer than count + 2 free slots and waited.
    public var queueFull: UInt64
    public var iqeHandled: UInt64
    public var iteHandled: UInt64
    public var iceHandled: UInt64
    /// Submissions given up with a device-TLB time-out (-ETIMEDOUT).
    public var qiTimeouts: UInt64
    /// qi_submit_sync calls that would never have returned (Linux driver).
    public var qiLockups: UInt64
    /// Linux driver: slots its ITE walk marked ABORT that held a wait the
    /// unit had not aborted (the owner resubmits while its first wait is
    /// still to run).
    public var misdirectedAborts: UInt64
    /// Linux driver: waits taken as done on a status the wait itself had not
    /// written yet (a refused descriptor's copy of it, or a late write into
    /// a reused slot): the submitter returned before its descriptors ran.
    public var misdirectedCompletions: UInt64
    /// Submissions posted into slots the unit had not fetched yet: the
    /// driver let slots go early (Linux after an IQE), so IQT reached or
    /// passed IQH and the unit skipped, or ran out of order, what it had
    /// not fetched.
    public var ringOverruns: UInt64

    public var walks: UInt64
    public var iotlbHits: UInt64
    public var iotlbMisses: UInt64
    /// Walks that started below the root thanks to a paging-structure cache.
    public var pscHits: UInt64
    public var pasidCacheHits: UInt64
    public var pasidCacheMisses: UInt64
    public var contextCacheHits: UInt64
    public var contextCacheMisses: UInt64
    public var deviceTLBHits: UInt64
    /// Translations refused: not present, not writable, unbound, non-canonical.
    public var faults: UInt64
    /// Walks that entered a page that is no longer a live table of the level
    /// they expected (freed, reused, or another level).
    public var useAfterFree: UInt64
    /// Of those, the ones that came from a cached entry (PSC or PASID cache).
    public var useAfterFreeFromCache: UInt64
    /// Accessed/dirty-bit writes that landed in such a page.
    public var writeAfterFree: UInt64
    public var accessedBitsSet: UInt64
    public var dirtyBitsSet: UInt64
}
