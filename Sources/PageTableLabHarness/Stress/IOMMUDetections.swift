import PageTableLab
extension WalkCounters {
    /// The IOMMU's detections as a stress report counts them: those that
    /// came out of its caches (a missed invalidation: the SVA bug) apart
    /// from those its walk found.
    init(iommu stats: IOMMUStats) {
        self.init()
        walks = Int(stats.walks)
        self[.iommuFromCache] = Int(stats.useAfterFreeFromCache)
        self[.iommuWalk] = Int(stats.useAfterFree - stats.useAfterFreeFromCache)
    }
}

extension IntelIOMMU {
    /// One DMA translation, counted as a stress walker counts its walks.
    func translate(_ request: DMARequest, counters: inout WalkCounters) {
        counters.walks += 1
        switch translate(request) {
        case .translated: counters.mapped += 1
        case .fault: counters.notMapped += 1
        case .useAfterFree(let uaf): counters.detected(uaf.source == .walk ? .iommuWalk : .iommuFromCache)
        }
    }
}
