import PageTableLab
/// Something a trace runs against: the mm model or the live kernel. Ops take
/// the trace's checked values (page-aligned, non-empty, inside the trace's
/// own mappings where the op needs that); a target reports its failures by
/// throwing, and the runner pins them to the trace line.
public protocol TraceTarget: AnyObject {
    var name: String { get }            // "model" / "kernel"
    /// With `shared`, MAP_SHARED of a fresh memfd of `length` bytes; either
    /// way MADV_NOHUGEPAGE at once.
    func mmap(address: UInt64, length: UInt64, shared: Bool) throws
    func touch(address: UInt64, length: UInt64, stride: UInt64) throws
    func madviseDontneed(address: UInt64, length: UInt64) throws
    func munmap(address: UInt64, length: UInt64) throws
    func madviseHugepage(address: UInt64, length: UInt64) throws
    func madviseCollapse(address: UInt64, length: UInt64) throws
    func mremap(from old: UInt64, length: UInt64, to new: UInt64) throws
    func mprotect(address: UInt64, length: UInt64, protection: Protection) throws
    /// mremap with MREMAP_DONTUNMAP: the old range stays mapped, empty.
    func mremapDontUnmap(from old: UInt64, length: UInt64, to new: UInt64) throws
    /// madvise(MADV_GUARD_INSTALL) and madvise(MADV_GUARD_REMOVE). A
    /// target written before these (and MREMAP_DONTUNMAP) has them refuse
    /// by default.
    func madviseGuardInstall(address: UInt64, length: UInt64) throws
    func madviseGuardRemove(address: UInt64, length: UInt64) throws
    /// VmPTE in kB now.
    func vmPTEKilobytes() throws -> Int
    /// Huge PMDs mapping memory in `regions` now: with THP, which pages are
    /// huge is part of the state both sides must agree on.
    func hugePMDs(in regions: [Range<UInt64>]) throws -> Int
    /// THP events so far: for the kernel the whole system's, for the model
    /// its mm's.
    func thpEvents() throws -> THPEventCount
}

extension TraceTarget {
    public func mremapDontUnmap(from old: UInt64, length: UInt64, to new: UInt64) throws {
        throw UnsupportedTraceOp(op: "mremap dontunmap", target: name)
    }

    public func madviseGuardInstall(address: UInt64, length: UInt64) throws {
        throw UnsupportedTraceOp(op: "guard", target: name)
    }

    public func madviseGuardRemove(address: UInt64, length: UInt64) throws {
        throw UnsupportedTraceOp(op: "unguard", target: name)
    }

    /// The op on this target: its system call (the kernel) or the model's
    /// own; nothing for `expect`. The one dispatch from a trace's ops to a
    /// target's, for the comparison (`CompareRunner`) and the timing
    /// (`TraceReplay`) alike.
    public func perform(_ op: TraceOp) throws {
        switch op {
        case .mmap(let a, let l, let shared): try mmap(address: a, length: l, shared: shared)
        case .touch(let a, let l, let s): try touch(address: a, length: l, stride: s)
        case .dontneed(let a, let l): try madviseDontneed(address: a, length: l)
        case .munmap(let a, let l): try munmap(address: a, length: l)
        case .hugepage(let a, let l): try madviseHugepage(address: a, length: l)
        case .collapse(let a, let l): try madviseCollapse(address: a, length: l)
        case .mremap(let old, let l, let new, false): try mremap(from: old, length: l, to: new)
        case .mremap(let old, let l, let new, true): try mremapDontUnmap(from: old, length: l, to: new)
        case .mprotect(let a, let l, let p): try mprotect(address: a, length: l, protection: p)
        case .guardInstall(let a, let l): try madviseGuardInstall(address: a, length: l)
        case .guardRemove(let a, let l): try madviseGuardRemove(address: a, length: l)
        case .expect: break
        }
    }
}

/// /proc/vmstat's thp_collapse_alloc and thp_fault_fallback (+
/// thp_file_fallback), or the model's own count of the same.
public struct THPEventCount: Equatable, Sendable {
    public var collapses: Int
    public var fallbacks: Int
    /// Huge PMDs automatic NUMA balancing made PROT_NONE for hinting faults
    /// (numa_huge_pte_updates), counted only by a target whose huge-PMD
    /// count cannot see such a PMD: /proc/self/smaps on kernels whose
    /// smaps_pmd_entry looks the page up with follow_trans_huge_pmd, which
    /// refuses a PROT_NONE PMD since "mm/gup: replace FOLL_NUMA by
    /// gup_can_follow_protnone()" (fixed by "smaps: use
    /// vm_normal_page_pmd() instead of follow_trans_huge_pmd()").
    public var unseenNUMAHinted: Int

    public init(collapses: Int, fallbacks: Int, unseenNUMAHinted: Int = 0) {
        self.collapses = collapses
        self.fallbacks = fallbacks
        self.unseenNUMAHinted = unseenNUMAHinted
    }

    public static func - (a: THPEventCount, b: THPEventCount) -> THPEventCount {
        THPEventCount(collapses: a.collapses - b.collapses, fallbacks: a.fallbacks - b.fallbacks,
                      unseenNUMAHinted: a.unseenNUMAHinted - b.unseenNUMAHinted)
    }
}

/// A target whose readings are of this very process (the live kernel's
/// VmPTE): the runner runs it while nothing else here maps or frees memory.
public protocol MeasuresThisProcess: TraceTarget {
    /// VmPTE's change across the last op, read just before and just after
    /// its system calls.
    var lastOpChangeKilobytes: Int { get }
}

/// A target that leaves work running after its ops return (the model's
/// call_rcu callbacks). `settle` waits for it; the runner calls it before a
/// `MeasuresThisProcess` target runs, and at the end.
public protocol TraceSettling: TraceTarget {
    func settle() throws
}

/// A target that must look at a whole trace, just before it replays it, before any of it runs — the live
/// kernel checks that the trace's address-space regions are its alone.
public protocol TracePreflight {
    func preflight(_ trace: Trace) throws(TraceError)
}

/// The live kernel did something the model cannot be held to: it could
/// not get a huge page and fell back to small ones, or khugepaged collapsed
/// memory on its own. From there on the two sides run different memory,
/// so the rest of the trace is reported as not comparable, neither a match
/// nor a mismatch.
public struct NotComparable: Error, Equatable, Sendable, CustomStringConvertible {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { "not comparable: \(reason)" }
}

/// An op a target does not implement (one written before the op existed).
public struct UnsupportedTraceOp: Error, CustomStringConvertible {
    public let op: String
    public let target: String
    public var description: String { "\(target) does not implement the trace op '\(op)'" }
}
