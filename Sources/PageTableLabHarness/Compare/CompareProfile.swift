import PageTableLab
/// Which kernel's page-table freeing a comparison expects. The two differ in
/// one thing only: whether MADV_DONTNEED reclaims empty PTE tables.
public enum CompareProfile: String, CaseIterable, Sendable, Codable {
    /// PT_RECLAIM (6.14+): MADV_DONTNEED frees a PTE table when the zapped
    /// slice of one VMA covers the table's whole 2 MiB span and every entry
    /// is then none.
    case ptReclaim = "6.14+"
    /// No PT_RECLAIM: MADV_DONTNEED clears entries and frees no table.
    case prePTReclaim = "pre-6.14"

    public var reclaimsPTETablesOnDontneed: Bool { self == .ptReclaim }

    /// The profile of the kernel this process runs on: `6.14+` when its
    /// configuration says `CONFIG_PT_RECLAIM=y`, else `pre-6.14` (also when
    /// the configuration cannot be read — a kernel without a readable config
    /// gives no evidence of PT_RECLAIM).
    public static func runningKernel() -> CompareProfile {
        kernelHasPTReclaim() == true ? .ptReclaim : .prePTReclaim
    }

    /// Whether the running kernel's config sets CONFIG_PT_RECLAIM=y; nil when
    /// it cannot be read.
    public static func kernelHasPTReclaim() -> Bool? {
        KConfig.running.map { $0["CONFIG_PT_RECLAIM"] == .value("y") }
    }
}
