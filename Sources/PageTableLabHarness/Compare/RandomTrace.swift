import PageTableLab
/// Traces nobody wrote by hand: a seeded random sequence of every trace op,
/// aimed at table boundaries (2 MiB, 1 GiB, 512 GiB), with a checkpoint after
/// every op, for the model and a live kernel to run in lockstep
/// (`ptlab compare --random`, DifferentialTraceTests). The generator tracks
/// its own mappings (kind, protection, VM_HUGEPAGE, and for shared memory
/// where its file offsets fall) so that every op is one the kernel accepts:
/// touches stay in rw memory, collapses only where a huge PMD can go and
/// pages are present, moves onto free space, from inside one mapping (and,
/// on 6.17+, on across others). The same seed gives the same trace for the
/// same release and profile.
public struct RandomTrace {
    /// The trace for `seed`: `ops` ops, each followed by an `expect`, for a
    /// comparison under `profile` of `kernel`'s mm: guard regions and
    /// moves across mappings only where that profile and release have them.
    public static func text(seed: UInt64, ops: Int, profile: CompareProfile, kernel: KernelVersion) -> String {
        var generator = RandomTrace(rng: SplitMix64(seed: seed),
                                    guardRegions: profile == .ptReclaim && kernel >= KernelVersion(6, 13),
                                    guardsSharedMemory: kernel >= KernelVersion(6, 15),
                                    movesSeveralVMAs: profile == .ptReclaim && kernel >= KernelVersion(6, 17))
        return generator.trace(ops: ops)
    }

    /// The model's node_budget_pages for random traces (8 GiB a node): one
    /// may fault huge pages over several GiB of VM_HUGEPAGE memory, which the
    /// default budget (256 MiB) cannot hold. The arena is brought up only as
    /// far as it is used, and a touch writes one byte of each page it
    /// faults, so the process's own memory follows the traces' touches (a
    /// whole huge page each where the host backs the arena with THP).
    public static let modelNodeBudgetPages = 1 << 21

    /// The name `ptlab compare --random` and the sweep give the trace of
    /// `seed`.
    public static func fileName(seed: UInt64) -> String { "random-\(seed).trace" }

    /// The trace for `seed` (as `text`), parsed under its `fileName`: the
    /// text is kept to print a trace that did not match, for a replay.
    public static func parsed(seed: UInt64, ops: Int, profile: CompareProfile,
                              kernel: KernelVersion) throws(TraceError) -> (text: String, trace: Trace) {
        let text = text(seed: seed, ops: ops, profile: profile, kernel: kernel)
        return (text, try TraceParser.parse(text, file: fileName(seed: seed)))
    }

    /// How many random traces one CompareRunner runs: each run waits out
    /// an rcu_barrier before the kernel's passes and one after, so batches
    /// pay two per batch, not two per trace.
    public static let batch: UInt64 = 50

    struct Piece {
        var start: UInt64
        var length: UInt64
        var shared: Bool
        var protection: Protection = .rw
        var hugepage = false
        /// Shared memory: (address - file offset) mod 2 MiB, which must
        /// be 0 for a PMD to map the file's huge page.
        var misalign: UInt64 = 0
        var end: UInt64 { start + length }
    }

    var rng: SplitMix64
    /// Whether the kernel has guard regions (6.13+, file mappings too
    /// 6.15+; the traces then say `profiles 6.14+`), and where the
    /// trace has put them.
    var guardRegions = false
    /// Whether they may go in shared memory too (6.15+).
    var guardsSharedMemory = false
    /// Whether one mremap moves several VMAs (6.17+: the traces then
    /// say `profiles 6.14+`, whose model does).
    var movesSeveralVMAs = false
    var pieces: [Piece] = []
    var guards: [Range<UInt64>] = []
    let regions: [UInt64] = [0x100_0000_0000, 0x180_0000_0000]

    mutating func pick<T>(_ xs: [T]) -> T { xs[Int(rng.next() % UInt64(xs.count))] }
    mutating func chance(_ percent: UInt64) -> Bool { rng.next() % 100 < percent }

    mutating func address() -> UInt64 {
        let region = pick(regions)
        let gig: UInt64 = pick([0, 1, 2, 511])
        let mib2: UInt64 = pick([0, 1, 2, 255, 510, 511])
        let page: UInt64 = pick([0, 0, 1, 255, 256, 511])
        return region + gig << 30 + mib2 << 21 + page << 12
    }

    mutating func length() -> UInt64 {
        pick([4096, 8192, 1 << 20, 2 << 20, (2 << 20) + 4096, 4 << 20, 6 << 20, 64 << 20, 1 << 30])
    }

    func free(_ a: UInt64, _ l: UInt64) -> Bool {
        a + l <= TraceAddressSpace.end && !pieces.contains { $0.start < a + l && a < $0.end }
    }

    /// A page range inside one piece.
    mutating func subrange(where include: (Piece) -> Bool = { _ in true }) -> (Int, UInt64, UInt64)? {
        let candidates = pieces.indices.filter { include(pieces[$0]) }
        guard !candidates.isEmpty else { return nil }
        let i = pick(candidates)
        let pages = pieces[i].length >> 12
        let first = rng.next() % pages
        let count = 1 + rng.next() % (pages - first)
        return (i, pieces[i].start + first << 12, count << 12)
    }

    /// Cut [a, a + l) out of the pieces; returns what was there.
    mutating func cut(_ a: UInt64, _ l: UInt64) -> [Piece] {
        var taken: [Piece] = []
        pieces = pieces.flatMap { p -> [Piece] in
            guard p.start < a + l && a < p.end else { return [p] }
            var left: [Piece] = []
            if p.start < a { var low = p; low.length = a - p.start; left.append(low) }
            if p.end > a + l { var high = p; high.start = a + l; high.length = p.end - a - l; left.append(high) }
            var mid = p
            mid.start = max(p.start, a)
            mid.length = min(p.end, a + l) - mid.start
            taken.append(mid)
            return left
        }
        return taken
    }

    /// Change the pieces in [a, a + l).
    mutating func modify(_ a: UInt64, _ l: UInt64, _ change: (inout Piece) -> Void) {
        for var p in cut(a, l) {
            change(&p)
            pieces.append(p)
        }
    }

    static func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

    func guarded(_ a: UInt64, _ l: UInt64) -> Bool { guards.contains { $0.overlaps(a..<a + l) } }

    /// Guards of [a, a + l) dropped; returns them.
    mutating func unguard(_ a: UInt64, _ l: UInt64) -> [Range<UInt64>] {
        let cut = a..<a + l
        let taken = guards.filter { $0.overlaps(cut) }.map { $0.clamped(to: cut) }
        guards = guards.flatMap { g -> [Range<UInt64>] in
            guard g.overlaps(cut) else { return [g] }
            return [g.lowerBound..<max(g.lowerBound, cut.lowerBound), min(g.upperBound, cut.upperBound)..<g.upperBound]
                .filter { !$0.isEmpty }
        }
        return taken
    }

    /// MADV_GUARD_INSTALL or _REMOVE on part of one mapping.
    mutating func guardOp() -> [String]? {
        let shared = guardsSharedMemory
        guard let (_, a, l) = subrange(where: { shared || !$0.shared }) else { return nil }
        _ = unguard(a, l)
        if chance(70) {
            guards.append(a..<a + l)
            return ["guard \(Self.hex(a)) \(Self.hex(l))"]
        }
        return ["unguard \(Self.hex(a)) \(Self.hex(l))"]
    }

    mutating func op() -> [String]? {
        switch rng.next() % 20 {
        case 0...3:
            let a = address(), l = length()
            guard free(a, l) else { return nil }
            let shared = chance(30)
            pieces.append(Piece(start: a, length: l, shared: shared, misalign: shared ? a & ((2 << 20) - 1) : 0))
            return ["mmap \(Self.hex(a)) \(Self.hex(l))" + (shared ? " shared" : "")]
        case 4...7:
            guard let (_, a, l) = subrange(where: { $0.protection == .rw }), !guarded(a, l) else { return nil }
            let stride: UInt64 = l > 64 << 20 ? 2 << 20 : pick([4096, 64 << 10, 1 << 20])
            return ["touch \(Self.hex(a)) \(Self.hex(l)) \(Self.hex(stride))"]
        case 8...9:
            guard let (_, a, l) = subrange() else { return nil }
            return ["dontneed \(Self.hex(a)) \(Self.hex(l))"]
        case 10:
            guard let (_, a, l) = subrange() else { return nil }
            let p: Protection = pick([.none, .r, .rw, .rw])
            modify(a, l) { $0.protection = p }
            return ["mprotect \(Self.hex(a)) \(Self.hex(l)) \(p.rawValue)"]
        case 11:
            guard let (_, a, l) = subrange() else { return nil }
            modify(a, l) { $0.hugepage = true }
            return ["hugepage \(Self.hex(a)) \(Self.hex(l))"]
        case 12...13:
            return collapse()
        case 14...15:
            return mremap()
        case 16 where guardRegions:
            return guardOp()
        default:
            // munmap may span holes and several mappings.
            let a = address(), l = length()
            guard a + l <= TraceAddressSpace.end else { return nil }
            _ = cut(a, l)
            _ = unguard(a, l)
            return ["munmap \(Self.hex(a)) \(Self.hex(l))"]
        }
    }

    /// A huge-PMD-sized range where MADV_COLLAPSE must succeed: inside
    /// one rw VM_HUGEPAGE piece, aligned (shared memory: its file
    /// offsets too), with pages written just before.
    mutating func collapse() -> [String]? {
        let fits = pieces.indices.filter { i in
            let p = pieces[i]
            let first = (p.start + (2 << 20) - 1) & ~((2 << 20) - 1)
            return p.protection == .rw && p.hugepage && p.misalign == 0 && first + (2 << 20) <= p.end
        }
        guard !fits.isEmpty else { return nil }
        let p = pieces[pick(fits)]
        let first = (p.start + (2 << 20) - 1) & ~((2 << 20) - 1)
        let count = (p.end - first) >> 21
        let a = first + (rng.next() % count) << 21
        guard !guarded(a, 2 << 20) else { return nil }
        return ["touch \(Self.hex(a)) 0x200000 \(Self.hex(pick([4096, 64 << 10, 1 << 20])))",
                "collapse \(Self.hex(a)) 0x200000"]
    }

    /// A move of part of one piece onto free space: aligned to 2 MiB or
    /// 1 GiB, equally misaligned, or anywhere; one in four with
    /// MREMAP_DONTUNMAP, the source left mapped. Where the kernel moves
    /// several VMAs (6.17+, `profiles 6.14+`), one in four runs on from
    /// inside its piece across whatever follows, pieces and gaps alike:
    /// half of those into a later piece (ending inside it or at its end),
    /// half by a length drawn as any other.
    mutating func mremap() -> [String]? {
        guard let (_, a, within) = subrange() else { return nil }
        let l = movesSeveralVMAs && chance(25) ? acrossPieces(from: a) : within
        var new = address()
        switch rng.next() % 3 {
        case 0: new = new & ~((2 << 20) - 1) | a & ((2 << 20) - 1)
        case 1: new &= ~((1 << 30) - 1)
        default: break
        }
        guard a + l <= TraceAddressSpace.end, free(new, l), new + l <= a || a + l <= new else { return nil }
        let dontUnmap = chance(25)
        let moving = cut(a, l)
        if dontUnmap { pieces += moving }
        for g in unguard(a, l) { guards.append(g.lowerBound - a + new..<g.upperBound - a + new) }
        for var moved in moving {
            moved.start = moved.start - a + new
            if moved.shared { moved.misalign = (moved.misalign &+ new &- a) & ((2 << 20) - 1) }
            pieces.append(moved)
        }
        return ["mremap \(Self.hex(a)) \(Self.hex(l)) \(Self.hex(new))" + (dontUnmap ? " dontunmap" : "")]
    }

    /// A length from `a` (inside a piece) that runs on into a later piece
    /// of the next 64 MiB, or one drawn as `length()` where there is none
    /// or the draw says so.
    mutating func acrossPieces(from a: UInt64) -> UInt64 {
        let later = pieces.filter { $0.start > a && $0.start - a <= 64 << 20 }
        guard !later.isEmpty, chance(50) else { return length() }
        let p = pick(later)
        return p.start + (1 + rng.next() % (p.length >> 12)) << 12 - a
    }

    private mutating func trace(ops: Int) -> String {
        var lines: [String] = guardRegions || movesSeveralVMAs ? ["profiles \(CompareProfile.ptReclaim.rawValue)"] : []
        var count = 0
        while count < ops {
            guard let step = op() else { continue }
            for line in step { lines += [line, "expect"] }
            count += 1
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
