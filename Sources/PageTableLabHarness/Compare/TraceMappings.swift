import PageTableLab
/// The memory a trace has mapped so far: each piece with the line of the
/// `mmap` that made it, whether it is shared memory, and its protection.
/// The parser uses it to refuse ops on memory the trace does not own (or
/// may not write) before anything runs; the runner uses it to unmap what a
/// trace leaves behind, so the next trace starts from an empty region.
public struct TraceMappings: Equatable, Sendable {
    public struct Piece: Equatable, Sendable {
        public var range: Range<UInt64>
        /// Line of the `mmap` that created it, or of the `mremap` that put
        /// it where it is: pieces of different lines may be different VMAs.
        public var line: Int
        public var shared: Bool
        public var protection: Protection
        /// MADV_HUGEPAGE (VM_HUGEPAGE): a VMA of its own beside memory
        /// without it.
        public var hugepage = false
    }

    /// Disjoint, sorted by address.
    public private(set) var pieces: [Piece] = []
    /// Where guard markers are (MADV_GUARD_INSTALL): disjoint, sorted.
    public private(set) var guards: [Range<UInt64>] = []

    public init() {}

    /// The first guarded stretch that overlaps `range`, clipped to it.
    public func guarded(in range: Range<UInt64>) -> Range<UInt64>? {
        guards.first { $0.overlaps(range) }.map { $0.clamped(to: range) }
    }

    private mutating func guardRange(_ range: Range<UInt64>) {
        unguard(range)
        let at = guards.firstIndex { $0.lowerBound >= range.upperBound } ?? guards.endIndex
        guards.insert(range, at: at)
    }

    /// Drops the guards in `range`; returns what was there.
    @discardableResult
    private mutating func unguard(_ range: Range<UInt64>) -> [Range<UInt64>] {
        let taken = guards.filter { $0.overlaps(range) }.map { $0.clamped(to: range) }
        guards = guards.flatMap { $0.removing(range) }
        return taken
    }

    /// The first piece that overlaps `range`.
    public func overlap(with range: Range<UInt64>) -> Piece? {
        pieces.first { $0.range.overlaps(range) }
    }

    /// The pieces inside `range`, clipped to it.
    public func pieces(in range: Range<UInt64>) -> [Piece] {
        pieces.compactMap { piece in
            guard piece.range.overlaps(range) else { return nil }
            var p = piece
            p.range = max(piece.range.lowerBound, range.lowerBound)..<min(piece.range.upperBound, range.upperBound)
            return p
        }
    }

    /// The lowest address of `range` that no piece covers; nil if all is mapped.
    public func firstHole(in range: Range<UInt64>) -> UInt64? {
        var next = range.lowerBound
        for piece in pieces where piece.range.upperBound > next {
            guard piece.range.lowerBound <= next else { return next }
            next = piece.range.upperBound
            if next >= range.upperBound { return nil }
        }
        return next
    }

    public mutating func map(_ range: Range<UInt64>, line: Int, shared: Bool = false) {
        insert(Piece(range: range, line: line, shared: shared, protection: .rw))
    }

    private mutating func insert(_ piece: Piece) {
        let at = pieces.firstIndex { $0.range.lowerBound >= piece.range.upperBound } ?? pieces.endIndex
        pieces.insert(piece, at: at)
    }

    /// Drops `range`, splitting pieces it cuts, as munmap splits VMAs.
    /// Returns what was there.
    @discardableResult
    public mutating func unmap(_ range: Range<UInt64>) -> [Piece] {
        let taken = pieces(in: range)
        pieces = pieces.flatMap { piece in
            piece.range.removing(range).map { rest in
                var p = piece
                p.range = rest
                return p
            }
        }
        return taken
    }

    /// `change` on the pieces in `range`, split out of the pieces it cuts,
    /// as mprotect and madvise split VMAs.
    private mutating func modify(_ range: Range<UInt64>, _ change: (inout Piece) -> Void) {
        for var piece in unmap(range) {
            change(&piece)
            insert(piece)
        }
    }

    /// Follows an op that succeeded; ops that map, unmap, move or protect
    /// change the mappings, the others leave them as they are.
    public mutating func apply(_ step: TraceStep) {
        switch step.op {
        case .mmap(let a, let l, let shared): map(a..<a + l, line: step.line, shared: shared)
        case .munmap(let a, let l):
            unmap(a..<a + l)
            unguard(a..<a + l)
        case .mremap(let old, let l, let new, let dontUnmap):
            // MREMAP_DONTUNMAP leaves the old range mapped, empty; its
            // guard markers move with the rest of the entries.
            let moving = dontUnmap ? pieces(in: old..<old + l) : unmap(old..<old + l)
            for var piece in moving {
                piece.range = piece.range.lowerBound - old + new..<piece.range.upperBound - old + new
                piece.line = step.line
                insert(piece)
            }
            for g in unguard(old..<old + l) { guardRange(g.lowerBound - old + new..<g.upperBound - old + new) }
        case .mprotect(let a, let l, let protection):
            modify(a..<a + l) { $0.protection = protection }
        case .hugepage(let a, let l): modify(a..<a + l) { $0.hugepage = true }
        case .guardInstall(let a, let l): guardRange(a..<a + l)
        case .guardRemove(let a, let l): unguard(a..<a + l)
        case .touch, .dontneed, .collapse, .expect: break
        }
    }
}

extension Range<UInt64> {
    /// What is left of this range outside `cut`: itself, one side, both
    /// sides, or nothing.
    func removing(_ cut: Range<UInt64>) -> [Range<UInt64>] {
        guard overlaps(cut) else { return [self] }
        var rest: [Range<UInt64>] = []
        if lowerBound < cut.lowerBound { rest.append(lowerBound..<cut.lowerBound) }
        if cut.upperBound < upperBound { rest.append(cut.upperBound..<upperBound) }
        return rest
    }
}

extension TraceMappings.Piece {
    /// What keeps two pieces in separate VMAs whatever their lines: the
    /// backing, the protection and VM_HUGEPAGE.
    var flagsKind: String { "\(shared) \(protection.rawValue) \(hugepage)" }
    /// That, and the line: pieces of different lines may be separate VMAs.
    var vmaKind: String { "\(line) \(flagsKind)" }
}
