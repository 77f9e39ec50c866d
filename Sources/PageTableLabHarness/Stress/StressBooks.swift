import PageTableLab

/// The lab-wide counts a stress report is the difference of: taken as the
/// run starts (which also restarts the free-latency samples and starts the
/// deferred-memory monitor), read back once its teardown is done.
struct StressBooks {
    let allocator: PageAllocator
    let allocated: Int
    let tablesFreed: Int
    let callbacks: UInt64
    let integrity: Integrity
    let deferredMonitor = DeferredMemoryMonitor(periodMicroseconds: 250)

    init(_ allocator: PageAllocator) {
        self.allocator = allocator
        allocated = allocator.totalAllocatedPages
        tablesFreed = PageTables.stats.freed
        callbacks = DeferredBound.snapshot().invoked
        integrity = Integrity.snapshot()
        FreeLatency.reset()
    }

    var leakedPages: Int { allocator.totalAllocatedPages - allocated }
    var tablesFreedSince: Int { PageTables.stats.freed - tablesFreed }
    var callbacksSince: Int { Int(DeferredBound.snapshot().invoked - callbacks) }
    var integritySince: Integrity { Integrity.snapshot() - integrity }
}
