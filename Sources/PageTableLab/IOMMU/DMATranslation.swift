/// One DMA access a device asks the IOMMU to translate.
public struct DMARequest: Sendable, Equatable {
    public var pasid: UInt32
    public var address: UInt64
    public var write: Bool

    public init(pasid: UInt32, address: UInt64, write: Bool = false) {
        self.pasid = pasid
        self.address = address
        self.write = write
    }
}

/// What came of a translation.
public enum DMATranslation: Sendable, Equatable {
    /// The access goes to `physical` (frame << 12 | offset), in a page of `level`.
    case translated(physical: UInt64, level: Level)
    case fault(DMAFault)
    /// The walk entered a page that is no longer the live table it expected.
    /// The walk stops there: what it read is garbage.
    case useAfterFree(DMAUseAfterFree)

    public var physicalAddress: UInt64? {
        if case .translated(let p, _) = self { return p }
        return nil
    }
}

/// A translation the IOMMU refused, as a fault record would say.
public enum DMAFault: Sendable, Equatable, CustomStringConvertible {
    case pasidNotBound(UInt32)
    case nonCanonical(UInt64)
    /// The entry in the table of `level` is not present.
    case notPresent(level: Level)
    /// A write through an entry of `level` without R/W.
    case writeProtected(level: Level)
    /// An entry of `level` points outside memory.
    case badFrame(pfn: UInt64, level: Level)
    /// The requester has no context entry (device not attached).
    case deviceNotAttached(sid: UInt16)

    public var description: String {
        switch self {
        case .pasidNotBound(let p): "PASID \(p) is not bound"
        case .nonCanonical(let a): "address 0x\(String(a, radix: 16)) is not canonical"
        case .notPresent(let l): "\(l.name) entry not present"
        case .writeProtected(let l): "write through a read-only \(l.name) entry"
        case .badFrame(let pfn, let l): "\(l.name) entry points at frame \(pfn), outside memory"
        case .deviceNotAttached(let sid): "device \(sid) has no context entry"
        }
    }
}

/// A detected use-after-free: the IOMMU used frame `pfn` as a table of
/// `expected` level, and it no longer is one.
public struct DMAUseAfterFree: Sendable, Equatable {
    public enum Source: Sendable, Equatable {
        /// The PASID cache still named a PGD that was freed.
        case pasidCache
        /// A paging-structure-cache entry outlived the table it names.
        case pagingStructureCache
        /// Found by walking: an entry read from a live table named a dead one.
        case walk
    }
    public var pfn: UInt64
    public var expected: Level
    public var source: Source
    /// An accessed/dirty bit was written into the page.
    public var wroteAccessedDirty: Bool
}
