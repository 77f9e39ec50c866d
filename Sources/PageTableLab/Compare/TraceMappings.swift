/// The memory a trace has mapped so far, with the line of the `mmap` that
/// made each piece. The parser uses it to refuse ops on memory the trace does
/// not own before anything runs; the runner uses it to unmap what a trace
/// leaves behind, so the next trace starts from an empty region.
public struct TraceMappings: Equatable, Sendable {
    public struct Piece: Equatable, Sendable {
        public var range: Range<UInt64>
        /// Line of the `mmap` that created it.
        public var line: Int
    }

    /// Disjoint, sorted by address.
    public private(set) var pieces: [Piece] = []

    public init() {}

    /// The first piece that overlaps `range`.
    public func overlap(with range: Range<UInt64>) -> Piece? {
        pieces.first { $0.range.overlaps(range) }
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

    public mutating func map(_ range: Range<UInt64>, line: Int) {
        let at = pieces.firstIndex { $0.range.lowerBound >= range.upperBound } ?? pieces.endIndex
        pieces.insert(Piece(range: range, line: line), at: at)
    }

    /// Drops `range`, splitting pieces it cuts, as munmap splits VMAs.
    public mutating func unmap(_ range: Range<UInt64>) {
        pieces = pieces.flatMap { piece -> [Piece] in
            guard piece.range.overlaps(range) else { return [piece] }
            var rest: [Piece] = []
            if piece.range.lowerBound < range.lowerBound {
                rest.append(Piece(range: piece.range.lowerBound..<range.lowerBound, line: piece.line))
            }
            if range.upperBound < piece.range.upperBound {
                rest.append(Piece(range: range.upperBound..<piece.range.upperBound, line: piece.line))
            }
            return rest
        }
    }

    /// Follows an op that succeeded; ops other than mmap and munmap leave the
    /// mappings as they are.
    public mutating func apply(_ step: TraceStep) {
        switch step.op {
        case .mmap(let a, let l): map(a..<a + l, line: step.line)
        case .munmap(let a, let l): unmap(a..<a + l)
        case .touch, .dontneed, .expect: break
        }
    }
}
