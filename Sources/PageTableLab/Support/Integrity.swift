// Support/: what the rest of the model leans on and the kernel has no file
// for.
//
//  - Integrity (Integrity.swift). The kernel's freeing calls return nothing:
//    call_rcu, tlb_remove_table and pagetable_free cannot fail. The model's
//    cannot either, so when one of them meets a step it must refuse because
//    going on would corrupt the model, it counts the refusal instead of
//    throwing: a free the allocator refused (a double free, a tail page;
//    PageTables.release), a table queued twice for a deferred free
//    (PageTables.markDeferred), an SVA notifier that could not make the
//    IOMMU drop a range (SVABond), a user store that found its page freed
//    while still mapped (MM.userStore), a data page freed while user entries
//    still map it, or unmapped more often than mapped (the kernel's "Bad
//    page state"; PageTables.release, MM's rmap). Each count is a bug in the model or in a
//    policy plugged into it. A run takes a snapshot before and after, and a
//    safe stress run with any difference fails. The counters are static
//    atomics with relaxed adds: no lock, no allocation, safe from RCU
//    callbacks and from the deferred kernel-table work.
//  - LabMutex (LabMutex.swift): Synchronization.Mutex with the ordering it
//    provides spelled out for ThreadSanitizer. Under contention Mutex hands
//    over in the kernel (FUTEX_LOCK_PI) or in uninstrumented library code,
//    and TSan then reports accesses made under the lock as races. LabMutex
//    annotates an acquire just after taking the lock and a release just
//    before giving it back, as CSupport/rcu.c does for the call_rcu
//    hand-off. The model uses it wherever it would use Mutex. It allocates
//    nothing per lock operation.
//  - monotonicNanoseconds (Clock.swift): CLOCK_MONOTONIC through the vDSO,
//    allocation-free, for latencies taken inside RCU callbacks.
//
// None of the three waits for a grace period, and what freeing paths call
// here (the counters, the lock, the clock) allocates nothing.

import Synchronization

/// Operations the model refused because going on would have corrupted it:
/// a free of a page that was not allocated (a double free), a table queued
/// twice for a deferred free, a secondary TLB (an IOMMU through SVA) that
/// could not be told about a flush, a user store into a page the page
/// tables still mapped after it was freed, a data page freed while still
/// mapped or unmapped once too often. The freeing paths cannot fail, so they
/// count these instead of throwing; each one is a bug in the model or in a
/// policy plugged into it, and a safe stress run with any of them fails.
public struct Integrity: Sendable, Codable, Equatable {
    public var freeErrors = 0
    public var doubleQueued = 0
    public var notifierFailures = 0
    public var storesToFreedPages = 0
    /// Data pages freed while user entries still mapped them (the free was
    /// refused), or unmapped more often than they were mapped.
    public var badPageStates = 0

    public init() {}

    static let freeErrorCount = Atomic<Int>(0)
    static let doubleQueuedCount = Atomic<Int>(0)
    static let notifierFailureCount = Atomic<Int>(0)
    static let storeToFreedPageCount = Atomic<Int>(0)
    static let badPageStateCount = Atomic<Int>(0)

    /// The lab-wide counts so far (take two and subtract for one run's).
    public static func snapshot() -> Integrity {
        var i = Integrity()
        i.freeErrors = freeErrorCount.load(ordering: .relaxed)
        i.doubleQueued = doubleQueuedCount.load(ordering: .relaxed)
        i.notifierFailures = notifierFailureCount.load(ordering: .relaxed)
        i.storesToFreedPages = storeToFreedPageCount.load(ordering: .relaxed)
        i.badPageStates = badPageStateCount.load(ordering: .relaxed)
        return i
    }

    public static func - (a: Integrity, b: Integrity) -> Integrity {
        var d = Integrity()
        d.freeErrors = a.freeErrors - b.freeErrors
        d.doubleQueued = a.doubleQueued - b.doubleQueued
        d.notifierFailures = a.notifierFailures - b.notifierFailures
        d.storesToFreedPages = a.storesToFreedPages - b.storesToFreedPages
        d.badPageStates = a.badPageStates - b.badPageStates
        return d
    }

    public var isClean: Bool {
        freeErrors == 0 && doubleQueued == 0 && notifierFailures == 0 && storesToFreedPages == 0 && badPageStates == 0
    }

    /// What went wrong, in words; empty when clean.
    public var problems: [String] {
        var p: [String] = []
        if freeErrors != 0 { p.append("\(freeErrors) frees refused by the allocator (double free)") }
        if doubleQueued != 0 { p.append("\(doubleQueued) tables queued twice for a deferred free") }
        if notifierFailures != 0 { p.append("\(notifierFailures) secondary-TLB invalidations that failed") }
        if storesToFreedPages != 0 { p.append("\(storesToFreedPages) user stores into pages already freed (mapped after their free)") }
        if badPageStates != 0 { p.append("\(badPageStates) bad page states (data pages freed while still mapped, or unmapped once too often)") }
        return p
    }

    enum CodingKeys: String, CodingKey {
        case freeErrors = "free_errors"
        case doubleQueued = "double_queued"
        case notifierFailures = "notifier_failures"
        case storesToFreedPages = "stores_to_freed_pages"
        case badPageStates = "bad_page_states"
    }
}
