/// A page-table entry, x86-64 style: a PFN in bits 12–51 and flag bits.
/// Walkers (CPU and IOMMU) and updaters share this one encoding, so a stale
/// PFN read by either really does lead into a freed page.
public struct Entry: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// The flag bits (_PAGE_*), as x86-64 places them.
    public struct Flags: OptionSet, Hashable, Sendable {
        public let rawValue: UInt64
        @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }

        public static let present = Flags(rawValue: 1 << 0)
        public static let writable = Flags(rawValue: 1 << 1)
        public static let user = Flags(rawValue: 1 << 2)
        public static let accessed = Flags(rawValue: 1 << 5)
        public static let dirty = Flags(rawValue: 1 << 6)
        /// PS: a huge leaf at PMD/PUD level.
        public static let huge = Flags(rawValue: 1 << 7)
        /// _PAGE_PROTNONE: mapped, but PROT_NONE, so not present to the MMU.
        /// (x86 reuses the global bit, meaningless in a non-present entry.)
        public static let protNone = Flags(rawValue: 1 << 8)

        /// _PAGE_TABLE: what a user table's parent entry carries.
        public static let userTable = Flags(rawValue: present.rawValue | writable.rawValue | user.rawValue | accessed.rawValue)
        /// A freshly faulted, written user page.
        public static let userPage = Flags(rawValue: userTable.rawValue | dirty.rawValue)
    }

    public static let present = Flags.present
    public static let writable = Flags.writable
    public static let user = Flags.user
    public static let accessed = Flags.accessed
    public static let dirty = Flags.dirty
    public static let huge = Flags.huge
    public static let protNone = Flags.protNone
    public static let pfnMask: UInt64 = 0x000F_FFFF_FFFF_F000

    public static let none = Entry(rawValue: 0)
    /// A guard marker (MADV_GUARD_INSTALL): the PTE marker PTE_MARKER_GUARD,
    /// a swap entry of the marker type. Not present, not none: an access
    /// faults SIGSEGV, a zap leaves it but munmap's and exit's, and a PTE
    /// table that holds one is not empty to PT_RECLAIM.
    public static let guardMarker = Entry(rawValue: 1 << 9)

    @inlinable public init(pfn: UInt32, flags: Flags) {
        rawValue = (UInt64(pfn) << 12) & Self.pfnMask | flags.rawValue
    }

    /// Everything but the PFN.
    @inlinable public var flags: Flags { Flags(rawValue: rawValue & ~Self.pfnMask) }
    @inlinable public var isPresent: Bool { rawValue & Flags.present.rawValue != 0 }
    /// pte_present as the kernel means it: present, or PROT_NONE.
    @inlinable public var isMapped: Bool { rawValue & (Flags.present.rawValue | Flags.protNone.rawValue) != 0 }
    /// A present PMD (or PUD) entry that is a huge leaf, not a table.
    @inlinable public var isHugeLeaf: Bool { isMapped && rawValue & Flags.huge.rawValue != 0 }
    /// pmd_trans_huge: a huge leaf, or one a split has invalidated
    /// (pmdp_invalidate clears present and keeps PS) and is turning into a
    /// PTE table under the PMD lock. An updater that reads it without that
    /// lock must take the lock to learn what it became; to a walker it is
    /// not present.
    @inlinable public var isTransHuge: Bool { rawValue & Flags.huge.rawValue != 0 }
    @inlinable public var isNone: Bool { rawValue == 0 }
    @inlinable public var isGuardMarker: Bool { rawValue == Self.guardMarker.rawValue }
    @inlinable public var pfn: UInt64 { (rawValue & Self.pfnMask) >> 12 }
    @inlinable public func has(_ flag: Flags) -> Bool { rawValue & flag.rawValue == flag.rawValue }

    /// The same entry with `flags` set or cleared.
    @inlinable public func with(_ flags: Flags) -> Entry { Entry(rawValue: rawValue | flags.rawValue) }
    @inlinable public func without(_ flags: Flags) -> Entry { Entry(rawValue: rawValue & ~flags.rawValue) }

    public var description: String {
        isNone ? "none" : "pfn=\(pfn) flags=0x\(String(flags.rawValue, radix: 16))"
    }
}

/// Page-table levels and the address bits each one decodes (x86-64; P4D is
/// folded into the PGD with 4-level paging).
public enum Level: Int, Sendable, CaseIterable, Comparable, Codable {
    case pte = 1, pmd = 2, pud = 3, p4d = 4, pgd = 5

    /// Shift of the address bits that index a table of this level.
    @inlinable public var shift: Int { 12 + 9 * (rawValue - 1) }
    /// Bytes one entry of this level spans.
    @inlinable public var entrySpan: UInt64 { 1 << UInt64(shift) }
    /// Bytes a whole table of this level spans.
    @inlinable public var tableSpan: UInt64 { entrySpan << 9 }
    @inlinable public func index(of address: UInt64) -> Int { Int((address >> UInt64(shift)) & 511) }
    @inlinable public var below: Level? { Level(rawValue: rawValue - 1) }
    @inlinable public var above: Level? { Level(rawValue: rawValue + 1) }

    public static func < (a: Level, b: Level) -> Bool { a.rawValue < b.rawValue }

    public var name: String {
        switch self {
        case .pte: "pte"
        case .pmd: "pmd"
        case .pud: "pud"
        case .p4d: "p4d"
        case .pgd: "pgd"
        }
    }
}
