/// Something a trace runs against: the mm model or the live kernel. Ops take
/// the trace's checked values (page-aligned, non-empty, inside the trace's
/// own mappings where the op needs that); a target reports its failures by
/// throwing, and the runner pins them to the trace line.
public protocol TraceTarget: AnyObject {
    var name: String { get }            // "model" / "kernel"
    func mmap(address: UInt64, length: UInt64) throws
    func touch(address: UInt64, length: UInt64, stride: UInt64) throws
    func madviseDontneed(address: UInt64, length: UInt64) throws
    func munmap(address: UInt64, length: UInt64) throws
    /// VmPTE in kB now.
    func vmPTEKilobytes() throws -> Int
}

/// A target that must look at a whole trace before any of it runs — the live
/// kernel checks that the trace's address-space regions are its alone.
public protocol TracePreflight {
    func preflight(_ trace: Trace) throws(TraceError)
}
