/// Which qi_submit_sync polls the invalidation queue: module parameter
/// qi_driver. Both post descriptors and their wait identically; they
/// differ in how they wait and handle queue errors.
public enum QIDriver: String, Sendable, Codable, CaseIterable {
    /// The lab's own (the default): batch-safe IQE and ITE handling, errors
    /// reported to the submitter whose descriptor drew them.
    case robust
    /// Linux's qi_submit_sync and qi_check_fault, step for step (QILinuxDriver).
    case linux
}

/// The invalidation hint (IH) the SVA mm notifier puts in its PASID-IOTLB
/// flushes: module parameter sva_notifier_ih.
public enum SVANotifierHint: String, Sendable, Codable, CaseIterable {
    /// IH=0 always, as intel_arch_invalidate_secondary_tlbs sends: the
    /// paging-structure caches go with the leaves.
    case linux
    /// Unsafe, for tests that must fail: IH=1 always, "only leaves changed",
    /// so the paging-structure caches survive even a flush that follows a
    /// freed table.
    case leafOnly = "leaf-only"
}

/// What the SVA mm notifier's release does when the bound mm exits with
/// its PASID still bound (a process dying with its device open): module
/// parameter sva_mm_release.
public enum SVAMMRelease: String, Sendable, Codable, CaseIterable {
    /// intel_mm_release: clear the PASID entry and flush the PASID cache
    /// and the PASID's IOTLB and paging-structure entries, before exit_mmap
    /// frees a table. DMA with the PASID then faults until the driver
    /// unbinds it.
    case teardown
    /// Unsafe, for tests that must fail: a driver with no ->release. The
    /// core unhooks the notifier all the same, so exit's frees go unflushed
    /// and the IOMMU goes on walking through what it cached.
    case noRelease = "no-release"
}
