import PageTableLab

/// The one allocator a process may load, and the mms the benchmarks use.
/// Made on first use and kept until the process exits.
final class Lab: @unchecked Sendable {
    static let shared = try! Lab()

    static let walkBase: UInt64 = 1 << 40
    static let walkTables = 64
    static let gatherBase: UInt64 = 1 << 41
    static let gatherTables = 64
    static let deferTables = 16_384

    let allocator: PageAllocator
    /// Populated: every walk finds a PTE table.
    let walkMM: MM
    /// Where deferred tables and the gather's munmaps come from.
    let deferMM: MM
    /// Its gathers free table batches after the flush, with no grace
    /// period (MMProfile.tableFree = .noRCU).
    let noRCUMM: MM

    private init() throws {
        var parameters = PageAllocator.Parameters()
        parameters.nodeBudgetPages = 1 << 16
        allocator = try PageAllocator(parameters: parameters)
        walkMM = try MM(allocator: allocator)
        deferMM = try MM(allocator: allocator)
        var noRCU = MMProfile()
        noRCU.tableFree = .noRCU
        noRCUMM = try MM(allocator: allocator, profile: noRCU)
        try RCU.withRegisteredThread {
            try walkMM.mmap(address: Self.walkBase, length: UInt64(Self.walkTables) << 21)
            try walkMM.touch(address: Self.walkBase, length: UInt64(Self.walkTables) << 21, stride: 64 << 10)
        }
    }
}
