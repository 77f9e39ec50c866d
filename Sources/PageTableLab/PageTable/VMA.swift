/// vm_flags, the ones the model distinguishes. Two neighbouring VMAs merge
/// only when their flags are equal, so a flag is also a VMA boundary.
public struct VMFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let read = VMFlags(rawValue: 1 << 0)          // VM_READ
    public static let write = VMFlags(rawValue: 1 << 1)         // VM_WRITE
    public static let shared = VMFlags(rawValue: 1 << 3)        // VM_SHARED: MAP_SHARED of a file
    public static let hugepage = VMFlags(rawValue: 1 << 29)     // VM_HUGEPAGE: MADV_HUGEPAGE
    public static let noHugepage = VMFlags(rawValue: 1 << 30)   // VM_NOHUGEPAGE: MADV_NOHUGEPAGE

    public static let readWrite: VMFlags = [.read, .write]
}

/// A virtual memory area: anonymous private memory, or a MAP_SHARED
/// mapping of a shmem file (a memfd).
public struct VMA: Sendable {
    public var start: UInt64
    public var end: UInt64
    public var flags: VMFlags
    /// The anon_vma, assigned at the first fault (0 = none yet). Two VMAs
    /// with different anon_vmas cannot merge, as in the kernel.
    public var anonVMA: UInt64 = 0
    /// The shmem file mapped; nil for anonymous memory.
    public var file: ShmemFile?
    /// vm_pgoff: the file page mapped at `start`; for anonymous memory, the
    /// page number of the address it was first mapped at (mremap keeps it,
    /// which is what stops a moved VMA from merging with its new neighbours).
    public var pgoff: UInt64
    /// When the VMA was last linked into the i_mmap tree (VMATree counts
    /// them: an insert, a merge, a split): among VMAs mapping a file from
    /// the same page, the rmap walks the one linked first first (see
    /// VMATree.rmapOrder).
    var linkOrder: UInt64 = 0

    public init(start: UInt64, end: UInt64, flags: VMFlags, file: ShmemFile? = nil, pgoff: UInt64? = nil) {
        self.start = start
        self.end = end
        self.flags = flags
        self.file = file
        self.pgoff = pgoff ?? start >> 12
    }

    public var length: UInt64 { end - start }
    public var extent: Range<UInt64> { start..<end }
    public var isAnonymous: Bool { file == nil }
    public func contains(_ address: UInt64) -> Bool { address >= start && address < end }
    /// The file page (anonymous: the linear page index) mapped at `address`.
    public func pgoff(at address: UInt64) -> UInt64 { pgoff + (address - start) >> 12 }

    /// This VMA cut to [from, to) (which it must cover), pgoff following.
    func slice(_ from: UInt64, _ to: UInt64) -> VMA {
        var piece = self
        piece.start = from
        piece.end = to
        piece.pgoff = pgoff(at: from)
        return piece
    }

    /// is_mergeable_vma + is_mergeable_anon_vma, for `self` directly below
    /// `next`: equal flags, the same file, contiguous pgoff, and anon_vmas
    /// that agree (or one not yet assigned).
    func canMerge(with next: VMA) -> Bool {
        end == next.start && flags == next.flags && file === next.file
            && pgoff + (length >> 12) == next.pgoff
            && (anonVMA == 0 || next.anonVMA == 0 || anonVMA == next.anonVMA)
    }

    /// Both halves joined (`next` directly above).
    func merged(with next: VMA) -> VMA {
        var vma = self
        vma.end = next.end
        if vma.anonVMA == 0 { vma.anonVMA = next.anonVMA }
        return vma
    }
}

extension VMA: Equatable {
    public static func == (a: VMA, b: VMA) -> Bool {
        a.start == b.start && a.end == b.end && a.flags == b.flags && a.anonVMA == b.anonVMA
            && a.file === b.file && a.pgoff == b.pgoff
    }
}

/// The mm's VMAs, sorted and disjoint (the kernel's maple tree, as a sorted
/// array: the lab's mms hold a handful of VMAs).
struct VMATree {
    private(set) var vmas: [VMA] = []
    private var nextAnonVMA: UInt64 = 1
    private var nextLinkOrder: UInt64 = 1

    /// The VMAs mapping `file`, in the order an rmap walk of its i_mmap
    /// tree finds them: by the file page each starts at, and among those
    /// that start at the same page, in the order they were linked
    /// (vma_interval_tree_insert puts an equal key after the ones already
    /// there). So the VMA mremap copies to comes after its source whatever
    /// their addresses, which is what lets move_ptes run without the rmap
    /// lock: a walk that has passed the source finds in the copy every
    /// entry moved after it looked (the comment above move_ptes).
    func rmapOrder(of file: ShmemFile) -> [VMA] {
        Self.inRmapOrder(vmas.filter { $0.file === file })
    }

    static func inRmapOrder(_ vmas: [VMA]) -> [VMA] {
        vmas.sorted { ($0.pgoff, $0.linkOrder) < ($1.pgoff, $1.linkOrder) }
    }

    func overlaps(_ start: UInt64, _ end: UInt64) -> Bool {
        vmas.contains { $0.start < end && start < $0.end }
    }

    func find(_ address: UInt64) -> VMA? {
        vmas.first { $0.contains(address) }
    }

    /// True when [start, end) is mapped with no hole.
    func covers(_ start: UInt64, _ end: UInt64) -> Bool {
        var at = start
        for vma in vmas where vma.end > at && vma.start < end {
            if vma.start > at { return false }
            at = vma.end
            if at >= end { return true }
        }
        return at >= end
    }

    /// Anonymous read-write memory at [start, end), merged with neighbours
    /// as a fresh mapping is (the form the tests and stress runs use).
    mutating func insert(_ start: UInt64, _ end: UInt64) {
        insert(VMA(start: start, end: end, flags: .readWrite))
    }

    /// Insert a new mapping, merging with neighbours that allow it
    /// (vma_merge_new_range: a fresh VMA has no anon_vma, so it joins either
    /// side; it bridges both only if their anon_vmas agree).
    mutating func insert(_ vma: VMA) {
        let vma = relinked(vma)
        let at = vmas.firstIndex { $0.start > vma.start } ?? vmas.count
        vmas.insert(vma, at: at)
        mergeAround(at)
    }

    /// `vma` as linked into the i_mmap tree now: a VMA inserted, or one
    /// merged or split (vma_prepare takes it out, vma_complete puts it back,
    /// after the VMAs that start at its page already).
    private mutating func relinked(_ vma: VMA) -> VMA {
        var vma = vma
        vma.linkOrder = nextLinkOrder
        nextLinkOrder += 1
        return vma
    }

    /// Merge the VMA at `index` with its neighbours where they allow it,
    /// the lower one first (when both would but cannot be bridged, the
    /// kernel joins the lower); returns its index afterwards.
    @discardableResult
    private mutating func mergeAround(_ index: Int) -> Int {
        var i = index
        if i > 0, vmas[i - 1].canMerge(with: vmas[i]) {
            vmas[i - 1] = relinked(vmas[i - 1].merged(with: vmas[i]))
            vmas.remove(at: i)
            i -= 1
        }
        if i + 1 < vmas.count, vmas[i].canMerge(with: vmas[i + 1]) {
            vmas[i] = relinked(vmas[i].merged(with: vmas[i + 1]))
            vmas.remove(at: i + 1)
        }
        return i
    }

    /// unlink_anon_vmas: the VMA at `address` has no anon_vma any more (the
    /// next fault prepares a new one). No split, no merge.
    mutating func unlinkAnonVMA(at address: UInt64) {
        guard let i = vmas.firstIndex(where: { $0.contains(address) }) else { return }
        vmas[i].anonVMA = 0
    }

    /// anon_vma_prepare for the VMA at `address`, whatever it maps:
    /// MADV_GUARD_INSTALL asks it of file VMAs too (6.13-6.18).
    mutating func prepareAnonVMA(at address: UInt64) {
        guard let i = vmas.firstIndex(where: { $0.contains(address) }), vmas[i].anonVMA == 0 else { return }
        vmas[i].anonVMA = nextAnonVMA
        nextAnonVMA += 1
    }

    /// anon_prepare: the first fault in an anonymous VMA gives it an
    /// anon_vma (a MAP_SHARED mapping of a file gets one only from
    /// MADV_GUARD_INSTALL). The VMA at `address`, its anon_vma prepared
    /// first if it needs one: what a write fault looks up, in one search.
    mutating func prepareAnonAndFind(_ address: UInt64) -> VMA? {
        guard let i = vmas.firstIndex(where: { $0.contains(address) }) else { return nil }
        if vmas[i].isAnonymous && vmas[i].anonVMA == 0 {
            vmas[i].anonVMA = nextAnonVMA
            nextAnonVMA += 1
        }
        return vmas[i]
    }

    /// vma_modify (mprotect, madvise): split at the edges of [start, end)
    /// where the change alters the VMA there, change each piece inside,
    /// then merge what now allows it. Returns where VMAs were split (a huge
    /// PMD across such a point must be split too: vma_adjust_trans_huge).
    @discardableResult
    mutating func modify(_ start: UInt64, _ end: UInt64, _ change: (inout VMA) -> Void) -> [UInt64] {
        var splits: [UInt64] = []
        for edge in [start, end] {
            guard let vma = vmas.first(where: { $0.start < edge && edge < $0.end }) else { continue }
            var changed = vma
            change(&changed)
            if changed != vma {
                split(at: edge)
                splits.append(edge)
            }
        }
        var i = 0
        while i < vmas.count {
            if vmas[i].start >= start && vmas[i].end <= end {
                change(&vmas[i])
                i = mergeAround(i)
            }
            i += 1
        }
        return splits
    }

    /// __split_vma at `address`, if a VMA straddles it.
    private mutating func split(at address: UInt64) {
        guard let i = vmas.firstIndex(where: { $0.start < address && address < $0.end }) else { return }
        let vma = vmas[i]
        vmas[i] = relinked(vma.slice(vma.start, address))
        vmas.insert(relinked(vma.slice(address, vma.end)), at: i + 1)
    }

    /// Split at the edges of [start, end) and take out what lies inside.
    /// Returns the removed pieces and the neighbours left around the hole.
    mutating func remove(_ start: UInt64, _ end: UInt64) -> (removed: [VMA], prev: VMA?, next: VMA?) {
        var kept: [VMA] = []
        var removed: [VMA] = []
        for vma in vmas {
            if vma.end <= start || vma.start >= end {
                kept.append(vma)
                continue
            }
            if vma.start < start { kept.append(relinked(vma.slice(vma.start, start))) }
            removed.append(vma.slice(max(vma.start, start), min(vma.end, end)))
            if vma.end > end { kept.append(relinked(vma.slice(end, vma.end))) }
        }
        vmas = kept
        return (removed, kept.last { $0.end <= start }, kept.first { $0.start >= end })
    }

    /// The VMAs intersecting [start, end), clipped to it.
    func clipped(_ start: UInt64, _ end: UInt64) -> [VMA] {
        vmas.compactMap { vma in
            guard vma.start < end, start < vma.end else { return nil }
            return vma.slice(max(vma.start, start), min(vma.end, end))
        }
    }

    /// The neighbours a hole at [start, end) has (free_pgtables' floor and
    /// ceiling come from them).
    func neighbours(of start: UInt64, _ end: UInt64) -> (prev: VMA?, next: VMA?) {
        (vmas.last { $0.end <= start }, vmas.first { $0.start >= end })
    }
}
