import PageTableLab
/// The static rules a trace must keep, checked line by line while parsing so
/// that a bad trace stops before any op has run on any target.
struct TraceValidator {
    let file: String
    /// What the trace has mapped up to the line being checked.
    private(set) var mappings = TraceMappings()
    /// The trace's `profiles` line, once read.
    private(set) var profiles: Set<CompareProfile>?
    /// The newest release an op so far needs (Trace.needs).
    private(set) var needs: Trace.KernelNeed?
    private var sawOp = false

    init(file: String) { self.file = file }

    /// A `profiles` line: once, before the first op.
    mutating func restrict(to profiles: Set<CompareProfile>, line: Int) throws(TraceError) {
        guard self.profiles == nil else { throw TraceError(file: file, line: line, message: "a second `profiles` line") }
        guard !sawOp else { throw TraceError(file: file, line: line, message: "`profiles` must come before the first op") }
        self.profiles = profiles
    }

    mutating func check(_ step: TraceStep) throws(TraceError) {
        sawOp = true
        guard let range = try checkedRange(step) else { return }
        switch step.op {
        case .mmap:
            if let piece = mappings.overlap(with: range) {
                throw error(step, "mmap \(range.traceDescription) overlaps memory the trace mapped at line \(piece.line) (\(piece.range.traceDescription)); MAP_FIXED_NOREPLACE would refuse it")
            }
        case .touch(_, _, let stride):
            guard stride > 0 else { throw error(step, "STRIDE is zero") }
            try requireMapped(range, step)
            if let piece = mappings.pieces(in: range).first(where: { $0.protection != .rw }) {
                throw error(step, "touch \(range.traceDescription) writes to \(piece.range.traceDescription), which is mapped PROT \(piece.protection.rawValue): the write would fault (SIGSEGV)")
            }
            if let guarded = mappings.guarded(in: range) {
                throw error(step, "touch \(range.traceDescription) writes to \(guarded.traceDescription), a guard region: the write would fault (SIGSEGV)")
            }
        case .collapse:
            try requireMapped(range, step)
            if let guarded = mappings.guarded(in: range) {
                throw error(step, "collapse \(range.traceDescription) meets the guard region \(guarded.traceDescription): MADV_COLLAPSE refuses it (EINVAL), which is no trace to compare")
            }
        case .guardInstall, .guardRemove:
            try requireMapped(range, step)
            guard profiles == [.ptReclaim] else {
                throw error(step, "\(step.op.name) needs `profiles \(CompareProfile.ptReclaim.rawValue)` before it: guard regions came in 6.13, and the \(CompareProfile.prePTReclaim.rawValue) profile stands for Debian's 6.1")
            }
            if mappings.pieces(in: range).contains(where: \.shared) {
                need(KernelVersion(6, 15), "guard regions in shared memory, line \(step.line)")
            } else {
                need(KernelVersion(6, 13), "guard regions, line \(step.line)")
            }
        case .dontneed, .hugepage, .mprotect:
            try requireMapped(range, step)
        case .mremap(let old, let length, let new, _):
            let target = try checkedRange(step, address: new, length: length, what: "NEW")
            if target.overlaps(range) {
                throw error(step, "mremap's NEW \(target.traceDescription) overlaps its source \(range.traceDescription) (EINVAL)")
            }
            if let piece = mappings.overlap(with: target) {
                throw error(step, "mremap's NEW \(target.traceDescription) overlaps memory the trace mapped at line \(piece.line) (\(piece.range.traceDescription)); MREMAP_FIXED would unmap it")
            }
            guard profiles != [.ptReclaim] else {
                // 6.17+ moves every VMA of the range, gaps kept; only OLD
                // itself must be mapped.
                if mappings.firstHole(in: old..<old + TraceAddressSpace.pageSize) != nil {
                    throw error(step, "mremap's OLD \(old.traceHex) is not mapped (EFAULT)")
                }
                let pieces = mappings.pieces(in: range)
                if mappings.firstHole(in: range) != nil || Set(pieces.map(\.vmaKind)).count > 1 {
                    need(KernelVersion(6, 17), "an mremap across mappings, line \(step.line)")
                }
                break
            }
            try requireMapped(range, step)
            let pieces = mappings.pieces(in: old..<old + length)
            let kinds = Set(pieces.map(\.flagsKind))
            let several = "\(Self.severalVMAs) `profiles \(CompareProfile.ptReclaim.rawValue)`, whose model moves each, as 6.17+ does"
            if kinds.count > 1 {
                throw error(step, "mremap's source \(range.traceDescription) spans mappings of different kinds, protections or MADV_HUGEPAGE, which are separate VMAs: \(several)")
            }
            let lines = Set(pieces.map(\.line)).sorted()
            if lines.count > 1 {
                throw error(step, "mremap's source \(range.traceDescription) spans mappings made at lines \(lines.map(String.init).joined(separator: " and ")), which may be separate VMAs: \(several)")
            }
        case .munmap, .expect:
            break
        }
        mappings.apply(step)
    }

    /// The op's range once it is page-aligned, non-empty and inside the part
    /// of user space a trace may use; nil for `expect`.
    private func checkedRange(_ step: TraceStep) throws(TraceError) -> Range<UInt64>? {
        guard let (address, length) = step.op.extent else { return nil }
        let what = if case .mremap = step.op { "OLD" } else { "ADDR" }
        return try checkedRange(step, address: address, length: length, what: what)
    }

    private func checkedRange(_ step: TraceStep, address: UInt64, length: UInt64, what: String) throws(TraceError) -> Range<UInt64> {
        let page = TraceAddressSpace.pageSize
        guard address % page == 0 else { throw error(step, "\(what) \(address.traceHex) is not 4 KiB aligned") }
        guard length > 0 else { throw error(step, "LEN is zero") }
        guard length % page == 0 else { throw error(step, "LEN \(length.traceHex) is not a multiple of 4 KiB") }
        guard address >= TraceAddressSpace.lowest else {
            throw error(step, "\(what) \(address.traceHex) is below 4 GiB (\(TraceAddressSpace.lowest.traceHex)), where the program itself may live")
        }
        let (end, overflow) = address.addingReportingOverflow(length)
        guard !overflow, end <= TraceAddressSpace.end else {
            throw error(step, "\(step.op.name) at \(address.traceHex) of \(length.traceHex) bytes runs past the end of 47-bit user space (\(TraceAddressSpace.end.traceHex))")
        }
        return address..<end
    }

    private mutating func need(_ release: KernelVersion, _ why: String) {
        if needs.map({ $0.release < release }) ?? true { needs = Trace.KernelNeed(release: release, why: why) }
    }

    /// Why a move of several VMAs needs the 6.14+ profile.
    private static let severalVMAs = "EFAULT before 6.17, and the pre-6.14 profile stands for Debian's 6.1; moving several VMAs needs"

    private func requireMapped(_ range: Range<UInt64>, _ step: TraceStep) throws(TraceError) {
        if let hole = mappings.firstHole(in: range) {
            throw error(step, "\(step.op.name) \(range.traceDescription) reaches \(hole.traceHex), which the trace has not mapped")
        }
    }

    private func error(_ step: TraceStep, _ message: String) -> TraceError {
        TraceError(file: file, line: step.line, message: message)
    }
}

extension UInt64 {
    /// How traces and their errors write addresses.
    var traceHex: String { "0x" + String(self, radix: 16) }
}

extension Range<UInt64> {
    var traceDescription: String { "\(lowerBound.traceHex)-\(upperBound.traceHex)" }
}
