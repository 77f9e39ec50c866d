import PageTableLab

/// How often a scenario's updaters did each kind of op, and how often the
/// op was refused because another updater had changed what it expected (a
/// range unmapped, a slot mapped). A kind that is only ever refused is a
/// kind the run never tested, whatever else it did; the report says so
/// (`op_kinds`), and a safe verdict needs each kind done.
public final class OpTally: Sendable {
    public struct Count: Codable, Sendable, Equatable {
        public var done = 0
        public var refused = 0
    }

    private let counts = LabMutex<[String: Count]>([:])

    public init() {}

    public func done(_ kind: String) { counts.withLock { $0[kind, default: Count()].done += 1 } }
    public func refused(_ kind: String) { counts.withLock { $0[kind, default: Count()].refused += 1 } }

    /// Every kind counted so far; empty for a scenario that counts none.
    public var snapshot: [String: Count] { counts.withLock { $0 } }
}
