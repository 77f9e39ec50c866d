/// mmu_notifier's arch_invalidate_secondary_tlbs: another TLB (an IOMMU
/// walking this mm through SVA) must drop [start, end) whenever the CPU's
/// TLB does, its paging-structure caches included: the notifier is not told
/// whether page tables went, so it must assume they did.
///
/// `release` is mmu_notifier_release: exit_mmap calls it before it tears
/// anything down, and unhooks the notifier right after, so that the
/// invalidations of the teardown itself never reach it. Whatever walks the
/// mm's tables on the notifier's behalf must stop walking them in
/// `release` (intel_mm_release clears the PASID entry), because nothing
/// will tell it when they are freed.
public protocol MMUNotifier: AnyObject, Sendable {
    func invalidateSecondaryTLBs(mm: MM, start: UInt64, end: UInt64)
    func release(mm: MM)
}

extension MMUNotifier {
    /// No ->release: a notifier with nothing walking the mm's tables.
    public func release(mm: MM) {}
}

extension MM {
    public func registerNotifier(_ notifier: any MMUNotifier) {
        notifiers.withLock { $0.append(notifier) }
    }

    public func unregisterNotifier(_ notifier: any MMUNotifier) {
        notifiers.withLock { list in list.removeAll { $0 === notifier } }
    }

    /// __mmu_notifier_release: every notifier's `release`, then the list
    /// emptied, so that exit's own flushes reach none of them.
    func releaseNotifiers() {
        let list = notifiers.withLock { $0 }
        for n in list { n.release(mm: self) }
        notifiers.withLock { remaining in remaining.removeAll { n in list.contains { $0 === n } } }
    }

    /// Called with every TLB flush of the mm. A fullmm flush (start = end
    /// = ~0) is a flush of everything.
    public func invalidateSecondaryTLBs(start: UInt64, end: UInt64) {
        let list = notifiers.withLock { $0 }
        guard !list.isEmpty else { return }
        let (s, e) = start == .max ? (0, UInt64.max) : (start, end)
        for n in list { n.invalidateSecondaryTLBs(mm: self, start: s, end: e) }
    }
}
