#if canImport(Glibc)
import PageTableLab
import Glibc
#endif
import Foundation

/// What a report must say about the machine it ran on, so that a number can
/// be read next to the kernel and libraries that produced it: the NUMA
/// layout, the kernel, the page-table options it was built with, and the
/// liburcu and libnuma versions underneath the lab.
public struct SystemInfo: Sendable, Codable, Equatable {
    public struct Kernel: Sendable, Codable, Equatable {
        public var sysname, release, version, machine: String
    }

    /// Kernel build options, as the kernel's own config says them.
    public struct KernelConfig: Sendable, Codable, Equatable {
        /// Where they were read: "/proc/config.gz", "/boot/config-<release>",
        /// or "unreadable".
        public var source: String
        /// CONFIG_* → "y", "m", a value, "not set" (the `# ... is not set`
        /// line), "absent" (no such option in this kernel), or "unreadable".
        public var options: [String: String]
    }

    public var kernel: Kernel
    public var topology: NUMATopology
    public var liburcuVersion: String
    public var liburcuFlavour: String
    public var libnumaVersion: String
    public var kernelConfig: KernelConfig

    enum CodingKeys: String, CodingKey {
        case kernel, topology
        case liburcuVersion = "liburcu_version"
        case liburcuFlavour = "liburcu_flavour"
        case libnumaVersion = "libnuma_version"
        case kernelConfig = "kernel_config"
    }

    /// The options that decide how this kernel frees page tables.
    public static let pageTableOptions = [
        "CONFIG_PT_RECLAIM",                    // MADV_DONTNEED frees empty PTE tables (6.14+)
        "CONFIG_ASYNC_KERNEL_PGTABLE_FREE",     // deferred kernel-table free with IOMMU flush (6.19+)
        "CONFIG_MMU_GATHER_RCU_TABLE_FREE",     // tables freed after a grace period
        "CONFIG_SPLIT_PTE_PTLOCKS",
        "CONFIG_SPLIT_PMD_PTLOCKS",
        "CONFIG_PGTABLE_LEVELS",
        "CONFIG_IOMMU_SVA",
    ]

    public static func probe(topology: NUMATopology = .current) -> SystemInfo {
        SystemInfo(
            kernel: uname(),
            topology: topology,
            liburcuVersion: packageVersion(deb: "liburcu-dev", pkgConfig: "liburcu-memb"),
            liburcuFlavour: "memb",
            libnumaVersion: packageVersion(deb: "libnuma-dev", pkgConfig: "numa"),
            kernelConfig: kernelConfig(options: pageTableOptions))
    }

    static func uname() -> Kernel {
        var u = utsname()
        _ = Glibc.uname(&u)
        func field<T>(_ value: T) -> String {
            withUnsafeBytes(of: value) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        }
        return Kernel(sysname: field(u.sysname), release: field(u.release),
                      version: field(u.version), machine: field(u.machine))
    }

    /// liburcu 0.13 has no version macro in its headers, so ask the package
    /// manager, then pkg-config; "unknown" when neither can say.
    static func packageVersion(deb: String, pkgConfig: String) -> String {
        if let v = run("dpkg-query", ["-W", "-f=${Version}", deb]), !v.isEmpty { return v }
        if let v = run("pkg-config", ["--modversion", pkgConfig]), !v.isEmpty { return v }
        return "unknown"
    }

    /// The report's view of a kernel config: every asked-for option gets an
    /// answer, "unreadable" included, so a report never silently drops one.
    static func kernelConfig(options: [String], from config: KConfig? = .running) -> KernelConfig {
        guard let config else {
            return KernelConfig(source: "unreadable", options: Dictionary(uniqueKeysWithValues: options.map { ($0, "unreadable") }))
        }
        return KernelConfig(source: config.source, options: Dictionary(uniqueKeysWithValues: options.map { name in
            switch config[name] {
            case .value(let value)?: (name, value)
            case .notSet?: (name, "not set")
            case nil: (name, "absent")
            }
        }))
    }

    /// Run a tool found on PATH; its stdout, trimmed, or nil if it could not
    /// run or failed.
    static func run(_ tool: String, _ arguments: [String]) -> String? {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [tool] + arguments
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        do { try process.run() } catch { return nil }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { return nil }
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
