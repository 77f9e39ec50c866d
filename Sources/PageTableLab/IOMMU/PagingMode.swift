/// First-stage paging as the IOMMU walks it for SVA: the CPU's own format.
///
/// The root of every walk is the mm's PGD, a table of level `.pgd`. With
/// 4-level paging the P4D is folded into it, as on x86: the PGD decodes
/// address bits 47:39 and its entries point straight at PUD tables.
public enum PagingMode: Sendable, Equatable, Codable {
    case fourLevel
    case fiveLevel

    /// The tables a walk passes through, root first: the level each table
    /// must have and the shift of the address bits that index it.
    var tables: [(level: Level, shift: Int)] {
        switch self {
        case .fourLevel: Self.fourLevelTables
        case .fiveLevel: Self.fiveLevelTables
        }
    }

    /// Shifts of the cacheable non-leaf entries, deepest first (PDE, PDPTE,
    /// PML4E, PML5E): the order a paging-structure-cache lookup tries them.
    var cachedShifts: [Int] {
        switch self {
        case .fourLevel: Self.fourLevelShifts
        case .fiveLevel: Self.fiveLevelShifts
        }
    }

    /// The highest implemented address bit; canonical addresses copy it
    /// into every bit above.
    var topBit: Int { self == .fourLevel ? 47 : 56 }

    func isCanonical(_ address: UInt64) -> Bool {
        let high = Int64(bitPattern: address) >> Int64(topBit)
        return high == 0 || high == -1
    }

    /// The kernel half: on x86 the upper half of every process's PGD maps
    /// the kernel, through tables shared with init_mm.
    static func isKernelHalf(_ address: UInt64) -> Bool { address >> 63 == 1 }

    private static let fourLevelTables: [(level: Level, shift: Int)] = [(.pgd, 39), (.pud, 30), (.pmd, 21), (.pte, 12)]
    private static let fiveLevelTables: [(level: Level, shift: Int)] =
        [(.pgd, 48), (.p4d, 39), (.pud, 30), (.pmd, 21), (.pte, 12)]
    private static let fourLevelShifts = [21, 30, 39]
    private static let fiveLevelShifts = [21, 30, 39, 48]
}
