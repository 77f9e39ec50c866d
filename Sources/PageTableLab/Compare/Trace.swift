/// A parsed, statically checked trace: what a mapping workload does, line by
/// line, in the units the kernel's syscalls take.
public struct Trace: Equatable, Sendable {
    /// The path as the user named it, for error messages and reports.
    public let file: String
    public let steps: [TraceStep]

    public init(file: String, steps: [TraceStep]) {
        self.file = file
        self.steps = steps
    }

    /// The `expect` steps, in order.
    public var checkpoints: [TraceStep] {
        steps.filter { if case .expect = $0.op { true } else { false } }
    }
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
    /// Anonymous private read-write mapping exactly at `address`.
    case mmap(address: UInt64, length: UInt64)
    /// Write one byte at address, address + stride, … below address + length.
    case touch(address: UInt64, length: UInt64, stride: UInt64)
    /// madvise(MADV_DONTNEED).
    case dontneed(address: UInt64, length: UInt64)
    case munmap(address: UInt64, length: UInt64)
    /// Compare VmPTE growth since the trace began.
    case expect(TraceExpectation)

    /// The bytes the op acts on; nil for `expect`.
    public var range: Range<UInt64>? {
        switch self {
        case .mmap(let a, let l), .touch(let a, let l, _), .dontneed(let a, let l), .munmap(let a, let l):
            a..<a + l
        case .expect:
            nil
        }
    }

    public var name: String {
        switch self {
        case .mmap: "mmap"
        case .touch: "touch"
        case .dontneed: "dontneed"
        case .munmap: "munmap"
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
