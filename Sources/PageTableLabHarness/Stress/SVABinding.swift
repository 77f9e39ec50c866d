import PageTableLab
/// A stress run's mm bound to an emulated IOMMU through SVA: one PASID, no
/// device (the DMA walkers ask the IOMMU directly, so only its own caches
/// stand between them and the tables).
struct SVABinding {
    static let pasid: UInt32 = 1

    let iommu: IntelIOMMU
    let sva: SVA
    let bond: SVABond

    init(mm: MM, allocator: PageAllocator, parameters: IntelIOMMU.Parameters) throws {
        iommu = try IntelIOMMU(allocator: allocator, parameters: parameters)
        sva = SVA(iommu: iommu)
        do {
            bond = try sva.bind(mm, pasid: Self.pasid, did: 1)
        } catch {
            _ = iommu.shutdown()
            throw error
        }
    }

    /// iommu_sva_unbind_device, then the IOMMU goes; its counters stay
    /// readable.
    func teardown() throws {
        try sva.unbind(bond)
        _ = iommu.shutdown()
    }
}
