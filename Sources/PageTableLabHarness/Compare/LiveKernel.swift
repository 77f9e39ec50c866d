#if canImport(Glibc)
import PageTableLab
import Glibc
#endif
import CHarness

/// The kernel this process runs on, as a trace target: the trace's ops become
/// real syscalls on this process's own address space, and VmPTE comes from
/// /proc/self/status. Nothing here allocates between the VmPTE readings that
/// bracket an op (see `CompareRunner`).
public final class LiveKernel: TraceTarget, TracePreflight, MeasuresThisProcess {
    public let name = "kernel"
    private let reader = VmPTEReader()
    private let vmstat = ProcReader("/proc/vmstat")
    /// /proc/self/smaps, read only for traces that use THP (it is large),
    /// and only where PAGEMAP_SCAN is missing.
    private lazy var smaps = ProcReader("/proc/self/smaps", capacity: 16 << 20)
    /// /proc/self/pagemap, for PAGEMAP_SCAN; -1 once the kernel has shown
    /// it has none.
    private var pagemap: Int32
    /// Whether the trace about to run can map huge pages, so that an op
    /// must watch for THP fallbacks (set by `preflight`).
    private var watchesTHP = true
    /// A trace with MREMAP_DONTUNMAP can map one memfd twice, and a
    /// collapse of shared memory then retracts the PTE tables of every
    /// mapping of the file: the most it may free is the trace's whole
    /// reach, not the collapsed range's (nil: that range's).
    private var collapseReach: [Range<UInt64>]?
    public private(set) var lastOpChangeKilobytes = 0
    /// Whether ops are bracketed by VmPTE readings (and THP counters): off,
    /// an op is its system calls alone, for timing what the kernel itself
    /// takes (`TraceReplay`).
    public let measuring: Bool

    /// Fails when this kernel does not report VmPTE, i.e. when there is
    /// nothing to compare with.
    public init(measuring: Bool = true) throws(LiveKernelError) {
        self.measuring = measuring
        pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)
        do { _ = try reader.kilobytes() } catch { throw .noVmPTE(error.description) }
    }

    deinit { if pagemap >= 0 { close(pagemap) } }

    /// Why a live comparison cannot run here, or nil when it can.
    public static var unavailableReason: String? {
        do { _ = try VmPTEReader().kilobytes(); return nil } catch { return error.description }
    }

    /// MAP_FIXED_NOREPLACE (Linux 4.17): map exactly here or fail with EEXIST,
    /// never replace. Spelled out because Glibc's module may not export it.
    static let mapFixedNoreplace: Int32 = 0x10_0000

    public func mmap(address: UInt64, length: UInt64, shared: Bool) throws {
        do {
            try quiet("mmap", address: address, length: length, allowed: 0...0) {
                try map(address: address, length: length, shared: shared)
            }
        } catch {
            // A noisy mmap did map: the runner cleans up only ops that
            // succeeded, so undo it here.
            if case LiveKernelError.noisy = error {
                _ = Glibc.munmap(UnsafeMutableRawPointer(bitPattern: UInt(address)), Int(length))
            }
            throw error
        }
    }

    private func map(address: UInt64, length: UInt64, shared: Bool) throws {
        var fd: Int32 = -1
        if shared {
            fd = ptlab_memfd(Int(length))
            guard fd >= 0 else { throw LiveKernelError.syscall("memfd_create", address: address, length: length, errno: errno) }
        }
        // The mapping holds the file; the descriptor is not needed after.
        defer { if fd >= 0 { close(fd) } }
        let flags = (shared ? MAP_SHARED : MAP_PRIVATE | MAP_ANONYMOUS) | Self.mapFixedNoreplace
        let result = Glibc.mmap(UnsafeMutableRawPointer(bitPattern: UInt(address)), Int(length),
                                PROT_READ | PROT_WRITE, flags, fd, 0)
        guard let result, result != UnsafeMutableRawPointer(bitPattern: -1) else {
            let e = errno
            if e == EEXIST { throw LiveKernelError.collision(address: address, length: length) }
            throw LiveKernelError.syscall("mmap", address: address, length: length, errno: e)
        }
        let got = UInt64(UInt(bitPattern: result))
        guard got == address else {
            // A kernel older than 4.17 takes the flag as a mere hint.
            _ = Glibc.munmap(result, Int(length))
            throw LiveKernelError.misplaced(address: address, got: got)
        }
        // Without this, a 2 MiB-aligned write in a THP "always" system, or
        // khugepaged later, could map a PMD leaf and skip the PTE table the
        // trace means to allocate; the trace's `hugepage` lifts it.
        guard madvise(result, Int(length), MADV_NOHUGEPAGE) == 0 else {
            let e = errno
            _ = Glibc.munmap(result, Int(length))
            throw LiveKernelError.syscall("madvise(MADV_NOHUGEPAGE)", address: address, length: length, errno: e)
        }
    }

    public func touch(address: UInt64, length: UInt64, stride: UInt64) throws {
        let most = Self.tableKilobytes(address..<address + length)
        try quiet("touch", address: address, length: length, allowed: 0...most) {
            var at = address
            while at < address + length {
                UnsafeMutablePointer<UInt8>(bitPattern: UInt(at))!.pointee = 1
                let (next, overflow) = at.addingReportingOverflow(stride)
                if overflow { break }
                at = next
            }
        }
    }

    public func madviseDontneed(address: UInt64, length: UInt64) throws {
        let most = Self.tableKilobytes(address..<address + length, levels: [.pte])
        try quiet("madvise(MADV_DONTNEED)", address: address, length: length, allowed: -most...0) {
            try advise(address, length, MADV_DONTNEED, "MADV_DONTNEED")
        }
    }

    public func munmap(address: UInt64, length: UInt64) throws {
        let most = Self.tableKilobytes(address..<address + length)
        try quiet("munmap", address: address, length: length, allowed: -most...0) {
            guard Glibc.munmap(UnsafeMutableRawPointer(bitPattern: UInt(address)), Int(length)) == 0 else {
                throw LiveKernelError.syscall("munmap", address: address, length: length, errno: errno)
            }
        }
    }

    public func madviseHugepage(address: UInt64, length: UInt64) throws {
        try quiet("madvise(MADV_HUGEPAGE)", address: address, length: length, allowed: 0...0) {
            try advise(address, length, MADV_HUGEPAGE, "MADV_HUGEPAGE")
        }
    }

    /// MADV_COLLAPSE (Linux 6.1). Its errno is the trace's error, except
    /// where the kernel says trying again might work — no huge page
    /// (ENOMEM), a busy page (EAGAIN), a charge that failed (EBUSY): the
    /// model cannot be held to that, so the rest is not comparable.
    public func madviseCollapse(address: UInt64, length: UInt64) throws {
        let most = (collapseReach ?? [address..<address + length]).reduce(0) { $0 + Self.tableKilobytes($1, levels: [.pte]) }
        try quiet("madvise(MADV_COLLAPSE)", address: address, length: length, allowed: -most...0) {
            guard madvise(UnsafeMutableRawPointer(bitPattern: UInt(address)), Int(length), Self.madvCollapse) == 0 else {
                let e = errno
                if e == ENOMEM || e == EAGAIN || e == EBUSY {
                    throw NotComparable("MADV_COLLAPSE at \(address.traceHex) failed with \(String(cString: strerror(e))): the kernel could not collapse now, so its memory is no longer the model's")
                }
                throw LiveKernelError.syscall("madvise(MADV_COLLAPSE)", address: address, length: length, errno: e)
            }
        }
    }

    public func mremap(from old: UInt64, length: UInt64, to new: UInt64) throws {
        try mremap(old, length, new, dontUnmap: false)
    }

    /// MREMAP_DONTUNMAP (5.7; every mapping since 5.13).
    public func mremapDontUnmap(from old: UInt64, length: UInt64, to new: UInt64) throws {
        try mremap(old, length, new, dontUnmap: true)
    }

    private func mremap(_ old: UInt64, _ length: UInt64, _ new: UInt64, dontUnmap: Bool) throws {
        let name = dontUnmap ? "mremap(MREMAP_DONTUNMAP)" : "mremap"
        let most = Self.tableKilobytes(old..<old + length) + Self.tableKilobytes(new..<new + length)
        try quiet(name, address: old, length: length, allowed: -most...most) {
            let result = ptlab_mremap_fixed(UnsafeMutableRawPointer(bitPattern: UInt(old)), Int(length),
                                            UnsafeMutableRawPointer(bitPattern: UInt(new)), dontUnmap ? 1 : 0)
            guard result != UnsafeMutableRawPointer(bitPattern: -1) else {
                throw LiveKernelError.syscall(name, address: old, length: length, errno: errno)
            }
        }
    }

    public func mprotect(address: UInt64, length: UInt64, protection: Protection) throws {
        let prot: Int32 = switch protection {
        case .none: PROT_NONE
        case .r: PROT_READ
        case .rw: PROT_READ | PROT_WRITE
        }
        try quiet("mprotect", address: address, length: length, allowed: 0...0) {
            guard Glibc.mprotect(UnsafeMutableRawPointer(bitPattern: UInt(address)), Int(length), prot) == 0 else {
                throw LiveKernelError.syscall("mprotect", address: address, length: length, errno: errno)
            }
        }
    }

    /// MADV_GUARD_INSTALL (6.13+): page tables are allocated for the
    /// markers, none freed (what is mapped there is zapped, tables kept).
    public func madviseGuardInstall(address: UInt64, length: UInt64) throws {
        let most = Self.tableKilobytes(address..<address + length)
        try quiet("madvise(MADV_GUARD_INSTALL)", address: address, length: length, allowed: 0...most) {
            try advise(address, length, Self.madvGuardInstall, "MADV_GUARD_INSTALL")
        }
    }

    /// MADV_GUARD_REMOVE: the markers cleared, no table allocated or freed.
    public func madviseGuardRemove(address: UInt64, length: UInt64) throws {
        try quiet("madvise(MADV_GUARD_REMOVE)", address: address, length: length, allowed: 0...0) {
            try advise(address, length, Self.madvGuardRemove, "MADV_GUARD_REMOVE")
        }
    }

    /// MADV_COLLAPSE, MADV_GUARD_INSTALL and MADV_GUARD_REMOVE, which
    /// Glibc's headers may not name yet.
    static let madvCollapse: Int32 = 25
    static let madvGuardInstall: Int32 = 102
    static let madvGuardRemove: Int32 = 103

    private func advise(_ address: UInt64, _ length: UInt64, _ advice: Int32, _ name: String) throws {
        guard madvise(UnsafeMutableRawPointer(bitPattern: UInt(address)), Int(length), advice) == 0 else {
            throw LiveKernelError.syscall("madvise(\(name))", address: address, length: length, errno: errno)
        }
    }

    /// VmPTE counts the whole process. Runs `body` and checks that VmPTE
    /// moved only as far as the op itself can move it: mmap, hugepage and
    /// mprotect allocate no table, munmap, DONTNEED and collapse only free,
    /// and none reaches beyond the tables whose spans meet the op's range. Anything else means another
    /// thread allocated or freed page tables meanwhile, and the measurement
    /// is refused rather than reported. Noise inside those bounds cannot be
    /// told apart: the process must keep still while a trace runs. (Measured
    /// here: 1500 runs of the shipped traces in a test process, no noise; with
    /// a thread mapping and writing 4 MiB blocks nonstop, most runs stop with
    /// this error and roughly one in six mismatches silently.)
    ///
    /// A fault that could not get its huge page (thp_fault_fallback,
    /// thp_file_fallback in /proc/vmstat) means the kernel's memory is no
    /// longer what the model's is, and the trace stops as not comparable;
    /// a trace without hugepage or collapse maps no huge page (mmap gives
    /// MADV_NOHUGEPAGE), so it skips the two /proc/vmstat reads.
    /// (The counters are the whole system's: another process's fallback
    /// stops a trace too, erring towards no verdict.)
    private func quiet(_ op: String, address: UInt64, length: UInt64, allowed: ClosedRange<Int>,
                       _ body: () throws -> Void) throws {
        guard measuring else { return try body() }
        let thpBefore = watchesTHP ? THPVMStat.read(vmstat) : nil
        let before = try vmPTEKilobytes()
        try body()
        let change = try vmPTEKilobytes() - before
        lastOpChangeKilobytes = change
        if let b = thpBefore, let a = THPVMStat.read(vmstat) {
            let d = a - b
            if d["thp_fault_fallback"] > 0 || d["thp_file_fallback"] > 0 {
                throw NotComparable("the kernel could not get a huge page during \(op) at \(address.traceHex) and mapped small pages (thp_fault_fallback or thp_file_fallback rose)")
            }
        }
        guard allowed.contains(change) else {
            throw LiveKernelError.noisy(op: op, address: address, length: length, changeKB: change, allowed: allowed)
        }
    }

    /// kB of every table of `levels` whose span meets `range`: the most one
    /// op on the range can allocate or free (DONTNEED frees PTE tables only).
    static func tableKilobytes(_ range: Range<UInt64>, levels: [Level] = [.pte, .pmd, .pud]) -> Int {
        levels.reduce(0) { sum, level in
            let span = level.tableSpan
            return sum + 4 * Int((range.upperBound - 1) / span - range.lowerBound / span + 1)
        }
    }

    public func vmPTEKilobytes() throws -> Int {
        do { return try reader.kilobytes() } catch { throw LiveKernelError.noVmPTE(error.description) }
    }

    /// The live kernel can only be compared in 512 GiB regions this process
    /// does not otherwise use.
    public func preflight(_ trace: Trace) throws(TraceError) {
        try ProcessMaps.current().checkRegionsFree(for: trace)
        watchesTHP = trace.usesTHP
        let mapsFilesTwice = trace.steps.contains { if case .mremap(_, _, _, true) = $0.op { true } else { false } }
        collapseReach = mapsFilesTwice ? trace.steps.flatMap(\.op.ranges) : nil
    }

    /// Huge PMDs in `regions`: AnonHugePages and ShmemPmdMapped of the
    /// VMAs there, as /proc/self/smaps counts them — or, where the kernel
    /// has PAGEMAP_SCAN (6.7+), the huge-PMD-mapped bytes of the regions
    /// themselves: the same count, from a walk of the regions alone, where
    /// generating smaps walks every table of the process (milliseconds, once
    /// per checkpoint of a THP trace).
    public func hugePMDs(in regions: [Range<UInt64>]) throws -> Int {
        if pagemap >= 0, let bytes = hugeMappedBytes(in: regions) { return bytes / (2 << 20) }
        return try hugePMDsFromSmaps(in: regions)
    }

    /// PAGEMAP_SCAN's count, or nil (and smaps from then on) without it.
    private func hugeMappedBytes(in regions: [Range<UInt64>]) -> Int? {
        var bytes = 0
        for region in regions {
            let n = ptlab_huge_mapped_bytes(pagemap, region.lowerBound, region.upperBound)
            guard n >= 0 else {
                close(pagemap)
                pagemap = -1
                return nil
            }
            bytes += n
        }
        return bytes
    }

    func hugePMDsFromSmaps(in regions: [Range<UInt64>]) throws -> Int {
        let text = try smaps.read()
        var kilobytes = 0
        var inside = false
        let keys = [Array("AnonHugePages:".utf8), Array("ShmemPmdMapped:".utf8)]
        ProcReader.forEachLine(text) { line in
            if let range = Self.vmaRange(line) {
                // The regions hold nothing but the trace's (preflight), so
                // every VMA that meets them is the trace's, even one that
                // runs across two of them.
                inside = regions.contains { $0.overlaps(range) }
            } else if inside, let v = keys.lazy.compactMap({ ProcReader.parse(line: line, key: $0) }).first {
                kilobytes += v
            }
        }
        return kilobytes / 2048
    }

    /// The range of an smaps header line ("start-end perms ..."), or nil.
    static func vmaRange(_ line: UnsafeRawBufferPointer) -> Range<UInt64>? {
        var i = 0
        func hex() -> UInt64? {
            var v: UInt64 = 0
            var digits = 0
            while i < line.count, let d = Self.hexDigit(line[i]) {
                v = v << 4 | d
                digits += 1
                i += 1
            }
            return digits > 0 ? v : nil
        }
        guard let start = hex(), i < line.count, line[i] == UInt8(ascii: "-") else { return nil }
        i += 1
        guard let end = hex(), i < line.count, line[i] == UInt8(ascii: " "), start < end else { return nil }
        return start..<end
    }

    private static func hexDigit(_ c: UInt8) -> UInt64? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): UInt64(c - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): UInt64(c - UInt8(ascii: "a") + 10)
        default: nil
        }
    }

    /// THP events so far, the whole system's (/proc/vmstat). Where
    /// PAGEMAP_SCAN fails part way, the hinting count goes from 0 to the
    /// whole system's, and a checkpoint whose huge PMDs differ after that
    /// is not comparable: erring towards no verdict.
    public func thpEvents() throws -> THPEventCount {
        guard let now = THPVMStat.read(vmstat) else {
            throw LiveKernelError.syscall("read /proc/vmstat", address: 0, length: 0, errno: errno)
        }
        // PAGEMAP_SCAN sees a PROT_NONE huge PMD as present; smaps may not.
        return THPEventCount(collapses: now["thp_collapse_alloc"],
                             fallbacks: now["thp_fault_fallback"] + now["thp_file_fallback"],
                             unseenNUMAHinted: pagemap >= 0 ? 0 : now["numa_huge_pte_updates"])
    }
}

public enum LiveKernelError: Error, Equatable, CustomStringConvertible {
    /// The words that end a `noisy` report, so callers can tell interference
    /// (retry in a quieter moment) from a disagreement (a bug).
    public static let interference = "another thread of this process allocated or freed page tables meanwhile; run the comparison in a quiet process"

    /// MAP_FIXED_NOREPLACE found something already mapped there.
    case collision(address: UInt64, length: UInt64)
    case misplaced(address: UInt64, got: UInt64)
    case syscall(String, address: UInt64, length: UInt64, errno: Int32)
    case noVmPTE(String)
    /// VmPTE moved in a way the op cannot explain (see `LiveKernel.quiet`).
    case noisy(op: String, address: UInt64, length: UInt64, changeKB: Int, allowed: ClosedRange<Int>)

    public var description: String {
        switch self {
        case .collision(let a, let l):
            "mmap at \(a.traceHex) (\(l.traceHex) bytes) collides with an existing mapping of this process (MAP_FIXED_NOREPLACE: EEXIST)"
        case .misplaced(let a, let got):
            "mmap at \(a.traceHex) was placed at \(got.traceHex): this kernel ignores MAP_FIXED_NOREPLACE (needs Linux 4.17)"
        case .syscall(let name, let a, let l, let e):
            "\(name) at \(a.traceHex) (\(l.traceHex) bytes) failed: \(String(cString: strerror(e)))"
        case .noVmPTE(let why):
            "no VmPTE to compare with: \(why)"
        case .noisy(let op, let a, let l, let change, let allowed):
            "VmPTE changed by \(change) kB during \(op) at \(a.traceHex) (\(l.traceHex) bytes), outside what the op can do (\(allowed.lowerBound)...\(allowed.upperBound) kB): \(Self.interference)"
        }
    }
}
