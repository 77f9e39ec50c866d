/// What the PASID cache holds for a PASID: its PASID-table entry.
struct PASIDCacheEntry: Equatable, Sendable {
    var did: UInt16
    /// Frame of the bound mm's PGD.
    var root: UInt64
    /// The PGD's generation when cached (lab-only, as in the PSC).
    var rootGeneration: UInt32
    var mode: PagingMode
}

/// Every cache of the remapping unit, behind one lock. One lock because a
/// DMA walk holds it from lookup to fill: an invalidation then waits for
/// walks in flight, which is what completion of a real invalidation
/// promises (no translation started before it still uses what it dropped).
struct TranslationCaches: Sendable {
    var iotlb = IOTLB()
    var pagingStructures = PagingStructureCache()
    var pasids: [UInt32: PASIDCacheEntry] = [:]
    /// Context cache: source ID → domain, for devices attached to the unit.
    var contexts: [UInt16: UInt16] = [:]

    mutating func invalidate(_ inv: ContextCacheInvalidation) {
        switch inv {
        case .global:
            contexts.removeAll()
        case .domain(let did):
            contexts.removeEntries { _, d in d == did }
        case .device(let did, let sid, let fm):
            contexts.removeEntries { s, d in d == did && ContextCacheInvalidation.covers(sid: sid, functionMask: fm, s) }
        }
    }

    /// The lab's tables are all first-stage (SVA). A type-2 invalidation is
    /// applied to them by domain as if they were second-stage: page-selective
    /// across every PASID of the domain (a simplification: VT-d scopes
    /// first-stage entries by PASID, with type 6).
    mutating func invalidate(_ inv: IOTLBInvalidation) {
        switch inv.granularity {
        case .global:
            iotlb.invalidateAll()
            pagingStructures.invalidateAll()
        case .domain(let did):
            iotlb.invalidate(did: did)
            pagingStructures.invalidate(did: did)
        case .page(let did, let address, let am, let ih):
            let range = AddressRange(address: address, addressMask: am)
            iotlb.invalidate(did: did, range: range)
            if !ih { pagingStructures.invalidate(did: did, range: range) }
        }
    }

    /// IH = 1 promises that only leaves changed: paging-structure entries
    /// survive. That promise is only true when no table was freed.
    mutating func invalidate(_ inv: PASIDIOTLBInvalidation) {
        switch inv.granularity {
        case .pasid:
            iotlb.invalidate(did: inv.did, pasid: inv.pasid)
            pagingStructures.invalidate(did: inv.did, pasid: inv.pasid)
        case .page(let address, let am, let ih):
            let range = AddressRange(address: address, addressMask: am)
            iotlb.invalidate(did: inv.did, pasid: inv.pasid, range: range)
            if !ih { pagingStructures.invalidate(did: inv.did, pasid: inv.pasid, range: range) }
        }
    }

    mutating func invalidate(_ inv: PASIDCacheInvalidation) {
        switch inv {
        case .global: pasids.removeAll()
        case .domain(let did): pasids.removeEntries { _, e in e.did == did }
        case .pasid(let did, let pasid): if pasids[pasid]?.did == did { pasids[pasid] = nil }
        }
    }
}
