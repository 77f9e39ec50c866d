import Synchronization

/// A PCI device behind the IOMMU, named by its source ID (bus/device/
/// function). With ATS it keeps its own TLB of translations (the ATC) and
/// must be told about invalidations (device-TLB descriptors); a device that
/// is gone answers nothing, so those invalidations time out (ITE).
public final class DMADevice: Sendable {
    public let sid: UInt16
    /// The domain its context entry names.
    public let did: UInt16
    /// Address Translation Services: the device caches translations.
    public let ats: Bool
    private let present = Atomic<Bool>(true)
    private let deviceTLB = LabMutex<[DeviceTLBKey: DeviceTLBEntry]>([:])

    struct DeviceTLBKey: Hashable {
        var pasid: UInt32
        var page: UInt64
    }

    struct DeviceTLBEntry: Equatable {
        var pfn: UInt64
        var writable: Bool
    }

    init(sid: UInt16, did: UInt16, ats: Bool) {
        self.sid = sid
        self.did = did
        self.ats = ats
    }

    /// False once the device was surprise-removed.
    public var isPresent: Bool { present.load(ordering: .acquiring) }

    /// Surprise removal: from now on the device answers no invalidation.
    public func markGone() {
        present.store(false, ordering: .releasing)
    }

    /// Translations in the device's own TLB now.
    public var deviceTLBEntries: Int { deviceTLB.withLock { $0.count } }

    func cachedTranslation(pasid: UInt32, address: UInt64, write: Bool) -> UInt64? {
        deviceTLB.withLock { tlb in
            guard let e = tlb[DeviceTLBKey(pasid: pasid, page: address >> 12)], !write || e.writable else { return nil }
            return e.pfn << 12 | (address & 0xFFF)
        }
    }

    func cache(pasid: UInt32, address: UInt64, physical: UInt64, writable: Bool) {
        deviceTLB.withLock { $0[DeviceTLBKey(pasid: pasid, page: address >> 12)] = DeviceTLBEntry(pfn: physical >> 12, writable: writable) }
    }

    /// Handle an ATS invalidation request; false when the device is gone
    /// (no completion will come).
    func invalidate(pasid: UInt32?, range: DeviceTLBRange) -> Bool {
        guard isPresent else { return false }
        let span = range.span
        let covered = AddressRange(base: span.base, bytes: span.bytes)
        deviceTLB.withLock { tlb in
            tlb.removeEntries { key, _ in
                (pasid == nil || key.pasid == pasid) && covered.overlaps(AddressRange(first: key.page << 12, last: key.page << 12 | 0xFFF))
            }
        }
        return true
    }
}
