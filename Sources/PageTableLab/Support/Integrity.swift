import Synchronization

/// Operations the model refused because going on would have corrupted it:
/// a free of a page that was not allocated (a double free), a table queued
/// twice for a deferred free, a secondary TLB (an IOMMU through SVA) that
/// could not be told about a flush. The freeing paths cannot fail, so they
/// count these instead of throwing; each one is a bug in the model or in a
/// policy plugged into it, and a safe stress run with any of them fails.
public struct Integrity: Sendable, Codable, Equatable {
    public var freeErrors = 0
    public var doubleQueued = 0
    public var notifierFailures = 0

    public init() {}

    static let freeErrorCount = Atomic<Int>(0)
    static let doubleQueuedCount = Atomic<Int>(0)
    static let notifierFailureCount = Atomic<Int>(0)

    /// The lab-wide counts so far (take two and subtract for one run's).
    public static func snapshot() -> Integrity {
        var i = Integrity()
        i.freeErrors = freeErrorCount.load(ordering: .relaxed)
        i.doubleQueued = doubleQueuedCount.load(ordering: .relaxed)
        i.notifierFailures = notifierFailureCount.load(ordering: .relaxed)
        return i
    }

    public static func - (a: Integrity, b: Integrity) -> Integrity {
        var d = Integrity()
        d.freeErrors = a.freeErrors - b.freeErrors
        d.doubleQueued = a.doubleQueued - b.doubleQueued
        d.notifierFailures = a.notifierFailures - b.notifierFailures
        return d
    }

    public var isClean: Bool { freeErrors == 0 && doubleQueued == 0 && notifierFailures == 0 }

    /// What went wrong, in words; empty when clean.
    public var problems: [String] {
        var p: [String] = []
        if freeErrors != 0 { p.append("\(freeErrors) frees refused by the allocator (double free)") }
        if doubleQueued != 0 { p.append("\(doubleQueued) tables queued twice for a deferred free") }
        if notifierFailures != 0 { p.append("\(notifierFailures) secondary-TLB invalidations that failed") }
        return p
    }

    enum CodingKeys: String, CodingKey {
        case freeErrors = "free_errors"
        case doubleQueued = "double_queued"
        case notifierFailures = "notifier_failures"
    }
}
