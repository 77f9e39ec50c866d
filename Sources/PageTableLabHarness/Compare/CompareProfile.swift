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

    /// The release whose mm a comparison's model follows: `asked`, else the
    /// running kernel's when the live kernel is compared, else the
    /// profile's own (6.18 for 6.14+, Debian's 6.1 for pre-6.14).
    public func modelKernel(asked: KernelVersion?, comparingLive: Bool) -> KernelVersion {
        if let asked { return asked }
        if comparingLive, let running = KernelVersion.running { return running }
        return self == .ptReclaim ? KernelVersion(6, 18) : KernelVersion(6, 1)
    }

    /// Whether the running kernel's config sets CONFIG_PT_RECLAIM=y; nil when
    /// it cannot be read.
    public static func kernelHasPTReclaim() -> Bool? {
        KConfig.running.map { $0["CONFIG_PT_RECLAIM"] == .value("y") }
    }
}

extension KernelVersion {
    /// This process's kernel (uname -r); nil when its release has no
    /// MAJOR.MINOR.
    public static var running: KernelVersion? { KernelVersion(release: SystemInfo.uname().release) }
}
