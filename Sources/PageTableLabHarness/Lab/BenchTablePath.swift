import PageTableLab
import CHarness

/// The gather's table path with the grace period taken out: allocate a PTE
/// table, construct it, hand it to an mmu_gather, and free each full batch
/// right after its flush on the same thread, for a fixed count. No
/// liburcu worker, no bound, no second CPU: what is left is each side's own
/// per-table work, with everything it touches hot.
///
/// The steady gather holds the same path against the same C, but there
/// each side's rate also carries its memory stalls, the worker's pace and
/// how many batches the bound sends inline: its rounds range over a factor
/// of two or more, and a run's median moves by a sixth. This one's rounds
/// stay within a few percent, so it shows what a change to the model's
/// table path costs or saves, and how far the model's bookkeeping (state
/// and generation, flush tracking, counters, latency sampling) stands from
/// the kernel's shape doing only the kernel's work.
extension Bench {
    /// The model's table path: `count` tables through one gather of `mm`,
    /// whose policy must be `.noRCU` (see noGracePeriodMM), so that every
    /// batch is freed on this thread before the clock stops; ns per table,
    /// tlb_finish_mmu included.
    @inline(never)
    static func tablePathNs(_ count: Int, mm: MM, allocator: PageAllocator) throws -> Double {
        guard mm.profile.tableFree is NoRCUTableFree else {
            throw BenchError.invalidConfiguration(
                "the table path needs an mm whose table-free policy is no-rcu, not \(mm.profile.tableFree.name)")
        }
        let errorsBefore = Integrity.snapshot().freeErrors
        let t0 = nowNs()
        let gather = try gatherTables(count, mm: mm, allocator: allocator)
        let ns = (nowNs() - t0) / Double(count)
        try checkGathered(gather, count: count, freeErrorsBefore: errorsBefore)
        return ns
    }

    /// The kernel-shaped C, the same count through `pool`'s lists.
    static func tablePathNsC(_ count: Int, pool: CPagePool) throws -> Double {
        let r = try pool.tablePath(tables: count)
        return r.seconds * 1e9 / Double(count)
    }

    /// An mm whose gathers free each table batch right after its flush, on
    /// the flushing thread (MMProfile.tableFree = .noRCU).
    static func noGracePeriodMM(allocator: PageAllocator) throws -> MM {
        var profile = MMProfile()
        profile.tableFree = .noRCU
        return try MM(allocator: allocator, profile: profile)
    }
}
