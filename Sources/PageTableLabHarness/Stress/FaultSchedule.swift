#if canImport(Glibc)
import PageTableLab
import Glibc
#endif
import Synchronization

/// Round-robin fault injection for iommu-faults: IQE, ITE, ICE, then a
/// queue-full episode (fetching stalled while submitters pile up).
final class FaultSchedule: Sendable {
    private let next = Atomic<Int>(0)
    private let queueFull = Atomic<Int>(0)
    /// fillQueue submitters that have returned, over all episodes.
    private let submittersFinished = Atomic<Int>(0)
    /// The PASID the queue-full episodes flush (one of the run's bonds).
    private let pasid: UInt32

    init(pasid: UInt32) {
        self.pasid = pasid
    }

    /// The IQE goes to the second descriptor fetched after it is armed:
    /// inside the batch of the next kernel-range flush (a PASID-IOTLB and a
    /// PASID device-TLB descriptor per bound mm), where Linux's
    /// qi_check_fault does not look for it.
    func injectNext(iommu: IntelIOMMU) {
        switch next.add(1, ordering: .relaxed).newValue % 4 {
        case 1: iommu.faultInjection.injectIQE(skipping: 1)
        case 2: iommu.faultInjection.injectITE()
        case 3: iommu.faultInjection.injectICE()
        default: fillQueue(iommu: iommu)
        }
    }

    /// Stall the hardware, let three submitters of large batches fill the
    /// ring until one must wait for room (qi_submit_sync's count + 2 rule),
    /// then let the hardware go: every submission must still complete.
    /// The stall ends as soon as a submitter waits for room or one has
    /// finished (one that failed early never fills the ring).
    private func fillQueue(iommu: IntelIOMMU) {
        let before = iommu.counters.snapshot().queueFull
        let finishedBefore = submittersFinished.load(ordering: .acquiring)
        let flush = InvalidationDescriptor.pasidIOTLB(PASIDIOTLBInvalidation(did: 1, pasid: pasid, granularity: .pasid)).encode()
        let batch = [RawDescriptor](repeating: flush, count: iommu.queueLength * 2 / 5)
        iommu.faultInjection.stallFetching()
        let submitters = (0..<3).map { _ in
            RCUThread { [self] in
                submit(batch, to: iommu)
                submittersFinished.add(1, ordering: .releasing)
            }
        }
        while iommu.counters.snapshot().queueFull == before,
              submittersFinished.load(ordering: .acquiring) == finishedBefore {
            sched_yield()
        }
        iommu.faultInjection.resumeFetching()
        for t in submitters { t.join() }
        queueFull.add(1, ordering: .relaxed)
    }

    /// An IQE injected earlier and not yet consumed may land on the batch:
    /// refused, so the caller submits it again, as any caller of
    /// qi_submit_sync that needs the flush would. Once is enough: only the
    /// thread blocked in fillQueue injects, so no other IQE can be armed
    /// meanwhile.
    private func submit(_ batch: [RawDescriptor], to iommu: IntelIOMMU) {
        do {
            do {
                try iommu.qiSubmitSync(batch)
            } catch QIError.invalidDescriptor(_, _, _, true, _) {
                try iommu.qiSubmitSync(batch)
            }
        } catch {
            lost.add(1, ordering: .relaxed)
        }
    }

    /// Meet every fault still armed with kernel-range flushes before the
    /// teardown unbinds. The churn's deferred flushes are rare (a few per
    /// hundred tables), so the last injections may have met none, and an
    /// unbind that meets one fails, retried by nobody. These flushes take
    /// the churn's own path (SVA's KVA invalidation), so each fault is
    /// handled and counted as in the run: the refused descriptor sent
    /// again, the ITE's aborted wait resubmitted by qi_submit_sync as in
    /// the kernel, the ICE's flush taken as done. Gives up when a flush
    /// fails (counted as a KVA failure) or meets nothing, leaving the
    /// unbinds to report what is left rather than spinning.
    func drain(_ sva: SVA) {
        var left = sva.iommu.faultInjection.armed
        while left > 0, sva.invalidateKVARange() {
            let now = sva.iommu.faultInjection.armed
            guard now < left else { return }
            left = now
        }
    }

    /// Queue-full submissions that failed, other than by an injected IQE
    /// (resubmitted): each one is something lost.
    let lost = Atomic<Int>(0)

    func counts(_ iommu: IntelIOMMU) -> StressResult.FaultsInjected {
        let i = iommu.faultInjection.injected
        return .init(iqe: Int(i.iqe), ite: Int(i.ite), ice: Int(i.ice), queueFull: queueFull.load(ordering: .relaxed))
    }
}
