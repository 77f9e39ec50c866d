/// mmu_notifier's arch_invalidate_secondary_tlbs: another TLB (an IOMMU
/// walking this mm through SVA) must drop [start, end) whenever the CPU's
/// TLB does. `freedTables` says whether page tables went too: only when
/// none did may the secondary keep its paging-structure caches (IH = 1).
public protocol MMUNotifier: AnyObject, Sendable {
    func invalidateSecondaryTLBs(mm: MM, start: UInt64, end: UInt64, freedTables: Bool)
}

extension MM {
    public func registerNotifier(_ notifier: any MMUNotifier) {
        notifiers.withLock { $0.append(notifier) }
    }

    public func unregisterNotifier(_ notifier: any MMUNotifier) {
        notifiers.withLock { list in list.removeAll { $0 === notifier } }
    }

    /// Called with every TLB flush of the mm. A fullmm flush (start = end
    /// = ~0) is a flush of everything. The leaf-only profile hides freed
    /// tables from the notifiers: the bug an IOMMU's walk caches expose.
    func invalidateSecondaryTLBs(start: UInt64, end: UInt64, freedTables: Bool) {
        let list = notifiers.withLock { $0 }
        guard !list.isEmpty else { return }
        let (s, e) = start == .max ? (0, UInt64.max) : (start, end)
        let freed = freedTables && profile.secondaryTLBFlush == .allLevels
        for n in list { n.invalidateSecondaryTLBs(mm: self, start: s, end: e, freedTables: freed) }
    }
}
