import PageTableLab
/// VmPTE (`mm->pgtables_bytes` in kB) from /proc/self/status, read without
/// allocating (see ProcReader).
final class VmPTEReader {
    private let status = ProcReader("/proc/self/status")
    static let key = Array("VmPTE:".utf8)

    func kilobytes() throws(ProcReader.Failure) -> Int {
        try Self.parse(status.read())
    }

    /// The number after "VmPTE:" at the start of a line.
    static func parse(_ text: UnsafeRawBufferPointer) throws(ProcReader.Failure) -> Int {
        guard let v = ProcReader.parse(text, key: key) else { throw .missing(path: "/proc/self/status", key: "VmPTE") }
        return v
    }
}

/// The /proc/vmstat events that say the kernel did not do what the model
/// assumes a kernel does: it could not get a huge page (and mapped small
/// pages instead), or khugepaged collapsed memory on its own.
struct THPVMStat: Equatable {
    static let keys = ["thp_fault_fallback", "thp_file_fallback", "thp_collapse_alloc", "thp_collapse_alloc_failed",
                       "numa_huge_pte_updates"]
    /// Each key as the bytes that start its line ("thp_file_fallback ").
    private static let lineKeys = keys.map { Array(($0 + " ").utf8) }
    var values: [Int]

    static func read(_ reader: ProcReader) -> THPVMStat? {
        guard let text = try? reader.read() else { return nil }
        return THPVMStat(values: ProcReader.parse(text, keys: lineKeys).map { $0 ?? 0 })
    }

    subscript(_ key: String) -> Int { values[Self.keys.firstIndex(of: key)!] }

    static func - (a: THPVMStat, b: THPVMStat) -> THPVMStat {
        THPVMStat(values: zip(a.values, b.values).map(-))
    }
}
