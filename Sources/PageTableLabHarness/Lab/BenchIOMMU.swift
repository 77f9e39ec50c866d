import PageTableLab
/// The IOMMU side of freeing kernel page tables: how many IOTLB/PSC
/// invalidations the deferred free spends per table (the batching promise),
/// and what one synchronous invalidation costs the caller that waits on it.
extension Bench {
    /// A short kernel-free stress run in deferred mode (the kernel's
    /// table-freeing callers churned under a DMA walker on SVA-bound
    /// PASIDs): invalidations issued / tables freed.
    static func kernelFreeInvalidationsPerTable(duration: Double, allocator: PageAllocator) throws -> Double {
        var options = StressOptions(scenario: "kernel-free", mode: DeferredKernelTableFree().name)
        options.duration = duration
        options.walkers = 1
        let result = try KernelFreeStress(options).run(allocator: allocator)
        guard result.pass else { throw BenchError.stressFailed(result.verdict) }
        return result.invalidationsPerTable ?? 0
    }

    /// qi_submit_sync of one descriptor and its wait, timed one by one; the
    /// median in microseconds. An interrupt-entry-cache flush: the emulated
    /// hardware executes it without touching any translation state.
    static func qiSubmitSyncUsP50(_ submissions: Int, allocator: PageAllocator) throws -> Double {
        let iommu = try IntelIOMMU(allocator: allocator)
        defer { iommu.shutdown() }
        let descriptor = InvalidationDescriptor.interruptEntryCache(.global).encode()
        var us = [Double](repeating: 0, count: submissions)
        for i in 0..<submissions {
            let t0 = nowNs()
            try withUnsafePointer(to: descriptor) { try iommu.qiSubmitSync(UnsafeBufferPointer(start: $0, count: 1)) }
            us[i] = (nowNs() - t0) / 1000
        }
        return median(us)
    }
}
