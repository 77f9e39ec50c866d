import PageTableLab
/// A parsed, statically checked trace: what a mapping workload does, line by
/// line, in the units the kernel's syscalls take.
public struct Trace: Equatable, Sendable {
    /// The path as the user named it, for error messages and reports.
    public let file: String
    public let steps: [TraceStep]
    /// The profiles the trace is for (`profiles` line); nil: every one. A
    /// comparison under another profile skips it.
    public let profiles: Set<CompareProfile>?
    /// The oldest release whose mm does every op of the trace, and which op
    /// needs it (guard regions 6.13, in shared memory 6.15; an mremap across
    /// mappings 6.17); nil when any does. A comparison for an older kernel
    /// skips the trace.
    public let needs: KernelNeed?

    public struct KernelNeed: Equatable, Sendable {
        public let release: KernelVersion
        public let why: String
    }

    public init(file: String, steps: [TraceStep], profiles: Set<CompareProfile>? = nil, needs: KernelNeed? = nil) {
        self.file = file
        self.steps = steps
        self.profiles = profiles
        self.needs = needs
    }

    /// Why a comparison under `profile`, for `kernel`'s mm, does not run
    /// it; nil when it does.
    public func skipReason(under profile: CompareProfile, kernel: KernelVersion?) -> String? {
        if let profiles, !profiles.contains(profile) {
            let names = profiles.map(\.rawValue).sorted().joined(separator: ", ")
            return "the trace is for \(names) only, and this comparison is \(profile.rawValue)"
        }
        if let needs, let kernel, kernel < needs.release {
            return "the trace needs \(needs.release) (\(needs.why)), and this comparison is for \(kernel)"
        }
        return nil
    }

    /// The `expect` steps, in order.
    public var checkpoints: [TraceStep] {
        steps.filter { if case .expect = $0.op { true } else { false } }
    }

    /// Whether the trace asks for huge pages (hugepage or collapse): only
    /// then can memory be huge, mmap giving MADV_NOHUGEPAGE.
    public var usesTHP: Bool {
        steps.contains {
            switch $0.op {
            case .hugepage, .collapse: true
            default: false
            }
        }
    }

    /// How many ops (steps but `expect`) the trace has.
    public var opCount: Int { steps.count - checkpoints.count }
}

public struct TraceStep: Equatable, Sendable {
    /// 1-based line in the trace file.
    public let line: Int
    public let op: TraceOp

    public init(line: Int, op: TraceOp) {
        self.line = line
        self.op = op
    }
}

public enum TraceOp: Equatable, Sendable {
    /// A read-write mapping exactly at `address`: anonymous private memory,
    /// or with `shared` a MAP_SHARED mapping of a fresh memfd of `length`
    /// bytes. MADV_NOHUGEPAGE follows at once (a later `hugepage` lifts it).
    case mmap(address: UInt64, length: UInt64, shared: Bool)
    /// Write one byte at address, address + stride, … below address + length.
    case touch(address: UInt64, length: UInt64, stride: UInt64)
    /// madvise(MADV_DONTNEED).
    case dontneed(address: UInt64, length: UInt64)
    case munmap(address: UInt64, length: UInt64)
    /// madvise(MADV_HUGEPAGE).
    case hugepage(address: UInt64, length: UInt64)
    /// madvise(MADV_COLLAPSE).
    case collapse(address: UInt64, length: UInt64)
    /// mremap(old, length, length, MREMAP_MAYMOVE|MREMAP_FIXED, new), with
    /// `dontUnmap` also MREMAP_DONTUNMAP: the old range stays mapped.
    case mremap(old: UInt64, length: UInt64, new: UInt64, dontUnmap: Bool = false)
    case mprotect(address: UInt64, length: UInt64, protection: Protection)
    /// madvise(MADV_GUARD_INSTALL) (6.13+).
    case guardInstall(address: UInt64, length: UInt64)
    /// madvise(MADV_GUARD_REMOVE).
    case guardRemove(address: UInt64, length: UInt64)
    /// Compare VmPTE growth since the trace began.
    case expect(TraceExpectation)

    /// The address and length the op names (mremap: its source), as
    /// written, before any check; nil for `expect`.
    public var extent: (address: UInt64, length: UInt64)? {
        switch self {
        case .mmap(let a, let l, _), .touch(let a, let l, _), .dontneed(let a, let l), .munmap(let a, let l),
             .hugepage(let a, let l), .collapse(let a, let l), .mremap(let a, let l, _, _), .mprotect(let a, let l, _),
             .guardInstall(let a, let l), .guardRemove(let a, let l):
            (a, l)
        case .expect:
            nil
        }
    }

    /// The bytes the op acts on (mremap: its source); nil for `expect`.
    /// Only for a checked trace: an unchecked one may run past 2^64.
    public var range: Range<UInt64>? {
        extent.map { $0.address..<$0.address + $0.length }
    }

    /// Every range the op touches: mremap's source and destination.
    public var ranges: [Range<UInt64>] {
        if case .mremap(let old, let l, let new, _) = self { return [old..<old + l, new..<new + l] }
        return range.map { [$0] } ?? []
    }

    public var name: String {
        switch self {
        case .mmap: "mmap"
        case .touch: "touch"
        case .dontneed: "dontneed"
        case .munmap: "munmap"
        case .hugepage: "hugepage"
        case .collapse: "collapse"
        case .mremap: "mremap"
        case .mprotect: "mprotect"
        case .guardInstall: "guard"
        case .guardRemove: "unguard"
        case .expect: "expect"
        }
    }
}

/// The optional value on an `expect` line (an extension of the trace
/// format): `expect 2056` states the growth in kB the trace's author
/// measured; `expect 8 pre-6.14=2056` states a different value for a profile.
public struct TraceExpectation: Equatable, Sendable {
    /// The growth for every profile without its own value; nil: none stated.
    public var kilobytes: Int?
    public var perProfile: [CompareProfile: Int]

    public init(kilobytes: Int? = nil, perProfile: [CompareProfile: Int] = [:]) {
        self.kilobytes = kilobytes
        self.perProfile = perProfile
    }

    public func kilobytes(for profile: CompareProfile) -> Int? {
        perProfile[profile] ?? kilobytes
    }
}

/// The part of the x86-64 user address space a trace may use.
public enum TraceAddressSpace {
    public static let pageSize: UInt64 = 4096
    /// Below 4 GiB live the program binary of a non-PIE build and, with
    /// randomisation off, the heap: a trace keeps clear of them.
    public static let lowest: UInt64 = 4 << 30
    /// TASK_SIZE_MAX with 4-level paging: 47-bit user space less a guard page.
    public static let end: UInt64 = (1 << 47) - pageSize
    /// One PGD entry's span (512 GiB): the unit in which a trace must have
    /// the address space to itself, since a PUD table is shared by
    /// everything in it.
    public static let regionSpan: UInt64 = Level.pud.tableSpan

    /// The 512 GiB regions a range touches, as region-aligned ranges.
    public static func regions(of range: Range<UInt64>) -> [Range<UInt64>] {
        let first = range.lowerBound / regionSpan
        let last = (range.upperBound - 1) / regionSpan
        return (first...last).map { $0 * regionSpan..<($0 + 1) * regionSpan }
    }
}
