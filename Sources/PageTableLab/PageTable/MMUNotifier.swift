/// mmu_notifier's arch_invalidate_secondary_tlbs: another TLB (an IOMMU
/// walking this mm through SVA) must drop [start, end) whenever the CPU's
/// TLB does, its paging-structure caches included: the notifier is not told
/// whether page tables went, so it must assume they did.
public protocol MMUNotifier: AnyObject, Sendable {
    func invalidateSecondaryTLBs(mm: MM, start: UInt64, end: UInt64)
}

extension MM {
    public func registerNotifier(_ notifier: any MMUNotifier) {
        notifiers.withLock { $0.append(notifier) }
    }

    public func unregisterNotifier(_ notifier: any MMUNotifier) {
        notifiers.withLock { list in list.removeAll { $0 === notifier } }
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
