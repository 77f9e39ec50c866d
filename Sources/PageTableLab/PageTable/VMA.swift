/// A virtual memory area: an anonymous private read-write mapping.
public struct VMA: Equatable, Sendable, Codable {
    public var start: UInt64
    public var end: UInt64
    /// The anon_vma, assigned at the first fault (0 = none yet). Two VMAs
    /// with different anon_vmas cannot merge, as in the kernel.
    public var anonVMA: UInt64 = 0

    public var length: UInt64 { end - start }
    public func contains(_ address: UInt64) -> Bool { address >= start && address < end }
}

/// The mm's VMAs, sorted and disjoint (the kernel's maple tree, as a sorted
/// array: the lab's mms hold a handful of VMAs).
struct VMATree {
    private(set) var vmas: [VMA] = []
    private var nextAnonVMA: UInt64 = 1

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

    /// Insert a new mapping, merging with neighbours whose anon_vma allows it
    /// (vma_merge_new_range: a fresh VMA has none, so it joins either side;
    /// it bridges both only if their anon_vmas agree).
    mutating func insert(_ start: UInt64, _ end: UInt64) {
        var vma = VMA(start: start, end: end)
        let prevIndex = vmas.lastIndex { $0.end == start }
        let nextIndex = vmas.firstIndex { $0.start == end }
        var mergeNext = nextIndex != nil
        if let p = prevIndex, let n = nextIndex,
           vmas[p].anonVMA != 0, vmas[n].anonVMA != 0, vmas[p].anonVMA != vmas[n].anonVMA {
            mergeNext = false
        }
        if let p = prevIndex {
            vma.start = vmas[p].start
            vma.anonVMA = vmas[p].anonVMA
        }
        if mergeNext, let n = nextIndex {
            vma.end = vmas[n].end
            if vma.anonVMA == 0 { vma.anonVMA = vmas[n].anonVMA }
        }
        vmas.removeAll { $0.start >= vma.start && $0.end <= vma.end }
        let at = vmas.firstIndex { $0.start > vma.start } ?? vmas.count
        vmas.insert(vma, at: at)
    }

    /// anon_prepare: the first fault in a VMA gives it an anon_vma.
    mutating func prepareAnon(at address: UInt64) {
        guard let i = vmas.firstIndex(where: { $0.contains(address) }), vmas[i].anonVMA == 0 else { return }
        vmas[i].anonVMA = nextAnonVMA
        nextAnonVMA += 1
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
            if vma.start < start { kept.append(VMA(start: vma.start, end: start, anonVMA: vma.anonVMA)) }
            removed.append(VMA(start: max(vma.start, start), end: min(vma.end, end), anonVMA: vma.anonVMA))
            if vma.end > end { kept.append(VMA(start: end, end: vma.end, anonVMA: vma.anonVMA)) }
        }
        vmas = kept
        return (removed, kept.last { $0.end <= start }, kept.first { $0.start >= end })
    }

    /// The VMAs intersecting [start, end), clipped to it.
    func clipped(_ start: UInt64, _ end: UInt64) -> [VMA] {
        vmas.compactMap { vma in
            guard vma.start < end, start < vma.end else { return nil }
            return VMA(start: max(vma.start, start), end: min(vma.end, end), anonVMA: vma.anonVMA)
        }
    }

    mutating func removeAll() -> [VMA] {
        defer { vmas = [] }
        return vmas
    }
}
