import Synchronization

/// iommu-sva: mms bound to PASIDs on one IOMMU, kept informed of changes.
public final class SVA: Sendable {
    public let iommu: IntelIOMMU
    /// iommu_sva_lock, and the bonds it protects.
    private let bonds = LabMutex<[SVABond]>([])
    /// KVA invalidations of a bound mm that did not complete (the queue
    /// locked up, or refused a descriptor that was not a stand-in).
    public let kvaFailures = Atomic<Int>(0)
    public let kvaInvalidations = Atomic<Int>(0)

    public init(iommu: IntelIOMMU) { self.iommu = iommu }

    /// iommu_sva_bind_device: point `pasid` at the mm's PGD, subscribe to
    /// its TLB flushes, and hold the mm (mmgrab) until the unbind: an mm
    /// that exits meanwhile keeps its PGD until then.
    public func bind(_ mm: MM, pasid: UInt32, did: UInt16, devices: [DMADevice] = []) throws(IOMMUError) -> SVABond {
        guard !mm.hasExited, mm.grab() else { throw .mmExited }
        do {
            try iommu.bindPASID(pasid, root: UInt64(mm.pgd.pfn), did: did,
                                mode: mm.profile.fiveLevel ? .fiveLevel : .fourLevel, devices: devices)
        } catch {
            mm.drop()
            throw error
        }
        let bond = SVABond(sva: self, mm: mm, pasid: pasid)
        mm.registerNotifier(bond)
        bonds.withLock { $0.append(bond) }
        return bond
    }

    /// iommu_sva_unbind_device: the IOMMU forgets the mm before it can go.
    /// After the mm has exited (the driver unbinds when the dying process's
    /// files close, which do_exit does after exit_mm), the notifier's
    /// release has already torn the PASID entry down: what is left is to
    /// drop the bond, as a second intel_pasid_tear_down_entry finds the
    /// entry not present and returns.
    public func unbind(_ bond: SVABond) throws(IOMMUError) {
        bond.mm.unregisterNotifier(bond)
        let bound = bonds.withLock { list in
            defer { list.removeAll { $0 === bond } }
            return list.contains { $0 === bond }
        }
        guard bound else { throw .pasidNotBound(bond.pasid) }
        defer { bond.mm.drop() }
        guard !bond.tornDown.load(ordering: .acquiring) else { return }
        try iommu.unbindPASID(bond.pasid)
    }

    public var boundPASIDs: [UInt32] { bonds.withLock { $0.map(\.pasid) } }

    /// iommu_sva_invalidate_kva_range (6.19): under the SVA lock, hand
    /// [start, end) to every bound mm's notifier, as
    /// mmu_notifier_arch_invalidate_secondary_tlbs does. The freeing work
    /// passes PAGE_OFFSET and TLB_FLUSH_ALL, which on VT-d becomes one
    /// page-selective flush per mm with IH=0 over the whole kernel half,
    /// dropping its paging-structure caches. True once every mm's flush has
    /// completed; the caller must not free what the IOMMU may cache otherwise.
    @discardableResult
    public func invalidateKVARange(start: UInt64 = KernelLayout.fourLevel.pageOffset, end: UInt64 = .max) -> Bool {
        bonds.withLock { list in
            var completed = true
            // A bond whose mm has exited is off the mm's notifier list: the
            // kernel's flush through that list does not reach it.
            for bond in list where !bond.released.load(ordering: .acquiring)
                && !bond.invalidateCompleting(start: start, end: end) {
                completed = false
                kvaFailures.add(1, ordering: .relaxed)
            }
            if completed && !list.isEmpty { kvaInvalidations.add(1, ordering: .relaxed) }
            return completed
        }
    }
}

/// One mm bound to one PASID: the mmu_notifier that forwards the mm's TLB
/// flushes to the IOMMU.
public final class SVABond: MMUNotifier, Sendable {
    unowned let sva: SVA
    public let mm: MM
    public let pasid: UInt32
    public let notifierFailures = Atomic<Int>(0)
    /// The mm exited while bound: its notifier was released and unhooked.
    public let released = Atomic<Bool>(false)
    /// The release cleared the PASID entry (sva_mm_release=teardown).
    public let tornDown = Atomic<Bool>(false)

    init(sva: SVA, mm: MM, pasid: UInt32) {
        self.sva = sva
        self.mm = mm
        self.pasid = pasid
    }

    /// intel_arch_invalidate_secondary_tlbs: IH=0, always, as Linux sends
    /// it; sva_notifier_ih=leaf-only forces IH=1 for tests that must show
    /// what that breaks.
    public func invalidateSecondaryTLBs(mm: MM, start: UInt64, end: UInt64) {
        do {
            try flush(start: start, end: end)
        } catch {
            notifierFailures.add(1, ordering: .relaxed)
            Integrity.notifierFailureCount.add(1, ordering: .relaxed)
        }
    }

    /// intel_mm_release, from exit_mmap before anything is torn down: clear
    /// the PASID entry and flush what the IOMMU caches of it (faults on it
    /// ignored from now on), since the notifier hears nothing more. A
    /// teardown that fails (the queue locked up) is a notifier failure: the
    /// IOMMU may still walk tables that exit is about to free.
    public func release(mm: MM) {
        released.store(true, ordering: .releasing)
        guard sva.iommu.parameters.mmRelease == .teardown else { return }
        do {
            try sva.iommu.unbindPASID(pasid)
            tornDown.store(true, ordering: .releasing)
        } catch {
            notifierFailures.add(1, ordering: .relaxed)
            Integrity.notifierFailureCount.add(1, ordering: .relaxed)
        }
    }

    private func flush(start: UInt64, end: UInt64) throws(IOMMUError) {
        try sva.iommu.invalidateSecondaryTLBs(pasid: pasid, start: start, end: end,
                                              ih: sva.iommu.parameters.notifierHint == .leafOnly)
    }

    /// The notifier's flush for a range whose tables are about to be freed,
    /// repeated until the IOMMU has done it. A descriptor refused by an
    /// injected IQE (a stand-in for a corrupted one) is sent again: Linux's
    /// callers ignore the -EINVAL, and the lab's would otherwise free what
    /// the IOMMU still caches. A device that is gone, or that answered with
    /// an invalid completion, cannot hold the IOMMU's caches: the
    /// PASID-IOTLB descriptor before it ran. Anything else did not complete.
    func invalidateCompleting(start: UInt64, end: UInt64) -> Bool {
        while true {
            do {
                try flush(start: start, end: end)
                return true
            } catch .queue(.invalidDescriptor(_, _, _, true, _)) {
                continue
            } catch .queue(.deviceTLBTimeout), .queue(.completionError) {
                return true
            } catch {
                return false
            }
        }
    }
}
