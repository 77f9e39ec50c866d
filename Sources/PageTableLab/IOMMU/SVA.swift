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
    /// that exits meanwhile keeps its PGD until then. The PASID stays the
    /// bond's until the unbind too, released or not (the kernel frees an
    /// mm's PASID only at its last mmdrop).
    public func bind(_ mm: MM, pasid: UInt32, did: UInt16, devices: [DMADevice] = []) throws(IOMMUError) -> SVABond {
        guard mm.grab() else { throw .mmExited }
        let bond = SVABond(sva: self, mm: mm, pasid: pasid)
        do throws(IOMMUError) {
            let registered: Void? = try mm.registerNotifier(bond) { () throws(IOMMUError) in
                try bonds.withLock { (list: inout [SVABond]) throws(IOMMUError) in
                    guard !list.contains(where: { $0.pasid == pasid }) else { throw .pasidAlreadyBound(pasid) }
                    try iommu.bindPASID(pasid, root: UInt64(mm.pgd.pfn), did: did,
                                        mode: mm.profile.fiveLevel ? .fiveLevel : .fourLevel, devices: devices)
                    list.append(bond)
                }
            }
            guard registered != nil else { throw .mmExited }
        } catch {
            mm.drop()
            throw error
        }
        return bond
    }

    /// iommu_sva_unbind_device: the PASID torn down under the SVA lock,
    /// then the notifier unhooked and the mm dropped. After the mm has
    /// exited (the driver unbinds when the dying process's files close,
    /// which do_exit does after exit_mm), the notifier's release has
    /// already torn the PASID down, and Linux's second
    /// intel_pasid_tear_down_entry finds the entry not present and returns.
    /// The lab goes one step further where that release's flush failed: it
    /// sends the flush again. An unbind whose flush fails changes nothing
    /// but that: the bond keeps its PASID and its mm (whose PGD the IOMMU
    /// may still cache), and a later unbind tries again.
    public func unbind(_ bond: SVABond) throws(IOMMUError) {
        let outcome = bonds.withLock { (list: inout [SVABond]) -> Result<Void, IOMMUError>? in
            guard list.contains(where: { $0 === bond }) else { return nil }
            do throws(IOMMUError) {
                try bond.tearDown(unbinding: true)
            } catch {
                return .failure(error)
            }
            list.removeAll { $0 === bond }
            return .success(())
        }
        guard let outcome else { throw .pasidNotBound(bond.pasid) }
        try outcome.get()
        bond.mm.unregisterNotifier(bond)
        bond.mm.drop()
    }

    public var boundPASIDs: [UInt32] { bonds.withLock { $0.map(\.pasid) } }

    /// Every bond still held lets its mm go: for the end, once the IOMMU
    /// has shut down and nothing translates any more, as
    /// KernelPageTableFree.shutdown frees the tables it stranded. A bond is
    /// still held where its unbind's flush never completed (the IOMMU might
    /// have gone on walking the mm's PGD), or where nobody unbound it.
    public func shutdown() {
        let left = bonds.withLock { (list: inout [SVABond]) -> [SVABond] in
            defer { list.removeAll() }
            return list
        }
        for bond in left {
            bond.mm.unregisterNotifier(bond)
            bond.mm.drop()
        }
    }

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
            for bond in list where !bond.released && !bond.invalidateCompleting(start: start, end: end) {
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
    /// Where the bond is in its life. Exit's release and the driver's unbind
    /// may meet, and each tears the PASID down at most once, under this lock.
    private let state = LabMutex(State())

    private struct State {
        /// The mm exited while bound: its notifier was released and unhooked.
        var released = false
        /// The PASID entry is cleared and the IOMMU's caches of it flushed.
        var tornDown = false
        var unbound = false
    }

    /// The mm exited while bound (mmu_notifier_release reached the bond).
    public var released: Bool { state.withLock { $0.released } }
    /// The IOMMU holds nothing of the mm any more.
    public var tornDown: Bool { state.withLock { $0.tornDown } }
    /// Released or unbound: a flush that was already on its way when the
    /// PASID went finds it gone, which is no failure (the kernel's reaches
    /// a domain with no PASID left to flush).
    private var gone: Bool { state.withLock { $0.released || $0.unbound } }

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
        } catch .pasidNotBound where gone {
            return
        } catch {
            notifierFailures.add(1, ordering: .relaxed)
            Integrity.notifierFailureCount.add(1, ordering: .relaxed)
        }
    }

    /// intel_mm_release, from exit_mmap before anything is torn down: clear
    /// the PASID entry and flush what the IOMMU caches of it, since the
    /// notifier hears nothing more (DMA with the PASID then faults: the
    /// kernel silences those faults, the model counts them). Nothing after
    /// the unbind. A teardown that fails (the queue locked up) is a
    /// notifier failure: the IOMMU may still walk tables exit is about to
    /// free; the unbind sends the flush again.
    public func release(mm: MM) {
        do {
            try tearDown(unbinding: false)
        } catch {
            notifierFailures.add(1, ordering: .relaxed)
            Integrity.notifierFailureCount.add(1, ordering: .relaxed)
        }
    }

    /// The PASID torn down once: by exit's release (with
    /// sva_mm_release=teardown) unless the driver unbound first, else by the
    /// unbind, which also retries a teardown whose flush failed.
    func tearDown(unbinding: Bool) throws(IOMMUError) {
        try state.withLock { (s: inout State) throws(IOMMUError) in
            if unbinding {
                s.unbound = true
            } else {
                guard !s.unbound, !s.released else { return }
                s.released = true
                guard sva.iommu.parameters.mmRelease == .teardown else { return }
            }
            guard !s.tornDown else { return }
            try sva.iommu.unbindPASID(pasid)
            s.tornDown = true
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
            } catch .pasidNotBound where gone {
                return true
            } catch {
                return false
            }
        }
    }
}
