import Synchronization

/// Per-VMA locks (CONFIG_PER_VMA_LOCK, 6.4+): a page fault locks only the
/// VMA it faults in (lock_vma_under_rcu, vma_start_read), not the mmap
/// lock, so it runs beside munmap, mremap, mprotect, mmap and
/// collapse_huge_page holding the mmap write lock for *other* VMAs; since
/// 6.17 so does MADV_DONTNEED within one VMA (withMadviseLock). A
/// writer write-locks each VMA it changes (vma_start_write, which waits for
/// that VMA's faults), and all of them stay locked until it drops or
/// downgrades the mmap write lock (vma_end_write_all). A fault whose VMA is
/// write-locked, or gone, falls back to the mmap read lock.
///
/// The model keeps VMAs as values, so a lock is by address range: a fault
/// or a DONTNEED holds its VMA's extent, a writer its own ranges (a VMA it creates there
/// is locked from its birth), the extents of the VMAs in them, and those of
/// the neighbours a merge may change (vma_merge write-locks what it expands
/// or removes): the ones next to its ranges that are backed as its VMAs
/// are, since only VMAs of the same file, or two anonymous ones, merge.
/// That over-locks a neighbour a writer leaves alone; it never under-locks
/// one it changes.
final class VMALocks: @unchecked Sendable {
    private let monitor = Monitor()
    /// The extents readers hold, one entry per fault or DONTNEED, each with
    /// the mmap lock sequence of the writer that waited for it to leave, if
    /// one did.
    private var readers: [(extent: Range<UInt64>, waitedBy: Int?)] = []
    /// The extents the current mmap write cycle has write-locked.
    private var writeLocked: [Range<UInt64>] = []

    /// vma_start_read of the VMA `find` returns: nil when there is none or
    /// it is write-locked (the fault takes the mmap read lock instead).
    func tryRead(_ find: () -> VMA?) -> VMA? {
        monitor.lock()
        defer { monitor.unlock() }
        guard let vma = find() else { return nil }
        guard !writeLocked.contains(where: { $0.overlaps(vma.extent) }) else { return nil }
        readers.append((vma.extent, nil))
        return vma
    }

    /// vma_end_read. Returns the sequence of the writer that waited for
    /// this reader, if one did (while it waits, no other reader of the
    /// extent can come in, so every entry for it is marked alike).
    @discardableResult
    func endRead(_ vma: VMA) -> Int? {
        monitor.lock()
        defer { monitor.unlock() }
        guard let i = readers.firstIndex(where: { $0.extent == vma.extent }) else { return nil }
        let waitedBy = readers.remove(at: i).waitedBy
        monitor.broadcast()
        return waitedBy
    }

    /// vma_start_write of every extent `extents` gives (read under this
    /// lock, so no fault locks one between the read and the marking), then
    /// wait for the faults already inside them, marking them with
    /// `writer`, the waiting writer's mmap lock sequence.
    func startWrite(writer: Int, _ extents: () -> [Range<UInt64>]) {
        monitor.lock()
        let locking = extents()
        writeLocked += locking
        for i in readers.indices where locking.contains(where: { $0.overlaps(readers[i].extent) }) {
            readers[i].waitedBy = readers[i].waitedBy ?? writer
        }
        while readers.contains(where: { r in locking.contains { $0.overlaps(r.extent) } }) { monitor.wait() }
        monitor.unlock()
    }

    /// Whether a writer is waiting for a reader of `extent` to leave.
    func writerWaits(on extent: Range<UInt64>) -> Bool {
        monitor.lock()
        defer { monitor.unlock() }
        return readers.contains { $0.extent == extent && $0.waitedBy != nil }
    }

    /// vma_start_write only if no fault holds one of the extents now; false
    /// (nothing locked) otherwise. For a writer that holds a lock a fault
    /// may wait for (the pre-6.6 retract holds the huge folio's lock), as
    /// it takes the mmap lock with a trylock.
    func tryStartWrite(_ extents: () -> [Range<UInt64>]) -> Bool {
        monitor.lock()
        defer { monitor.unlock() }
        let locking = extents()
        guard !readers.contains(where: { r in locking.contains { $0.overlaps(r.extent) } }) else { return false }
        writeLocked += locking
        return true
    }

    /// vma_end_write_all, at mmap_write_unlock and mmap_write_downgrade.
    func endWriteAll() {
        monitor.lock()
        writeLocked.removeAll()
        monitor.unlock()
    }
}

/// Which lock each fault and each MADV_DONTNEED ran under: its VMA's, or
/// the mmap read lock (no per-VMA locks in the profile, the VMA write-locked
/// or gone, an anonymous VMA's first fault, a DONTNEED over more than one
/// VMA); and of those under their VMA's, how many overlapped a writer
/// holding the mmap write lock (one that only waited for them to leave
/// aside): the concurrency per-VMA locks allow, and the mmap read lock
/// would have ruled out. A write trylock that found its VMAs busy held the
/// mmap lock for a moment, and counts. The fault counts are
/// CONFIG_PER_VMA_LOCK_STATS' vma_lock_success against its aborts and
/// misses, except that every store the model makes takes the fault path
/// (storeByte), so they count stores.
public final class VMALockEvents: Sendable {
    public let faultVMA = Atomic<Int>(0)
    public let faultMMap = Atomic<Int>(0)
    public let faultBesideWriter = Atomic<Int>(0)
    public let dontneedVMA = Atomic<Int>(0)
    public let dontneedMMap = Atomic<Int>(0)
    public let dontneedBesideWriter = Atomic<Int>(0)

    enum Op { case fault, dontneed }

    func countVMA(_ op: Op, besideWriter: Bool) {
        switch op {
        case .fault:
            faultVMA.add(1, ordering: .relaxed)
            if besideWriter { faultBesideWriter.add(1, ordering: .relaxed) }
        case .dontneed:
            dontneedVMA.add(1, ordering: .relaxed)
            if besideWriter { dontneedBesideWriter.add(1, ordering: .relaxed) }
        }
    }

    func countMMap(_ op: Op) {
        switch op {
        case .fault: faultMMap.add(1, ordering: .relaxed)
        case .dontneed: dontneedMMap.add(1, ordering: .relaxed)
        }
    }

    init() {}
}

/// The neighbours a writer's VMA changes may merge with, and so write-locks
/// with the VMAs of its ranges.
enum MergeCandidates: Equatable {
    /// It creates or changes no VMA that could merge (munmap, a collapse,
    /// an mmap of a fresh memfd, whose file no neighbour has).
    case none
    /// Anonymous neighbours (an anonymous mmap).
    case anonymous
    /// Neighbours backed as the VMAs in this range are (mprotect and
    /// madvise change those; mremap copies them to its new range).
    case backedAs(Range<UInt64>)
}

extension MM {
    /// The mmap write lock, with the VMAs of `ranges` (and the neighbours
    /// `merging` names) write-locked until `body` returns.
    func withWriteLock<R, E: Error>(vmasOf ranges: [Range<UInt64>], merging: MergeCandidates,
                                    _ body: () throws(E) -> R) throws(E) -> R {
        mmapLock.lockWrite()
        vmaStartWrite(ranges, merging: merging)
        defer { writeUnlock() }
        raceWindow(.writeLocked, ranges.first?.lowerBound ?? 0)
        return try body()
    }

    /// munmap's lock: write for `exclusive` (the VMAs of `range` locked; it
    /// merges nothing), then read for `shared`, the VMA locks dropped at
    /// the downgrade.
    func withWriteLockDowngrading<T, R>(vmasOf range: Range<UInt64>, _ exclusive: () -> T, then shared: (T) -> R) -> R {
        mmapLock.withWriteLockDowngrading({
            vmaStartWrite([range], merging: .none)
            defer { vmaLocks.endWriteAll() }
            raceWindow(.writeLocked, range.lowerBound)
            return exclusive()
        }, then: shared)
    }

    /// mmap_write_trylock and vma_start_write of the VMAs of `range` (a
    /// writer that merges nothing), or false with neither held.
    func tryWriteLock(vmasOf range: Range<UInt64>) -> Bool {
        guard mmapLock.tryLockWrite() else { return false }
        guard vmaLocks.tryStartWrite({ extents(touching: [range], merging: .none) }) else {
            mmapLock.unlockWrite()
            return false
        }
        return true
    }

    /// mmap_write_unlock, the VMA locks with it.
    func writeUnlock() {
        vmaLocks.endWriteAll()
        mmapLock.unlockWrite()
    }

    /// vma_start_write of every VMA overlapping one of `ranges`, and of the
    /// neighbours `merging` names, the mmap write lock held.
    func vmaStartWrite(_ ranges: [Range<UInt64>], merging: MergeCandidates) {
        vmaLocks.startWrite(writer: mmapLock.sequenceNow) { extents(touching: ranges, merging: merging) }
    }

    /// The ranges themselves, so that a VMA the writer creates there (mmap,
    /// mremap's copy) is locked from its birth, as the kernel's new VMAs
    /// are; the extents of the VMAs there now; and those of the VMAs right
    /// next to a range that a merge may change.
    private func extents(touching ranges: [Range<UInt64>], merging: MergeCandidates) -> [Range<UInt64>] {
        ranges + vmaTree.withLock { tree in
            let backings: [ShmemFile?]? = switch merging {
            case .none: nil
            case .anonymous: [nil]
            case .backedAs(let range): tree.vmas.filter { $0.extent.overlaps(range) }.map(\.file)
            }
            return tree.vmas.filter { vma in
                ranges.contains { range in
                    if vma.extent.overlaps(range) { return true }
                    guard vma.end == range.lowerBound || vma.start == range.upperBound, let backings else { return false }
                    return backings.contains { $0 === vma.file }
                }
            }.map(\.extent)
        }
    }

    /// The lock a fault at `address` runs under: its VMA's own (6.4+), or
    /// the mmap read lock where the profile has no per-VMA locks, or the VMA
    /// is write-locked or gone (the fault then finds what the writer left).
    /// `body` gets the VMA, its anon_vma prepared.
    func withFaultLock<R>(_ address: UInt64, _ body: (VMA) throws(MMError) -> R) throws(MMError) -> R {
        try underReadLock(lockVMAUnderRCU(address), .fault) { () throws(MMError) -> R in
            // exit_mmap unmaps under the read lock with the VMAs still in
            // the tree: a fault that raced exit must not map into them.
            guard !hasExited else { throw .mmGone }
            return try body(faultableVMA(at: address))
        }
    }

    /// lock_vma_under_rcu: the VMA at `address`, read-locked, or nil (no
    /// per-VMA locks in this profile, no VMA there, or one a writer holds):
    /// the caller then takes the mmap read lock. An anonymous VMA's first
    /// fault takes the mmap lock too, for its anon_vma (__vmf_anon_prepare
    /// trylocks it and retries the fault; 6.4-6.6 refused such VMAs here).
    func lockVMAUnderRCU(_ address: UInt64) -> VMA? {
        lockVMA(at: address) { !($0.isAnonymous && $0.anonVMA == 0) }
    }

    /// MADV_DONTNEED's lock (get_lock_mode's MADVISE_VMA_READ_LOCK, 6.17+):
    /// the VMA's own when `range` lies inside one (try_vma_read_lock's
    /// is_vma_lock_sufficient; it needs no anon_vma), else the mmap read
    /// lock. Under the VMA lock alone it runs beside munmap, mremap or
    /// mprotect of other VMAs, and PT_RECLAIM frees with no mmap lock held.
    func withMadviseLock<R>(_ range: Range<UInt64>, _ body: () -> R) -> R {
        let locked = profile.madviseVMALock ? lockVMA(at: range.lowerBound, if: { $0.end >= range.upperBound }) : nil
        return underReadLock(locked, .dontneed, body)
    }

    /// `body` under the read lock on `locked`, dropped after it, or under
    /// the mmap read lock where there is none; counted, and with the VMA's
    /// lock, with whether a writer held the mmap lock meanwhile
    /// (mm_lock_seq), other than one that only waited for this reader to
    /// leave.
    private func underReadLock<R, E: Error>(_ locked: VMA?, _ op: VMALockEvents.Op,
                                            _ body: () throws(E) -> R) throws(E) -> R {
        guard let locked else {
            vmaLockEvents.countMMap(op)
            return try mmapLock.withReadLock(body)
        }
        let start = mmapLock.sequenceNow
        defer {
            let end = mmapLock.sequenceNow
            let waiter = vmaLocks.endRead(locked)
            vmaLockEvents.countVMA(op, besideWriter: mmapLock.writerHeld(between: start, and: end, except: waiter))
        }
        return try body()
    }

    /// vma_start_read of the VMA at `address` if `usable` says it may be
    /// locked alone; nil where the profile has no per-VMA locks.
    private func lockVMA(at address: UInt64, if usable: (VMA) -> Bool) -> VMA? {
        guard profile.perVMALock else { return nil }
        return vmaLocks.tryRead { vmaTree.withLock { $0.find(address) }.flatMap { usable($0) ? $0 : nil } }
    }
}
