import PageTableLab

/// The mm model as a trace target: one MM on the lab's allocator, following
/// the comparison profile's kernel. Use it from one thread: it registers
/// that thread with RCU for its lifetime (the gather queues call_rcu).
///
/// VmPTE is per process, and the kernel side is measured in this process:
/// anything the model does meanwhile (liburcu's worker running callbacks,
/// touching code and heap for the first time) can add a page table to the
/// reading. So liburcu's worker is started before the first trace
/// (RCU.startWorker), every op that queues callbacks waits for them
/// (rcu_barrier) before returning, and the process is quiet when the kernel
/// side runs.
public final class ModelTarget: TraceTarget {
    public let name = "model"
    public let mm: MM
    /// The allocator this target loaded itself, if none was loaded.
    private let ownAllocator: PageAllocator?

    public init(profile: CompareProfile, parameters: PageAllocator.Parameters = .init(),
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
            var mmProfile = profile.mmProfile
            mmProfile.thp = thp
            mm = try MM(allocator: allocator, profile: mmProfile)
        } catch {
            RCU.unregisterThread()
            ownAllocator?.unload()
            throw error
        }
    }

    deinit {
        mm.exit()
        try? RCU.barrier()
        RCU.unregisterThread()
        ownAllocator?.unload()
    }

    public func mmap(address: UInt64, length: UInt64, shared: Bool) throws {
        try mm.mmap(address: address, length: length, shared: shared, noHugepage: true)
    }
    public func touch(address: UInt64, length: UInt64, stride: UInt64) throws {
        try mm.touch(address: address, length: length, stride: stride)
    }
    public func madviseDontneed(address: UInt64, length: UInt64) throws {
        defer { try? RCU.barrier() }
        try mm.madviseDontneed(address: address, length: length)
    }
    public func munmap(address: UInt64, length: UInt64) throws {
        defer { try? RCU.barrier() }
        try mm.munmap(address: address, length: length)
    }
    public func madviseHugepage(address: UInt64, length: UInt64) throws {
        try mm.madviseHugepage(address: address, length: length)
    }
    public func madviseCollapse(address: UInt64, length: UInt64) throws {
        defer { try? RCU.barrier() }
        try mm.madviseCollapse(address: address, length: length)
    }
    public func mremap(from old: UInt64, length: UInt64, to new: UInt64) throws {
        defer { try? RCU.barrier() }
        try mm.mremap(from: old, length: length, to: new)
    }
    public func mprotect(address: UInt64, length: UInt64, protection: Protection) throws {
        try mm.mprotect(address: address, length: length, protection: protection)
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
    /// The model's kernel for each comparison profile.
    public var mmProfile: MMProfile {
        switch self {
        case .ptReclaim: .v6_14
        case .prePTReclaim: .pre6_14
        }
    }
}
