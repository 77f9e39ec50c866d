import Synchronization

/// iommu-sva: mms bound to PASIDs on one IOMMU, kept informed of changes.
public final class SVA: Sendable {
    /// PAGE_OFFSET with 4-level paging: where the kernel range starts.
    public static let pageOffset: UInt64 = 0xffff_8880_0000_0000

    public let iommu: IntelIOMMU
    /// iommu_sva_lock, and the bonds it protects.
    private let bonds = LabMutex<[SVABond]>([])
    /// KVA invalidations that failed even after resubmitting.
    public let kvaFailures = Atomic<Int>(0)
    public let kvaInvalidations = Atomic<Int>(0)

    public init(iommu: IntelIOMMU) { self.iommu = iommu }

    /// iommu_sva_bind_device: point `pasid` at the mm's PGD and subscribe to
    /// its TLB flushes.
    public func bind(_ mm: MM, pasid: UInt32, did: UInt16, devices: [DMADevice] = []) throws(IOMMUError) -> SVABond {
        try iommu.bindPASID(pasid, root: UInt64(mm.pgd.pfn), did: did,
                            mode: mm.profile.fiveLevel ? .fiveLevel : .fourLevel, devices: devices)
        let bond = SVABond(sva: self, mm: mm, pasid: pasid)
        mm.registerNotifier(bond)
        bonds.withLock { $0.append(bond) }
        return bond
    }

    /// iommu_sva_unbind_device: the IOMMU forgets the mm before it can go.
    public func unbind(_ bond: SVABond) throws(IOMMUError) {
        bond.mm.unregisterNotifier(bond)
        bonds.withLock { list in list.removeAll { $0 === bond } }
        try iommu.unbindPASID(bond.pasid)
    }

    public var boundPASIDs: [UInt32] { bonds.withLock { $0.map(\.pasid) } }

    /// iommu_sva_invalidate_kva_range: under the SVA lock, invalidate the
    /// kernel range in every bound mm (PASID-selective when `end` is
    /// TLB_FLUSH_ALL, which also drops paging-structure caches), all
    /// PASIDs sharing waits, and return once the IOMMU has done it. A
    /// submission refused by an injected fault is resubmitted: returning
    /// early would let the caller free what the IOMMU still caches.
    public func invalidateKVARange(start: UInt64 = SVA.pageOffset, end: UInt64 = .max) {
        bonds.withLock { list in
            guard !list.isEmpty else { return }
            for attempt in 1...64 {
                var batch = QIBatch()
                do {
                    for bond in list {
                        try iommu.iommuSVAInvalidateRange(pasid: bond.pasid, start: start, end: end, ih: false, into: &batch)
                    }
                    try batch.flush(to: iommu)
                    kvaInvalidations.add(1, ordering: .relaxed)
                    return
                } catch {
                    if attempt == 64 { kvaFailures.add(1, ordering: .relaxed) }
                }
            }
        }
    }
}

/// One mm bound to one PASID: the mmu_notifier that forwards user-half
/// TLB flushes to the IOMMU.
public final class SVABond: MMUNotifier, Sendable {
    unowned let sva: SVA
    public let mm: MM
    public let pasid: UInt32
    public let notifierFailures = Atomic<Int>(0)

    init(sva: SVA, mm: MM, pasid: UInt32) {
        self.sva = sva
        self.mm = mm
        self.pasid = pasid
    }

    /// intel_arch_invalidate_secondary_tlbs. IH = 1 only when no table was
    /// freed: then the paging-structure caches may stay.
    public func invalidateSecondaryTLBs(mm: MM, start: UInt64, end: UInt64, freedTables: Bool) {
        do {
            try sva.iommu.iommuSVAInvalidateRange(pasid: pasid, start: start, end: end, ih: !freedTables)
        } catch {
            notifierFailures.add(1, ordering: .relaxed)
            Integrity.notifierFailureCount.add(1, ordering: .relaxed)
        }
    }
}
