import Benchmark
import PageTableLab

/// The hot paths of the lab, one benchmark each: a read section, a GUP-fast
/// walk, an order-0 alloc+free, the gather's table path without a grace
/// period, the pte_free_defer call path, and the unmap path through the
/// mmu_gather. `ptlab bench` holds these paths against raw C; this suite
/// tracks them over time (and counts mallocs: the freeing paths must not
/// allocate).
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .throughput, .mallocCountTotal],
        warmupIterations: 1, scalingFactor: .kilo, maxDuration: .seconds(1), maxIterations: 200)

    Benchmark("RCU.read empty section", configuration: .init(scalingFactor: .mega)) { benchmark in
        RCU.withRegisteredThread {
            for _ in benchmark.scaledIterations { RCU.read { blackHole(0) } }
        }
    }

    Benchmark("MM.gupFast walk of 16 PTEs") { benchmark in
        let mm = Lab.shared.walkMM
        var counters = WalkCounters()
        RCU.withRegisteredThread {
            for i in benchmark.scaledIterations {
                mm.gupFast(Lab.walkBase + UInt64(i % Lab.walkTables) << 21 + UInt64(i & 31) << 16, counters: &counters)
            }
        }
        precondition(counters.mapped == counters.walks, "the walk mm is not fully mapped: \(counters)")
    }

    Benchmark("PageAllocator order-0 alloc+free") { benchmark in
        let allocator = Lab.shared.allocator
        for _ in benchmark.scaledIterations { try allocator.free(allocator.alloc()) }
    }

    // The table path ptlab bench sustains against the kernel-shaped C, with
    // the grace period taken out (the no-RCU policy frees each batch after
    // its flush, on this thread): what the model's own per-table work costs,
    // allocation, constructor, gather, destructor and free, away from
    // liburcu's worker and the bound. `ptlab bench` runs the same loop
    // beside the C doing the same in the kernel's shape (table_path_ns,
    // table_path_cost_ratio); here it gets percentiles and a malloc count.
    Benchmark("mmu_gather table path, no grace period") { benchmark in
        let lab = Lab.shared
        let gather = MMUGather(mm: lab.noRCUMM)
        defer { gather.finish() }
        for i in benchmark.scaledIterations {
            let table = try PageTables.alloc(.pte, mm: lab.noRCUMM, node: .local, allocator: lab.allocator, zero: false)
            gather.freeTable(table, level: .pte, address: Lab.gatherBase + UInt64(i & 1023) << 21)
        }
    }

    Benchmark("pte_free_defer x16384 + rcu_barrier", configuration: .init(scalingFactor: .one)) { benchmark in
        let lab = Lab.shared
        try RCU.withRegisteredThread {
            for _ in 0..<Lab.deferTables { try lab.deferMM.pteFreeDefer(lab.allocator.alloc(zero: true)) }
            try RCU.barrier()
        }
    }

    Benchmark("munmap of 64 PTE tables through mmu_gather", configuration: .init(scalingFactor: .one)) { benchmark in
        let lab = Lab.shared
        try RCU.withRegisteredThread {
            let length = UInt64(Lab.gatherTables) << 21
            try lab.deferMM.mmap(address: Lab.gatherBase, length: length)
            try lab.deferMM.touch(address: Lab.gatherBase, length: length, stride: 1 << 21)
            benchmark.startMeasurement()
            try lab.deferMM.munmap(address: Lab.gatherBase, length: length)
            benchmark.stopMeasurement()
            // The callbacks and frees, outside the measurement: a barrier
            // costs a 10 ms worker period whatever it waits for.
            try RCU.barrier()
        }
    }
}
