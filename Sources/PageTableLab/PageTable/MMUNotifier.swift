/// mmu_notifier's arch_invalidate_secondary_tlbs: another TLB (an IOMMU
/// walking this mm through SVA) must drop [start, end) whenever the CPU's
/// TLB does, its paging-structure caches included: the notifier is not told
/// whether page tables went, so it must assume they did.
///
/// `release` is mmu_notifier_release: exit_mmap calls it before it tears
/// anything down, and unhooks every notifier once all are released, so
/// that the invalidations of the teardown itself never reach them.
/// Whatever walks the mm's tables on the notifier's behalf must stop
/// walking them in `release` (intel_mm_release clears the PASID entry),
/// because nothing will tell it when they are freed.
public protocol MMUNotifier: AnyObject, Sendable {
    func invalidateSecondaryTLBs(mm: MM, start: UInt64, end: UInt64)
    func release(mm: MM)
}

extension MMUNotifier {
    /// No ->release: a notifier with nothing walking the mm's tables.
    public func release(mm: MM) {}
}

/// An mm's notifiers, and whether exit has released them: none may be
/// registered after that (mmu_notifier_register wants a live mm).
struct NotifierList {
    var list: [any MMUNotifier] = []
    var released = false
}

extension MM {
    /// mmu_notifier_register; false, registering nothing, once the mm has
    /// exited (the notifier would hear nothing from it).
    @discardableResult
    public func registerNotifier(_ notifier: any MMUNotifier) -> Bool {
        registerNotifier(notifier) {} != nil
    }

    /// Register `notifier` once `setUp` has run, both under the list's lock,
    /// so that exit's release either finds the notifier registered or finds
    /// neither done; nil, running neither, once the mm has exited.
    func registerNotifier<R, E: Error>(_ notifier: any MMUNotifier, after setUp: () throws(E) -> R) throws(E) -> R? {
        try notifiers.withLock { (n: inout NotifierList) throws(E) -> R? in
            guard !n.released else { return nil }
            let result = try setUp()
            n.list.append(notifier)
            return result
        }
    }

    public func unregisterNotifier(_ notifier: any MMUNotifier) {
        notifiers.withLock { $0.list.removeAll { $0 === notifier } }
    }

    /// __mmu_notifier_release: the list closed to new notifiers, every
    /// notifier on it released, then the list emptied, so that exit's own
    /// flushes reach none of them. Released before unhooked, as the kernel
    /// does: a flush from an op still running on the mm still reaches a
    /// notifier until its release has made that flush unneeded.
    func releaseNotifiers() {
        let list = notifiers.withLock { (n: inout NotifierList) -> [any MMUNotifier] in
            n.released = true
            return n.list
        }
        for n in list { n.release(mm: self) }
        notifiers.withLock { $0.list.removeAll() }
    }

    /// Called with every TLB flush of the mm. A fullmm flush (start = end
    /// = ~0) is a flush of everything.
    public func invalidateSecondaryTLBs(start: UInt64, end: UInt64) {
        let list = notifiers.withLock { $0.list }
        guard !list.isEmpty else { return }
        let (s, e) = start == .max ? (0, UInt64.max) : (start, end)
        for n in list { n.invalidateSecondaryTLBs(mm: self, start: s, end: e) }
    }
}
