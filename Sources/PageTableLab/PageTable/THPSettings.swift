#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// The transparent-hugepage settings of /sys/kernel/mm/transparent_hugepage/
/// that decide whether a fault maps a huge PMD. MADV_COLLAPSE ignores them
/// (it refuses only VM_NOHUGEPAGE), and so does a fault that finds a huge
/// folio already in a file's page cache.
public struct THPSettings: Sendable, Equatable, Codable {
    /// `enabled`: anonymous memory.
    public enum Enabled: String, Sendable, Codable, CaseIterable {
        case always, madvise, never
    }

    /// `shmem_enabled`: shmem faults (memfd mappings).
    public enum ShmemEnabled: String, Sendable, Codable, CaseIterable {
        case always
        /// Huge only where the whole huge page lies within the file's size.
        case withinSize = "within_size"
        /// Huge only in VM_HUGEPAGE mappings.
        case advise
        case never
        /// Emergency off, MADV_COLLAPSE included.
        case deny
        /// Huge everywhere (testing).
        case force
    }

    public var enabled: Enabled
    public var shmemEnabled: ShmemEnabled

    public init(enabled: Enabled = .madvise, shmemEnabled: ShmemEnabled = .never) {
        self.enabled = enabled
        self.shmemEnabled = shmemEnabled
    }

    public static let sysfs = "/sys/kernel/mm/transparent_hugepage"

    /// What the running kernel says; `never` for a setting it does not
    /// show (a kernel without THP maps no huge page on a fault).
    public static var running: THPSettings {
        THPSettings(enabled: read("enabled").flatMap(Enabled.init) ?? .never,
                    shmemEnabled: read("shmem_enabled").flatMap(ShmemEnabled.init) ?? .never)
    }

    /// The bracketed word of a sysfs choice file ("always [madvise] never").
    static func read(_ name: String) -> String? {
        guard let file = fopen("\(sysfs)/\(name)", "r") else { return nil }
        defer { fclose(file) }
        var buffer = [CChar](repeating: 0, count: 256)
        guard fgets(&buffer, Int32(buffer.count), file) != nil else { return nil }
        return selected(in: String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }

    static func selected(in line: String) -> String? {
        guard let open = line.firstIndex(of: "["), let close = line[open...].firstIndex(of: "]") else { return nil }
        return String(line[line.index(after: open)..<close])
    }

    /// vma_thp_disabled + the sysfs policy: may a fault in `vma` map
    /// anonymous memory with a huge PMD?
    func anonymousFault(_ vma: VMA) -> Bool {
        guard !vma.flags.contains(.noHugepage) else { return false }
        switch enabled {
        case .always: return true
        case .madvise: return vma.flags.contains(.hugepage)
        case .never: return false
        }
    }

    /// shmem_huge_global_enabled for a fault at file page `index` of a
    /// file of `size` bytes mapped by `vma`.
    func shmemFault(_ vma: VMA, index: UInt64, fileSize: UInt64) -> Bool {
        guard !vma.flags.contains(.noHugepage) else { return false }
        switch shmemEnabled {
        case .always, .force: return true
        case .withinSize: return ((index | 511) + 1) << 12 <= fileSize
        case .advise: return vma.flags.contains(.hugepage)
        case .never, .deny: return false
        }
    }
}

extension VMA {
    /// thp_vma_suitable_order for PMD order: the huge page around `address`
    /// lies wholly inside the VMA and, for a file, virtual address and file
    /// offset agree modulo 2 MiB (or a PMD could not map the folio).
    func suitsHugePMD(at address: UInt64) -> Bool {
        let base = address & ~(MM.pmdSize - 1)
        guard base >= start, base + MM.pmdSize <= end else { return false }
        return isAnonymous || ((start >> 12) &- pgoff) & 511 == 0
    }
}

/// The THP events of /proc/vmstat that the model produces, per mm.
public final class THPEvents: Sendable {
    /// thp_fault_alloc: a fault mapped a huge PMD.
    public let faultAlloc = Atomic<Int>(0)
    /// thp_fault_fallback: a fault that could have mapped a huge PMD got
    /// no huge page and mapped small pages instead.
    public let faultFallback = Atomic<Int>(0)
    /// thp_collapse_alloc: a collapse allocated its huge page.
    public let collapseAlloc = Atomic<Int>(0)
    /// thp_split_pmd: a huge PMD was split.
    public let splitPMD = Atomic<Int>(0)

    init() {}
}
