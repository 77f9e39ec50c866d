#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// How the architecture flushes other CPUs' TLBs (the `tlb_flush` module
/// parameter).
public enum TLBFlushKind: String, Sendable, Codable, CaseIterable {
    /// x86 native: an IPI to every CPU of the mm, waited for. Since a CPU
    /// takes it only with IRQs on, the flush also waits out GUP-fast.
    case ipi
    /// A flush that sends no IPI (AMD's INVLPGB + TLBSYNC, a paravirt flush
    /// under a hypervisor): every CPU's TLB and paging-structure caches are
    /// invalidated and no hardware walk still uses them when it returns, but
    /// nothing waits for GUP-fast. That is why x86 selects
    /// MMU_GATHER_RCU_TABLE_FREE with PARAVIRT: only a grace period then
    /// protects GUP-fast.
    case noIPI = "no-ipi"
}

/// The TLB side of an mm: which CPUs run it, the flushes that invalidate
/// their caches, and the IPIs that wait for them.
///
/// A flush and an IPI are two things. A flush bumps the flush generation:
/// every CPU's paging-structure cache filled before it is stale from then
/// on, whether an IPI carries it or the hardware broadcasts it. An IPI bumps
/// the IPI generation and waits until every CPU of the mm has taken it,
/// which a CPU does only between walks (a walk runs "with IRQs off") — so a
/// completed IPI means no GUP-fast walk that began before it is still
/// running. `tlb_remove_table_sync_one` is an IPI and nothing more: it
/// flushes no cache, so a table it frees must have been flushed already.
public final class TLBModel: Sendable {
    public let kind: TLBFlushKind
    /// Bumped by every flush.
    let flushGeneration = Atomic<UInt64>(0)
    /// Bumped by every IPI: a flush's (when flushes send IPIs) and the sync IPI.
    let ipiGeneration = Atomic<UInt64>(0)
    let cpus = LabMutex<[CPU]>([])
    /// nr_tlb_remote_flush: flushes sent to the CPUs of the mm.
    public let remoteFlushes = Atomic<Int>(0)
    /// tlb_remove_table_sync_one IPIs.
    public let syncIPIs = Atomic<Int>(0)

    public init(kind: TLBFlushKind = .ipi) { self.kind = kind }

    /// The flush generation: a table unlinked at generation g is safe from
    /// every CPU's caches once the generation passes g.
    public var currentGeneration: UInt64 { flushGeneration.load(ordering: .acquiring) }

    func attach(_ cpu: CPU) {
        cpu.acked.store(ipiGeneration.load(ordering: .acquiring), ordering: .releasing)
        cpu.flushedAt = flushGeneration.load(ordering: .acquiring)
        cpus.withLock { $0.append(cpu) }
    }

    func detach(_ cpu: CPU) {
        cpus.withLock { list in list.removeAll { $0 === cpu } }
    }

    /// flush_tlb_mm_range: every CPU of the mm drops its translations. With
    /// IPIs, it waits for every CPU to take one; without, it waits only for
    /// hardware walks begun before it (TLBSYNC), not for GUP-fast.
    public func flush() {
        remoteFlushes.add(1, ordering: .relaxed)
        let target = flushGeneration.add(1, ordering: .sequentiallyConsistent).newValue
        switch kind {
        case .ipi: interruptAll()
        case .noIPI: waitForHardwareWalks(before: target)
        }
    }

    /// tlb_remove_table_sync_one: an empty IPI, which returns once every CPU
    /// has left the IRQs-off section it was in (GUP-fast finished). It
    /// invalidates nothing.
    public func syncOne() {
        syncIPIs.add(1, ordering: .relaxed)
        interruptAll()
    }

    private func interruptAll() {
        let target = ipiGeneration.add(1, ordering: .sequentiallyConsistent).newValue
        for cpu in cpus.withLock({ $0 }) {
            // The sender's own CPU takes it locally.
            if cpu.isCurrentThread {
                cpu.handleInterrupts()
                continue
            }
            while cpu.acked.load(ordering: .acquiring) < target && cpu.online.load(ordering: .acquiring) {
                sched_yield()
            }
        }
    }

    private func waitForHardwareWalks(before target: UInt64) {
        for cpu in cpus.withLock({ $0 }) where !cpu.isCurrentThread {
            while Self.flush(to: target, waitsForWalkSince: cpu.hardwareWalkSince.load(ordering: .acquiring))
                    && cpu.online.load(ordering: .acquiring) {
                sched_yield()
            }
        }
    }

    /// Whether the flush that made generation `target` must wait for a
    /// hardware walk announced as `walking` (the generation it saw + 1, or
    /// 0): it must unless the walk saw `target` itself, since a walk that
    /// saw an older generation may have read the entry the flush's caller
    /// cleared before it.
    static func flush(to target: UInt64, waitsForWalkSince walking: UInt64) -> Bool {
        walking != 0 && walking <= target
    }
}

/// A CPU running an mm: a walker thread's view of the MMU. Its caches are
/// touched only by its own thread; other threads only bump the generations
/// it checks.
public final class CPU: @unchecked Sendable {
    public let id: Int
    let acked = Atomic<UInt64>(0)
    let online = Atomic<Bool>(true)
    /// The flush generation + 1 at which the hardware walk in progress
    /// began, or 0: what a flush without IPIs waits for.
    let hardwareWalkSince = Atomic<UInt64>(0)
    let tlb: TLBModel
    /// The flush generation the caches were last dropped at.
    fileprivate(set) var flushedAt: UInt64 = 0
    /// Paging-structure cache: PDE entries (2 MiB region → PTE table PFN and
    /// the table's generation when cached), direct-mapped.
    private(set) var psc = PDECache()

    /// The thread this CPU is, for telling a local flush from a remote one.
    private let owner = pthread_self()

    /// Bring a CPU up on the calling thread, running `tlb`'s mm.
    public init(id: Int, tlb: TLBModel) {
        self.id = id
        self.tlb = tlb
        tlb.attach(self)
    }

    var isCurrentThread: Bool { pthread_equal(owner, pthread_self()) != 0 }

    /// Take pending IPIs and acknowledge them. Called between walks and
    /// while spinning on a lock, where the kernel has IRQs on. An IPI by
    /// itself drops no cache (a flush's does, through `dropStaleCaches`).
    /// True when an interrupt was taken.
    @inline(__always) @discardableResult
    public func handleInterrupts() -> Bool {
        let g = tlb.ipiGeneration.load(ordering: .acquiring)
        guard g != acked.load(ordering: .relaxed) else { return false }
        dropStaleCaches()
        acked.store(g, ordering: .releasing)
        return true
    }

    /// An interrupt taken with IRQs on, then the reschedule a preemptible
    /// kernel may do on IRQ exit: the interrupted code resumes later, after
    /// the CPU that sent the IPI has moved on.
    @inline(__always)
    public func handleInterruptsAndMaybePreempt() {
        if handleInterrupts() { sched_yield() }
    }

    /// Caches filled before the last flush are gone, however the flush came.
    @inline(__always)
    func dropStaleCaches() {
        let g = tlb.flushGeneration.load(ordering: .acquiring)
        guard g != flushedAt else { return }
        psc.flushAll()
        flushedAt = g
    }

    /// A hardware walk: caches checked against the flushes first, and the
    /// walk announced, so that a flush without IPIs waits for it.
    @inline(__always)
    func hardwareWalk<R>(_ body: (inout PDECache) -> R) -> R {
        hardwareWalkSince.store(tlb.flushGeneration.load(ordering: .acquiring) + 1, ordering: .sequentiallyConsistent)
        defer { hardwareWalkSince.store(0, ordering: .releasing) }
        dropStaleCaches()
        return body(&psc)
    }

    /// The CPU goes away; flushes stop waiting for it.
    public func offline() {
        online.store(false, ordering: .releasing)
        tlb.detach(self)
    }
}

/// The PDE cache: which PTE table a 2 MiB region resolved to.
struct PDECache {
    struct Slot {
        var tag: UInt64 = .max
        var pfn: UInt64 = 0
        var generation: UInt32 = 0
    }
    static let slots = 64
    private var entries = [Slot](repeating: Slot(), count: slots)

    func lookup(_ address: UInt64) -> Slot? {
        let tag = address >> 21
        let slot = entries[Int(tag % UInt64(Self.slots))]
        return slot.tag == tag ? slot : nil
    }

    mutating func fill(_ address: UInt64, pfn: UInt64, generation: UInt32) {
        let tag = address >> 21
        entries[Int(tag % UInt64(Self.slots))] = Slot(tag: tag, pfn: pfn, generation: generation)
    }

    mutating func flushAll() {
        for i in entries.indices { entries[i].tag = .max }
    }
}
