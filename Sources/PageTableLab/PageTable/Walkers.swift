internal import CSupport

/// The lab's use-after-free detectors, one per walker and the way it
/// found out. The raw values are the keys of a stress report's
/// `detections` object and what an unsafe mode names as the detector that
/// must fire: a scenario is only proven when the walker it is about catches
/// its bug, not when some other walker happens to.
public enum Detector: String, Sendable, CaseIterable, Codable {
    /// GUP-fast (IRQs off, RCU) entered a table that was freed under it.
    case gupFast = "gup_fast"
    /// pte_offset_map (RCU only, IRQs on) read a table that was freed under it.
    case pteOffsetMap = "pte_offset_map"
    /// pte_offset_map_lock found its table freed after taking the lock.
    case pteOffsetMapLock = "pte_offset_map_lock"
    /// pte_offset_map_lock took a split ptlock whose destructor had run.
    case freedPTLock = "freed_ptlock"
    /// A CPU's hardware walk entered a freed table.
    case mmuWalk = "mmu_walk"
    /// A CPU's paging-structure cache led into a freed table (a flush missed).
    case stalePSC = "stale_psc"
    /// The IOMMU's paging-structure or PASID cache led into a freed table
    /// (an invalidation missed: the SVA bug of seeds 000-002).
    case iommuFromCache = "iommu_from_cache"
    /// The IOMMU's walk found a freed table from a live one.
    case iommuWalk = "iommu_walk"
    /// An updater changed a PTE table that a concurrent updater had already
    /// unlinked (pte_offset_map_lock without its pmd_same re-check: the
    /// change is lost, and a page it mapped leaks), or acted on a PMD check
    /// such an unlink had made stale (collapse_huge_page checking before
    /// vma_start_write).
    case staleTableWrite = "stale_table_write"
    /// A fault that began after the OOM reaper had finished with the mm
    /// mapped its private memory again (no MMF_UNSTABLE): the thread reads
    /// zeros where its data was. Lost data, not a freed page
    /// (MM.refaultsAfterReap).
    case reapedRefault = "reaped_refault"

    /// The bug this detector catches leaks the pages it lost.
    public var losesPages: Bool { self == .staleTableWrite }
}

/// What walkers saw. Each walker thread keeps its own and they are summed
/// at the end, so counting costs no shared cache line. The JSON keys are a
/// public interface: walks, mapped, not_mapped, retries, one per
/// `Detector`, and poison_seen.
public struct WalkCounters: Sendable, Equatable, Codable {
    public var walks = 0
    public var mapped = 0
    public var notMapped = 0
    /// The parent entry changed under the walk (a legal race): walk again.
    public var retries = 0
    /// Detections, indexed by `Detector`.
    private var byDetector = [Int](repeating: 0, count: Detector.allCases.count)
    /// Of the detections, those that read the free poison (page_poison=y)
    /// rather than a changed generation.
    public var poisonSeen = 0

    public init() {}

    public subscript(_ detector: Detector) -> Int {
        get { byDetector[Detector.allCases.firstIndex(of: detector)!] }
        set { byDetector[Detector.allCases.firstIndex(of: detector)!] = newValue }
    }

    /// Every detection, whichever walker made it.
    public var useAfterFree: Int { byDetector.reduce(0, +) }

    /// The detectors that fired, with their counts.
    public var fired: [(Detector, Int)] { Detector.allCases.map { ($0, self[$0]) }.filter { $0.1 > 0 } }

    public static func + (a: WalkCounters, b: WalkCounters) -> WalkCounters {
        var s = a
        s.walks += b.walks
        s.mapped += b.mapped
        s.notMapped += b.notMapped
        s.retries += b.retries
        for i in s.byDetector.indices { s.byDetector[i] += b.byDetector[i] }
        s.poisonSeen += b.poisonSeen
        return s
    }

    private struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ s: String) { stringValue = s }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        try c.encode(walks, forKey: Key("walks"))
        try c.encode(mapped, forKey: Key("mapped"))
        try c.encode(notMapped, forKey: Key("not_mapped"))
        try c.encode(retries, forKey: Key("retries"))
        for d in Detector.allCases { try c.encode(self[d], forKey: Key(d.rawValue)) }
        try c.encode(poisonSeen, forKey: Key("poison_seen"))
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        walks = try c.decode(Int.self, forKey: Key("walks"))
        mapped = try c.decode(Int.self, forKey: Key("mapped"))
        notMapped = try c.decode(Int.self, forKey: Key("not_mapped"))
        retries = try c.decode(Int.self, forKey: Key("retries"))
        for d in Detector.allCases { self[d] = try c.decode(Int.self, forKey: Key(d.rawValue)) }
        poisonSeen = try c.decode(Int.self, forKey: Key("poison_seen"))
    }
}

/// Where a walk stopped.
enum WalkStep {
    /// Reached the PTE table: its page, generation, and the PMD entry.
    case pteTable(Page, UInt32, UnsafeMutablePointer<UInt64>, UInt64)
    /// A huge PMD maps the address: a leaf, no PTE table to walk.
    case huge
    case notMapped
    case retry
    case freed
    case poison
}

extension WalkCounters {
    /// Count a walk that stopped before its PTE table, a freed table
    /// counting against `detector`; return the table (page, generation,
    /// PMD entry and its value) when it got there.
    mutating func reached(_ step: WalkStep, detector: Detector) -> (Page, UInt32, UnsafeMutablePointer<UInt64>, UInt64)? {
        switch step {
        case .huge: mapped += 1
        case .notMapped: notMapped += 1
        case .retry: retries += 1
        case .freed: detected(detector)
        case .poison: detected(detector, poison: true)
        case .pteTable(let table, let gen, let slot, let value): return (table, gen, slot, value)
        }
        return nil
    }

    /// A walk that found no VMA (or rmap range) for its address.
    mutating func notFound() {
        walks += 1
        notMapped += 1
    }

    public mutating func detected(_ detector: Detector, poison: Bool = false) {
        self[detector] += 1
        if poison { poisonSeen += 1 }
    }
}

/// 0x6b in every byte: an entry read from a poisoned (freed) page.
let poisonEntry: UInt64 = 0x6b6b_6b6b_6b6b_6b6b

extension MM {
    /// A table of `level` is live for a walker that entered it at
    /// generation `gen`: still allocated (or only queued for a deferred
    /// free), still that level, never freed since, and still ours.
    @inline(__always)
    func isLiveTable(_ d: UnsafeMutablePointer<ptdesc>, _ level: Level, _ gen: UInt32) -> Bool {
        let state = ptlab_page_state(d)
        return (state == PTLAB_PAGE_ALLOCATED.rawValue || state == PTLAB_PAGE_DEFERRED.rawValue)
            && ptlab_page_level(d) == UInt32(level.rawValue)
            && ptlab_page_generation(d) == gen
            && ptlab_page_mm(d) == token
    }

    /// Walk from the PGD to the PTE table mapping `address`, checking at
    /// every step that the table just read is still live. A child's
    /// generation is taken, then its parent entry re-read: if the entry
    /// still points there, the child was linked (so live) at that moment,
    /// and any later change of generation is a free the walker raced with.
    func walkToPTETable(_ address: UInt64) -> WalkStep {
        var table = pgd
        var gen = pgd.generation
        var level = Level.pgd
        while let child = childLevel(of: level) {
            let slot = entry(in: table, level: level, address: address)
            let raw = ptlab_pte_read(slot)
            guard isLiveTable(table.desc, level, gen) else { return .freed }
            if raw == poisonEntry { return .poison }
            let e = Entry(rawValue: raw)
            guard e.isPresent else { return .notMapped }
            if child == .pte && e.isHugeLeaf { return .huge }
            guard let d = allocator.descriptor(pfn: e.pfn), allocator.address(pfn: e.pfn) != nil else { return .freed }
            let childGen = ptlab_page_generation(d)
            guard ptlab_pte_read(slot) == raw else { return .retry }
            guard isLiveTable(d, child, childGen) else { return .freed }
            if child == .pte { return .pteTable(Page(d), childGen, slot, raw) }
            table = Page(d)
            gen = childGen
            level = child
        }
        return .notMapped
    }

    /// GUP-fast (gup_fast_pte_range): with IRQs off and inside an RCU read
    /// section, walk to the PTE table and read `nrPages` consecutive PTEs,
    /// then check the table was not freed meanwhile. No lock, no mmap_lock.
    /// IRQs off means a TLB-flush IPI waits for it. Where flushes send no
    /// IPI (a paravirt guest), the hypervisor may still deschedule the vCPU
    /// in the middle of the walk, IRQs off or not: the walk yields halfway.
    public func gupFast(_ address: UInt64, nrPages: Int = 16, counters: inout WalkCounters) {
        locklessWalk(address, nrPages: nrPages, interruptible: nil, vcpuPreempted: tlb.kind == .noIPI,
                     detector: .gupFast, counters: &counters)
    }

    /// pte_offset_map: the same lockless walk, but with IRQs on, so `cpu`
    /// answers TLB-flush IPIs in the middle of it, and over the rest of the
    /// table (as page_vma_mapped_walk or mincore do). Only RCU keeps its PTE
    /// table alive: this is the walker pte_free_defer exists for.
    public func pteOffsetMap(_ address: UInt64, nrPages: Int = 512, cpu: CPU, counters: inout WalkCounters) {
        locklessWalk(address, nrPages: nrPages, interruptible: cpu, vcpuPreempted: false, detector: .pteOffsetMap,
                     counters: &counters)
    }

    /// pte_offset_map by a walker holding `context`'s lock: the mmap read
    /// lock (walking only inside a VMA it finds, over the rest of the table
    /// as mincore does), or the rmap lock (only a range still linked in the
    /// rmap, over one 64 KiB folio's PTEs as page_vma_mapped_walk does), or
    /// RCU alone against every free that runs without the mmap write lock
    /// (see LockContext.rcu: it holds the read lock, but finds no VMA).
    public func pteOffsetMap(_ address: UInt64, context: LockContext, cpu: CPU, counters: inout WalkCounters) {
        switch context {
        case .mmapRead:
            withLock(mmapLock, cpu) {
                guard vmaTree.withLock({ $0.find(address) }) != nil else { return counters.notFound() }
                pteOffsetMap(address, cpu: cpu, counters: &counters)
            }
        case .rmap:
            withLock(rmapLock, cpu) {
                guard rmap.withLock({ $0.contains(address) }) else { return counters.notFound() }
                pteOffsetMap(address, nrPages: 16, cpu: cpu, counters: &counters)
            }
        case .rcu:
            withLock(mmapLock, cpu) { pteOffsetMap(address, cpu: cpu, counters: &counters) }
        case .irqsOff, .hardware:
            pteOffsetMap(address, cpu: cpu, counters: &counters)
        }
    }

    /// `body` under `lock` for read, if it can be had now. A walker that
    /// cannot have it gives way and walks again later (as mmap_read_trylock
    /// users do), rather than spinning against the writer it waits for.
    private func withLock(_ lock: MMapLock, _ cpu: CPU?, _ body: () -> Void) {
        guard lock.tryLockRead() else {
            cpu?.handleInterrupts()
            sched_yield()
            return
        }
        defer { lock.unlockRead() }
        body()
    }

    private func locklessWalk(_ address: UInt64, nrPages: Int, interruptible cpu: CPU?, vcpuPreempted: Bool,
                              detector: Detector, counters: inout WalkCounters) {
        counters.walks += 1
        RCU.read {
            guard let (table, gen, _, _) = counters.reached(walkToPTETable(address), detector: detector) else { return }
            let base = allocator.address(of: table)
            let first = Int((address >> 12) & 511)
            var sawPoison = false
            let last = min(first + nrPages, 512)
            for i in first..<last {
                if i & 63 == 0 { cpu?.handleInterruptsAndMaybePreempt() }
                if vcpuPreempted && i == (first + last) / 2 { sched_yield() }
                let raw = ptlab_pte_read(base.assumingMemoryBound(to: UInt64.self) + i)
                if raw == poisonEntry { sawPoison = true }
            }
            if !isLiveTable(table.desc, .pte, gen) {
                counters.detected(detector)
            } else if sawPoison {
                counters.detected(detector, poison: true)
            } else {
                counters.mapped += 1
            }
        }
    }

    /// pte_offset_map_lock: find the PTE table locklessly under RCU, take its
    /// split lock (answering IPIs while spinning, as spin_lock does with
    /// IRQs on), and recheck the PMD. Taking a lock whose destructor already
    /// ran is the use-after-free of seed 003.
    ///
    /// It holds the mmap read lock, as the rcu walker does, and finds no
    /// VMA: a ptlock freed under the mmap write lock is not in its reach.
    public func pteOffsetMapLock(_ address: UInt64, cpu: CPU?, counters: inout WalkCounters) {
        withLock(mmapLock, cpu) { pteOffsetMapLockUnderMMapRead(address, cpu: cpu, counters: &counters) }
    }

    private func pteOffsetMapLockUnderMMapRead(_ address: UInt64, cpu: CPU?, counters: inout WalkCounters) {
        counters.walks += 1
        RCU.read {
            guard let (table, gen, pmdSlot, pmdVal) = counters.reached(walkToPTETable(address), detector: .pteOffsetMapLock)
            else { return }
            raceWindow(.pteOffsetMapLockBeforeLock, address)
            let d = table.desc
            while ptlab_ptl_trylock(d) == 0 { cpu?.handleInterrupts() }
            defer { ptlab_ptl_unlock(d) }
            if ptlab_ptl_alive(d) == 0 {
                counters.detected(.freedPTLock)
            } else if ptlab_pte_read(pmdSlot) != pmdVal {
                counters.retries += 1
            } else if !isLiveTable(d, .pte, gen) {
                counters.detected(.pteOffsetMapLock)
            } else {
                let raw = ptlab_pte_read(entry(in: table, level: .pte, address: address))
                if raw == poisonEntry { counters.detected(.pteOffsetMapLock, poison: true) } else { counters.mapped += 1 }
            }
        }
    }

    /// A memory access by `cpu`'s MMU: the paging-structure cache first,
    /// then a hardware walk that fills it. No RCU: hardware is protected
    /// only by TLB flushes, which `cpu` answers between accesses.
    public func hardwareAccess(_ address: UInt64, cpu: CPU, counters: inout WalkCounters) {
        counters.walks += 1
        cpu.hardwareWalk { psc in
            if let cached = psc.lookup(address), let d = allocator.descriptor(pfn: cached.pfn) {
                guard isLiveTable(d, .pte, cached.generation) else {
                    counters.detected(.stalePSC)
                    return
                }
                let raw = ptlab_pte_read(entry(in: Page(d), level: .pte, address: address))
                if raw == poisonEntry { counters.detected(.stalePSC, poison: true) } else { counters.mapped += 1 }
                return
            }
            guard let (table, gen, _, _) = counters.reached(walkToPTETable(address), detector: .mmuWalk) else { return }
            psc.fill(address, pfn: UInt64(table.pfn), generation: gen)
            counters.mapped += 1
        }
    }
}
