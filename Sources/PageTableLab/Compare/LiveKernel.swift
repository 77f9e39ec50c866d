#if canImport(Glibc)
import Glibc
#endif

/// The kernel this process runs on, as a trace target: the trace's ops become
/// real syscalls on this process's own address space, and VmPTE comes from
/// /proc/self/status. Nothing here allocates between the VmPTE readings that
/// bracket an op (see `CompareRunner`).
public final class LiveKernel: TraceTarget, TracePreflight {
    public let name = "kernel"
    private let reader = VmPTEReader()

    /// Fails when this kernel does not report VmPTE, i.e. when there is
    /// nothing to compare with.
    public init() throws(LiveKernelError) {
        do { _ = try reader.kilobytes() } catch { throw .noVmPTE(error.description) }
    }

    /// Why a live comparison cannot run here, or nil when it can.
    public static var unavailableReason: String? {
        do { _ = try VmPTEReader().kilobytes(); return nil } catch { return error.description }
    }

    /// MAP_FIXED_NOREPLACE (Linux 4.17): map exactly here or fail with EEXIST,
    /// never replace. Spelled out because Glibc's module may not export it.
    static let mapFixedNoreplace: Int32 = 0x10_0000

    public func mmap(address: UInt64, length: UInt64) throws {
        do {
            try quiet("mmap", address: address, length: length, allowed: 0...0) { try map(address: address, length: length) }
        } catch {
            // A noisy mmap did map: the runner cleans up only ops that
            // succeeded, so undo it here.
            if case LiveKernelError.noisy = error {
                _ = Glibc.munmap(UnsafeMutableRawPointer(bitPattern: UInt(address)), Int(length))
            }
            throw error
        }
    }

    private func map(address: UInt64, length: UInt64) throws {
        let flags = MAP_PRIVATE | MAP_ANONYMOUS | Self.mapFixedNoreplace
        let result = Glibc.mmap(UnsafeMutableRawPointer(bitPattern: UInt(address)), Int(length),
                                PROT_READ | PROT_WRITE, flags, -1, 0)
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
        // trace means to allocate.
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
            guard madvise(UnsafeMutableRawPointer(bitPattern: UInt(address)), Int(length), MADV_DONTNEED) == 0 else {
                throw LiveKernelError.syscall("madvise(MADV_DONTNEED)", address: address, length: length, errno: errno)
            }
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

    /// VmPTE counts the whole process. Runs `body` and checks that VmPTE
    /// moved only as far as the op itself can move it: mmap allocates no
    /// table, munmap and DONTNEED only free, and none reaches beyond the
    /// tables whose spans meet the op's range. Anything else means another
    /// thread allocated or freed page tables meanwhile, and the measurement
    /// is refused rather than reported. Noise inside those bounds cannot be
    /// told apart: the process must keep still while a trace runs. (Measured
    /// here: 1500 runs of the shipped traces in a test process, no noise; with
    /// a thread mapping and writing 4 MiB blocks nonstop, most runs stop with
    /// this error and roughly one in six mismatches silently.)
    private func quiet(_ op: String, address: UInt64, length: UInt64, allowed: ClosedRange<Int>,
                       _ body: () throws -> Void) throws {
        let before = try vmPTEKilobytes()
        try body()
        let change = try vmPTEKilobytes() - before
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
