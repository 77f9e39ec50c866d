import PageTableLab
/// A stress run's mm bound to an emulated IOMMU through SVA: one PASID, no
/// device (the DMA walkers ask the IOMMU directly, so only its own caches
/// stand between them and the tables).
public struct SVABinding {
    /// The PASID the mm is bound under, which DMA walkers' requests carry.
    public static let pasid: UInt32 = 1

    public let iommu: IntelIOMMU
    public let sva: SVA
    public let bond: SVABond

    /// An IOMMU brought up on `allocator`, with `mm` bound to it
    /// (iommu_sva_bind_device).
    public init(mm: MM, allocator: PageAllocator, parameters: IntelIOMMU.Parameters) throws {
        iommu = try IntelIOMMU(allocator: allocator, parameters: parameters)
        sva = SVA(iommu: iommu)
        do {
            bond = try sva.bind(mm, pasid: Self.pasid, did: 1)
        } catch {
            _ = iommu.shutdown()
            throw error
        }
    }

    /// iommu_sva_unbind_device, then the IOMMU goes, with the bond if its
    /// unbind failed; its counters stay readable.
    public func teardown() throws {
        defer {
            _ = iommu.shutdown()
            sva.shutdown()
        }
        try sva.unbind(bond)
    }
}
