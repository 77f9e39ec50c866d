import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// Traces nobody wrote by hand: seeded random sequences of every trace op,
/// aimed at table boundaries (2 MiB, 1 GiB, 512 GiB), run on the model and
/// the live kernel in lockstep with a checkpoint after every op. Any
/// disagreement names the seed, the op and both values.
final class DifferentialTraceTests: XCTestCase {
    /// Builds one random trace, tracking its own mappings (kind, protection,
    /// VM_HUGEPAGE, and for shared memory where its file offsets fall) so
    /// that every op is one the kernel accepts: touches stay in rw memory,
    /// collapses only where a huge PMD can go and pages are present, moves
    /// onto free space, and from inside one mapping (and, on 6.17+, on
    /// across others).
    struct Generator {
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
        /// inside its piece across whatever follows, pieces and gaps alike.
        mutating func mremap() -> [String]? {
            guard let (_, a, within) = subrange() else { return nil }
            let l = movesSeveralVMAs && chance(25) ? length() : within
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

        mutating func trace(ops: Int) -> String {
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

    /// How many seeds the sweep runs: PTLAB_DIFF_SEEDS changes it (CI
    /// doubles it). The default, about 30 ms a seed in a debug build, keeps
    /// the whole `swift test --parallel` near a minute on two cores.
    static var seeds: UInt64 { ProcessInfo.processInfo.environment["PTLAB_DIFF_SEEDS"].flatMap(UInt64.init) ?? 2000 }
    /// The sweep is cut into parts, one test each, so that `swift test
    /// --parallel` runs them in processes of their own side by side (VmPTE
    /// is per process; within one, kernel passes never overlap).
    static let parts: UInt64 = 4

    func testRandomTracesMatchThisKernelPart1() throws { try sweep(part: 0) }
    func testRandomTracesMatchThisKernelPart2() throws { try sweep(part: 1) }
    func testRandomTracesMatchThisKernelPart3() throws { try sweep(part: 2) }
    func testRandomTracesMatchThisKernelPart4() throws { try sweep(part: 3) }

    /// Seeds part * seeds / parts + 1 through (part + 1) * seeds / parts.
    func sweep(part: UInt64) throws {
        if let reason = LiveKernel.unavailableReason { throw XCTSkip("no live kernel to compare with: \(reason)") }
        let first = part * Self.seeds / Self.parts + 1, last = (part + 1) * Self.seeds / Self.parts
        guard first <= last else { return }
        let profile = CompareProfile.runningKernel()
        let kernel = runningKernel ?? profile.modelKernel(asked: nil, comparingLive: false)
        let model = try ModelTarget(profile: profile, kernel: kernel)
        var notComparable = 0
        // Batches of traces share a runner: one rcu_barrier before the
        // kernel's passes and one after, not two a trace.
        for batch in stride(from: first, through: last, by: 50).map({ $0...min($0 + 49, last) }) {
            let texts = batch.map { seed in
                var generator = Generator(rng: SplitMix64(seed: seed), guardRegions: profile == .ptReclaim,
                                          guardsSharedMemory: kernel >= KernelVersion(6, 15),
                                          movesSeveralVMAs: profile == .ptReclaim && kernel >= KernelVersion(6, 17))
                return generator.trace(ops: 30)
            }
            let traces = try zip(batch, texts).map { seed, text in try TraceParser.parse(text, file: "random-\(seed).trace") }
            let runs = try runTolerantOfInterference(traces, targets: { [model, try LiveKernel()] }, profile: profile)
            for (seed, (text, run)) in zip(batch, zip(texts, runs)) {
                // The kernel fell back to small pages, or khugepaged (which
                // MADV_HUGEPAGE wakes) collapsed memory on its own: no
                // verdict past that point, but every checkpoint before it
                // still counts.
                if run.notComparable { notComparable += 1 } else {
                    XCTAssertNil(run.error, "seed \(seed): \(String(describing: run.error))\n\(text)")
                }
                if let c = run.checkpoints.first(where: { Set($0.kilobytes).count != 1 }) {
                    // The whole trace, so the failure can be replayed with
                    // `ptlab compare` as it stands.
                    let lines = text.split(separator: "\n")
                    XCTFail("seed \(seed) line \(c.line) (\(lines[c.line - 2])): model/kernel kB \(c.kilobytes)\n\(text)")
                }
                XCTAssertEqual(run.afterCleanup, [0, 0], "seed \(seed)")
            }
        }
        let count = Int(last - first + 1)
        XCTAssertLessThan(notComparable, count / 4 + 1, "seeds \(first)...\(last): too many traces had no verdict to prove anything")
    }
}
