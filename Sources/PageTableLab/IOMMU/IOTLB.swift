/// An inclusive range of input addresses. Inclusive because an invalidation
/// can cover all 2^64 bytes, which no exclusive end can say.
struct AddressRange: Equatable, Sendable {
    var first: UInt64
    var last: UInt64

    /// 2^addressMask pages containing `address`: the page-selective (AM) form.
    init(address: UInt64, addressMask: UInt8) {
        let bits = 12 + Int(addressMask)
        let span: UInt64 = bits >= 64 ? .max : (1 << UInt64(bits)) - 1
        first = address & ~span
        last = first | span
    }

    init(first: UInt64, last: UInt64) {
        self.first = first
        self.last = last
    }

    /// `bytes` nil: to the end of the address space.
    init(base: UInt64, bytes: UInt64?) {
        first = base
        last = bytes.map { base &+ ($0 - 1) } ?? .max
    }

    func overlaps(_ other: AddressRange) -> Bool { first <= other.last && other.first <= last }
}

/// A leaf translation the IOMMU cached: one page of 4 KiB, 2 MiB or 1 GiB.
struct IOTLBEntry: Equatable, Sendable {
    var did: UInt16
    /// Frame of the first byte of the page.
    var pfn: UInt64
    var level: Level
    var writable: Bool
    /// D was set in the leaf when cached; a write through an entry without
    /// it walks again to set D, as the CPU's TLB does.
    var dirty: Bool

    var bytes: UInt64 { level.entrySpan }
}

/// The IOTLB: leaf translations per PASID, a bounded number of them, as in
/// hardware. Were it unbounded, a device streaming over a small working set
/// would stop walking once every leaf was cached, and a freed table would
/// never be walked into: the bug would hide behind stale leaves. Eviction
/// keeps walks (and the paging-structure caches that feed them) in play;
/// a stale entry still stays until evicted or invalidated.
struct IOTLB: Sendable {
    /// Leaf entries kept per PASID.
    static let capacityPerPASID = 128

    private struct Key: Hashable {
        var base: UInt64
        var level: UInt8
    }

    private var byPASID: [UInt32: [Key: IOTLBEntry]] = [:]

    static let leafLevels: [Level] = [.pte, .pmd, .pud]

    func lookup(pasid: UInt32, address: UInt64) -> IOTLBEntry? {
        guard let entries = byPASID[pasid] else { return nil }
        for level in Self.leafLevels {
            if let e = entries[Key(base: address & ~(level.entrySpan - 1), level: UInt8(level.rawValue))] {
                return e
            }
        }
        return nil
    }

    mutating func fill(pasid: UInt32, address: UInt64, entry: IOTLBEntry) {
        let key = Key(base: address & ~(entry.bytes - 1), level: UInt8(entry.level.rawValue))
        if let entries = byPASID[pasid], entries.count >= Self.capacityPerPASID, entries[key] == nil {
            byPASID[pasid]!.remove(at: entries.startIndex)
        }
        byPASID[pasid, default: [:]][key] = entry
    }

    var count: Int { byPASID.values.reduce(0) { $0 + $1.count } }

    mutating func invalidateAll() { byPASID.removeAll() }

    /// Entries of domain `did`; only PASID `pasid` when given; only pages
    /// overlapping `range` when given.
    mutating func invalidate(did: UInt16, pasid: UInt32? = nil, range: AddressRange? = nil) {
        guard let pasid else {
            for p in Array(byPASID.keys) { invalidate(did: did, pasid: p, range: range) }
            return
        }
        byPASID[pasid]?.removeEntries { key, e in
            e.did == did && range.map { AddressRange(first: key.base, last: key.base + (e.bytes - 1)).overlaps($0) } ?? true
        }
        if byPASID[pasid]?.isEmpty == true { byPASID[pasid] = nil }
    }
}

extension Dictionary {
    /// Remove every element for which `shouldRemove` is true.
    mutating func removeEntries(where shouldRemove: (Key, Value) -> Bool) {
        for (k, v) in self where shouldRemove(k, v) { self[k] = nil }
    }
}
