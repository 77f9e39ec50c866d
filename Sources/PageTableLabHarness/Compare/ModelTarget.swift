import PageTableLab

/// The mm model as a trace target: one MM on the lab's allocator, following
/// the comparison profile's kernel. Use it from one thread: it registers
/// that thread with RCU for its lifetime (the gather queues call_rcu).
///
/// VmPTE is per process, and the kernel side is measured in this process:
/// anything the model does meanwhile (liburcu's worker running callbacks,
/// touching code and heap for the first time) can add a page table to the
/// reading. So liburcu's worker is started before the first trace
/// (RCU.startWorker), and `settle` (rcu_barrier) lets the callbacks the
/// model's ops queued run before the runner starts a kernel pass. The ops
/// themselves wait for nothing: the model's VmPTE is pgtables_bytes, which
/// the kernel too decrements at unlink, not when the table is freed.
public final class ModelTarget: TraceTarget, TraceSettling {
    public let name = "model"
    public let mm: MM
    /// The allocator this target loaded itself, if none was loaded.
    private let ownAllocator: PageAllocator?

    /// `kernel`: the release whose mm the model follows; nil for the
    /// profile's own (CompareProfile.modelKernel).
    public init(profile: CompareProfile, kernel: KernelVersion? = nil, parameters: PageAllocator.Parameters = .init(),
                thp: THPSettings = .running) throws {
        let allocator: PageAllocator
        if let loaded = PageAllocator.current {
            allocator = loaded
            ownAllocator = nil
        } else {
            allocator = try PageAllocator(parameters: parameters)
            ownAllocator = allocator
        }
        RCU.registerThread()
        RCU.startWorker()
        do {
            var mmProfile = profile.mmProfile(kernel: kernel ?? profile.modelKernel(asked: nil, comparingLive: false))
            mmProfile.thp = thp
            // One thread replays a trace: no fault races a DONTNEED here,
            // and none runs beside a writer, so the per-VMA locks, which
            // only decide what may run together, would decide nothing
            // (and cost the replay a third of its time: BENCHMARKS.md).
            mmProfile.clearsFaultedPages = false
            mmProfile.perVMALock = false
            mm = try MM(allocator: allocator, profile: mmProfile)
        } catch {
            RCU.unregisterThread()
            ownAllocator?.unload()
            throw error
        }
    }

    /// Ends the mm and gives the allocator back only once every callback
    /// has run. The barrier fails only inside a read section or a callback,
    /// where no one can release a target; unloading anyway would free the
    /// memmap under callbacks still queued, so that is a stop.
    deinit {
        mm.exit()
        do { try RCU.barrier() } catch { preconditionFailure("ModelTarget released \(error)") }
        RCU.unregisterThread()
        ownAllocator?.unload()
    }

    /// rcu_barrier: every table the model's ops queued for freeing is free.
    public func settle() throws { try RCU.barrier() }

    public func mmap(address: UInt64, length: UInt64, shared: Bool) throws {
        try mm.mmap(address: address, length: length, shared: shared, noHugepage: true)
    }
    public func touch(address: UInt64, length: UInt64, stride: UInt64) throws {
        try mm.touch(address: address, length: length, stride: stride)
    }
    public func madviseDontneed(address: UInt64, length: UInt64) throws {
        try mm.madviseDontneed(address: address, length: length)
    }
    public func munmap(address: UInt64, length: UInt64) throws {
        try mm.munmap(address: address, length: length)
    }
    public func madviseHugepage(address: UInt64, length: UInt64) throws {
        try mm.madviseHugepage(address: address, length: length)
    }
    public func madviseCollapse(address: UInt64, length: UInt64) throws {
        try mm.madviseCollapse(address: address, length: length)
    }
    public func mremap(from old: UInt64, length: UInt64, to new: UInt64) throws {
        try mm.mremap(from: old, length: length, to: new)
    }
    public func mprotect(address: UInt64, length: UInt64, protection: Protection) throws {
        try mm.mprotect(address: address, length: length, protection: protection)
    }
    public func mremapDontUnmap(from old: UInt64, length: UInt64, to new: UInt64) throws {
        try mm.mremap(from: old, length: length, to: new, dontUnmap: true)
    }
    public func madviseGuardInstall(address: UInt64, length: UInt64) throws {
        try mm.madviseGuardInstall(address: address, length: length)
    }
    public func madviseGuardRemove(address: UInt64, length: UInt64) throws {
        try mm.madviseGuardRemove(address: address, length: length)
    }
    public func vmPTEKilobytes() throws -> Int { mm.vmPTEKilobytes }
    public func hugePMDs(in regions: [Range<UInt64>]) throws -> Int {
        regions.reduce(0) { $0 + mm.hugePMDCount(in: $1) }
    }
    public func thpEvents() throws -> THPEventCount {
        THPEventCount(collapses: mm.thpEvents.collapseAlloc.load(ordering: .relaxed),
                      fallbacks: mm.thpEvents.faultFallback.load(ordering: .relaxed))
    }
}

extension CompareProfile {
    /// The model's kernel for a comparison under this profile: `kernel`'s
    /// behaviours (see modelKernel), PT_RECLAIM as the profile says.
    public func mmProfile(kernel: KernelVersion) -> MMProfile {
        .forKernel(kernel, ptReclaim: self == .ptReclaim)
    }
}
