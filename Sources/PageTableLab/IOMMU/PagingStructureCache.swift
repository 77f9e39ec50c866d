/// A cached non-leaf entry: "the table for addresses with this prefix is at
/// that frame". This is what lets the IOMMU skip the upper levels of a walk,
/// and what turns a table freed without telling the IOMMU into a DMA walk
/// through reused memory (seeds 000–002).
struct PagingStructureEntry: Equatable, Sendable {
    var did: UInt16
    /// Frame of the next-level table.
    var next: UInt64
    /// Its generation when cached (a lab-only tag hardware lacks: it lets a
    /// reuse as a table of the same level still count as use-after-free).
    var generation: UInt32
}

/// The paging-structure caches (PML5E/PML4E/PDPTE/PDE caches), keyed per
/// PASID by the entry's shift (48, 39, 30, 21) and the address bits above
/// it. Unbounded, like the IOTLB.
struct PagingStructureCache: Sendable {
    private struct Key: Hashable {
        var shift: UInt8
        var prefix: UInt64
    }

    private var byPASID: [UInt32: [Key: PagingStructureEntry]] = [:]

    /// The deepest cached entry for `address`, trying `shifts` in order
    /// (deepest first). Returns the shift that hit.
    func lookupDeepest(pasid: UInt32, address: UInt64, shifts: [Int]) -> (shift: Int, entry: PagingStructureEntry)? {
        guard let entries = byPASID[pasid] else { return nil }
        for shift in shifts {
            if let e = entries[Key(shift: UInt8(shift), prefix: address >> UInt64(shift))] { return (shift, e) }
        }
        return nil
    }

    mutating func fill(pasid: UInt32, address: UInt64, shift: Int, entry: PagingStructureEntry) {
        byPASID[pasid, default: [:]][Key(shift: UInt8(shift), prefix: address >> UInt64(shift))] = entry
    }

    var count: Int { byPASID.values.reduce(0) { $0 + $1.count } }

    mutating func invalidateAll() { byPASID.removeAll() }

    /// Entries of domain `did`; only PASID `pasid` when given; only entries
    /// that could translate an address in `range` when given.
    mutating func invalidate(did: UInt16, pasid: UInt32? = nil, range: AddressRange? = nil) {
        guard let pasid else {
            for p in Array(byPASID.keys) { invalidate(did: did, pasid: p, range: range) }
            return
        }
        byPASID[pasid]?.removeEntries { key, e in
            guard e.did == did else { return false }
            guard let range else { return true }
            let span: UInt64 = key.shift >= 64 ? .max : (1 << UInt64(key.shift)) - 1
            let first = key.prefix << UInt64(key.shift)
            return AddressRange(first: first, last: first | span).overlaps(range)
        }
        if byPASID[pasid]?.isEmpty == true { byPASID[pasid] = nil }
    }
}
