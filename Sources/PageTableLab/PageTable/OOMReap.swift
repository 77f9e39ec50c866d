/// The OOM reaper (mm/oom_kill.c: oom_reap_task_mm, __oom_reap_task_mm),
/// and process_mrelease, which runs the same reap on a dying process from
/// user space: the private memory of an mm whose owner is being killed is
/// zapped from another thread, under the mmap read lock, so that it comes
/// back before the owner's own exit_mmap gets to it.
///
/// The reap runs beside exit_mmap's unmap_vmas (both under the read lock:
/// two zaps of the same range, each PTE taken by whichever clears it),
/// never beside its free_pgtables: exit sets MMF_OOM_SKIP, which a reaper
/// that gets the lock later sees, and frees the tables under the write
/// lock, which waits for a reaper that got it earlier. The reaper walks
/// the upper tables with no RCU read section, so only that lock keeps them
/// from being freed under it; MMProfile.exitFreesTablesUnderReadLock drops
/// it, and MM.zapsOfFreedTables counts the walks that then meet a freed
/// table.
public enum OOMReapOutcome: Equatable, Sendable {
    /// The private memory was zapped.
    case reaped
    /// mmap_read_trylock failed: the reaper tries again later.
    case contended
    /// MMF_OOM_SKIP: exit_mmap is past unmapping, or done.
    case skipped
    /// The mm is gone (its last reference dropped).
    case gone
}

extension MM {
    /// oom_reap_task_mm: under mmap_read_trylock, unless MMF_OOM_SKIP is
    /// set, mark the mm MMF_UNSTABLE and zap every private VMA (anonymous, or a file's not VM_SHARED)
    /// through a gather of its own. The mm is held meanwhile, as the OOM
    /// killer's signal->oom_mm holds it (mmgrab), so its PGD outlives an
    /// exit that finishes first.
    public func oomReap() -> OOMReapOutcome {
        guard grab() else { return .gone }
        defer { drop() }
        guard mmapLock.tryLockRead() else { return .contended }
        defer { mmapLock.unlockRead() }
        // Under the read lock: it serializes against exit_mmap's write lock.
        guard !oomSkip.load(ordering: .acquiring) else { return .skipped }
        // Before the first zap: a fault that takes a PTE lock after the
        // reaper has been through it sees the flag (the lock orders them).
        unstable.store(true, ordering: .releasing)
        raceWindow(.oomReaping, 0)
        for vma in vmas where !vma.flags.contains(.shared) {
            let tlb = MMUGather(mm: self)
            unmapPageRange(tlb, vma, vma.start, vma.end, .none)
            tlb.finish()
        }
        reapFinished.store(true, ordering: .releasing)
        return .reaped
    }
}
