/// Where x86-64 Linux puts the kernel's address ranges, with 4-level and
/// with 5-level paging (Documentation/arch/x86/x86_64/mm.rst). Every mm
/// shares the kernel half: entries 256–511 of its root table, copied from
/// init_mm's at pgd_ctor, point at tables of the same level as init_mm's.
public struct KernelLayout: Sendable, Equatable {
    public let fiveLevel: Bool
    /// PAGE_OFFSET: the direct map of physical memory.
    public let pageOffset: UInt64
    /// VMALLOC_START: vmalloc and ioremap space.
    public let vmallocStart: UInt64

    public static let fourLevel = KernelLayout(fiveLevel: false, pageOffset: 0xffff_8880_0000_0000,
                                               vmallocStart: 0xffff_c900_0000_0000)
    public static let fiveLevel = KernelLayout(fiveLevel: true, pageOffset: 0xff11_0000_0000_0000,
                                               vmallocStart: 0xffa0_0000_0000_0000)

    public static func paging(fiveLevel: Bool) -> KernelLayout { fiveLevel ? .fiveLevel : .fourLevel }

    /// What the lab models of each area: the first 512 GiB (one P4D entry,
    /// whose table boot preallocates).
    public static let areaSize: UInt64 = 1 << 39

    /// The areas the lab's init_mm maps, each a preallocated table away from
    /// the root: vmalloc space and the direct map.
    public var areas: [UInt64] { [vmallocStart, pageOffset] }

    public func contains(_ address: UInt64, _ length: UInt64) -> Bool {
        areas.contains { start in address >= start && length <= Self.areaSize && address - start <= Self.areaSize - length }
    }
}
