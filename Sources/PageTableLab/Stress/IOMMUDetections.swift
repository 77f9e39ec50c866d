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
