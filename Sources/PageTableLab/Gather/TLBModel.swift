#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// The TLB side of an mm: which CPUs run it, and flushes that wait for them.
///
/// A flush is an IPI: it bumps the mm's TLB generation and waits until every
/// CPU of the mm has acknowledged, i.e. dropped its TLB and paging-structure
/// caches. CPUs acknowledge only between accesses and walks (a walk runs
/// "with IRQs off"), so a completed flush also means no hardware walk or
/// GUP-fast walk that started before it is still running. That is what makes
/// a missing flush observable: a CPU keeps a stale paging-structure-cache
/// entry and walks into a freed table.
public final class TLBModel: Sendable {
    /// Bumped by every flush and every sync IPI.
    let generation = Atomic<UInt64>(0)
    let cpus = LabMutex<[CPU]>([])
    /// nr_tlb_remote_flush: flushes sent to the CPUs of the mm.
    public let remoteFlushes = Atomic<Int>(0)
    /// tlb_remove_table_sync_one IPIs.
    public let syncIPIs = Atomic<Int>(0)

    public init() {}

    public var currentGeneration: UInt64 { generation.load(ordering: .acquiring) }

    func attach(_ cpu: CPU) {
        cpu.acked.store(generation.load(ordering: .acquiring), ordering: .releasing)
        cpus.withLock { $0.append(cpu) }
    }

    func detach(_ cpu: CPU) {
        cpus.withLock { list in list.removeAll { $0 === cpu } }
    }

    /// flush_tlb_mm_range: every CPU of the mm drops its translations.
    public func flush() {
        remoteFlushes.add(1, ordering: .relaxed)
        interruptAll()
    }

    /// tlb_remove_table_sync_one: an IPI that returns once every CPU has
    /// left the IRQs-off section it was in (GUP-fast finished).
    public func syncOne() {
        syncIPIs.add(1, ordering: .relaxed)
        interruptAll()
    }

    private func interruptAll() {
        let target = generation.add(1, ordering: .sequentiallyConsistent).newValue
        let waitFor = cpus.withLock { $0 }
        for cpu in waitFor {
            // The sender's own CPU flushes locally, as flush_tlb_mm_range does.
            if cpu.isCurrentThread {
                cpu.handleInterrupts()
                continue
            }
            while cpu.acked.load(ordering: .acquiring) < target && cpu.online.load(ordering: .acquiring) {
                sched_yield()
            }
        }
    }
}

/// A CPU running an mm: a walker thread's view of the MMU. Its caches are
/// touched only by its own thread; other threads only bump the generation it
/// acknowledges.
public final class CPU: @unchecked Sendable {
    public let id: Int
    let acked = Atomic<UInt64>(0)
    let online = Atomic<Bool>(true)
    let tlb: TLBModel
    /// Paging-structure cache: PDE entries (2 MiB region → PTE table PFN and
    /// the table's generation when cached), direct-mapped.
    var psc = PDECache()

    /// The thread this CPU is, for telling a local flush from a remote one.
    private let owner = pthread_self()

    /// Bring a CPU up on the calling thread, running `tlb`'s mm.
    public init(id: Int, tlb: TLBModel) {
        self.id = id
        self.tlb = tlb
        tlb.attach(self)
    }

    var isCurrentThread: Bool { pthread_equal(owner, pthread_self()) != 0 }

    /// Take pending "IPIs": drop the caches and acknowledge. Called between
    /// walks and while spinning on a lock, where the kernel has IRQs on.
    /// True when an interrupt was taken.
    @inline(__always) @discardableResult
    public func handleInterrupts() -> Bool {
        let g = tlb.generation.load(ordering: .acquiring)
        guard g != acked.load(ordering: .relaxed) else { return false }
        psc.flushAll()
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
