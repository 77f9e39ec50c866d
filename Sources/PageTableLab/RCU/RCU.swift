// RCU/: the kernel's RCU API, with liburcu's memb flavour doing the work.
//
// The grace periods are real ones, not an imitation. A "CPU" is a thread
// registered with liburcu (urcu_memb_register_thread); rcu_read_lock and
// rcu_read_unlock are liburcu's read-side inlines; call_rcu queues on an
// rcu_head embedded in the object being freed; synchronize_rcu and
// rcu_barrier are liburcu's own. The promise this area keeps is the one
// include/linux/rcupdate.h makes and every page-table free in the lab leans
// on: a callback queued by call_rcu runs only after every read section that
// was running when it was queued has ended. GUP-fast (IRQs off) and
// pte_offset_map (rcu_read_lock) walk inside such sections; a table freed
// through call_rcu cannot be freed under them.
//
// How it runs. Callbacks run on liburcu's call_rcu worker
// (urcu-call-rcu-impl.h, call_rcu_thread): it takes the whole queue, waits
// one grace period for it, runs it, then sleeps 10 ms before looking again.
// So a flood of call_rcu is mostly outstanding at once, in 10 ms batches,
// and rcu_barrier costs at least one such period. `rcu_workers=per-cpu`
// switches to one worker per CPU (create_all_cpu_call_rcu_data), as the
// kernel's per-CPU callback lists are.
//
// The rules:
//  - Never wait for a grace period inside a read section (it would wait for
//    itself): synchronize and barrier refuse with RCUError instead of
//    hanging. A read section is synchronous; an await inside it could resume
//    on another thread.
//  - call_rcu allocates nothing: the head lives in the object (a page
//    table's ptdesc->pt_rcu_head, or memory the caller owns), and one C
//    trampoline (CSupport/rcu.c) turns it back into its object.
//  - Callbacks run on the worker: no blocking, no allocation, no
//    rcu_barrier (RCUError.insideCallback).
//  - Only a registered thread may queue (RCUError.unregisteredThread).
//  - A head must not be queued again before its callback has run: liburcu's
//    queue would be corrupted. The page-table paths guard it through the
//    page state (PageTables.markDeferred); RCU.call itself does not check.
//  - Deferred memory is counted twice, on purpose: admission against
//    deferred_bound_bytes (DeferredBound; over it a caller waits a grace
//    period and frees inline, as kvfree_rcu does when it has no page for
//    its batch), and measurement from the callbacks' side (in-flight bytes,
//    sampled by DeferredMemoryMonitor), so that a broken admission cannot
//    hide its own overshoot.
//
// Files:
//   RCU.swift                    read, call, synchronize, barrier; RCUHead, RCUError
//   RCUThread.swift              registration, RCUThread (a "CPU"), call_rcu workers, CPU pinning
//   GracePeriod.swift            get_state/start_poll/poll_state/cond_synchronize_rcu, which
//                                liburcu 0.13 lacks, on a static head (nothing allocated)
//   DeferredBound.swift          the bound and the queued/invoked/in-flight books
//   DeferredMemoryMonitor.swift  the peak of in-flight bytes, sampled from a thread of its own
//
// CSupport is a public import here because RCU.read's @inlinable body is
// liburcu's read-side inline code, compiled into callers in other modules (a
// read section is a handful of instructions, and the bench holds it to C's
// cost). No C type appears in a signature here.

public import CSupport
internal import CURCU
import Synchronization

/// Misuse of the RCU API. Each of these would be a hang or silent corruption
/// in liburcu itself; the lab turns them into errors that name the mistake.
public enum RCUError: Error, Equatable, CustomStringConvertible {
    /// `synchronize` or `barrier` called inside a read section: it would wait
    /// for the caller itself and never return.
    case insideReadSection(operation: String)
    /// `barrier` from a callback: the worker would wait for itself.
    case insideCallback(operation: String)
    /// `call` from a thread liburcu does not know: the head would be queued
    /// with no reader state behind it.
    case unregisteredThread(operation: String)
    /// The same head queued twice before its callback ran.
    case alreadyQueued(operation: String)

    public var description: String {
        switch self {
        case .insideReadSection(let op): "rcu: \(op) called inside an RCU read section (it would wait for itself)"
        case .insideCallback(let op): "rcu: \(op) called from an RCU callback (the worker would wait for itself)"
        case .unregisteredThread(let op): "rcu: \(op) called from a thread not registered with liburcu (use RCU.withRegisteredThread or RCUThread)"
        case .alreadyQueued(let op): "rcu: \(op) on a head that is already queued"
        }
    }
}

/// A callback liburcu's worker runs after a grace period, given the address
/// of the head it was queued on (`RCUHead(at:)` turns it back into one). It
/// must be a nonisolated global function: a closure literal in main-actor
/// code traps when the worker thread calls it.
public typealias RCUCallback = @convention(c) (UnsafeMutableRawPointer?) -> Void

/// The C face of the same callback, for the library's own.
typealias CRCUCallback = @convention(c) (UnsafeMutablePointer<ptlab_rcu_head>?) -> Void

/// struct rcu_head: where an object waiting for a grace period is queued.
/// It lives inside the object (a page's descriptor, or memory the caller
/// owns), so queueing allocates nothing, and the callback finds the object
/// from it (container_of).
public struct RCUHead: Hashable, @unchecked Sendable {
    let raw: UnsafeMutablePointer<ptlab_rcu_head>

    init(_ raw: UnsafeMutablePointer<ptlab_rcu_head>) { self.raw = raw }

    /// The head at `memory`, which the caller owns, `RCUHead.size` bytes of
    /// it, suitably aligned, until the callback has run.
    public init(at memory: UnsafeMutableRawPointer) {
        raw = memory.bindMemory(to: ptlab_rcu_head.self, capacity: 1)
    }

    /// Where the head lives: what an `RCUCallback` is given.
    public var address: UnsafeMutableRawPointer { UnsafeMutableRawPointer(raw) }

    /// The bytes a head needs.
    public static var size: Int { MemoryLayout<ptlab_rcu_head>.size }
}

/// What `call` did with the head.
public enum RCUCallOutcome: Equatable, Sendable {
    /// Queued; the callback runs on the worker after a grace period.
    case queued
    /// Outstanding deferred bytes were over the bound: the caller waited for a
    /// grace period and ran the callback itself (kvfree_rcu's fallback).
    case ranInline
}

/// The Swift face of liburcu's memb flavour. Read sections are inlined
/// liburcu code; everything that can wait checks first that it is not
/// waiting for itself.
public enum RCU {
    /// Enter a read section for `body`. Synchronous only: an `await` inside
    /// could resume on another thread and unlock a section it never locked.
    @inlinable @inline(__always)
    public static func read<R>(_ body: () throws -> R) rethrows -> R {
        ptlab_rcu_read_lock()
        defer { ptlab_rcu_read_unlock() }
        return try body()
    }

    /// True while this thread is inside a read section.
    @inlinable
    public static var readSectionOngoing: Bool { ptlab_rcu_read_ongoing() != 0 }

    /// True while this thread is registered (or is running a callback).
    public static var threadRegistered: Bool { ptlab_rcu_thread_may_call() != 0 }

    /// Queue `callback(head)` for after a grace period. Allocation-free: the
    /// head is embedded in the object. `bytes` is what the object holds, for
    /// the outstanding-memory account and its bound.
    @discardableResult
    public static func call(_ head: RCUHead, bytes: UInt64, _ callback: RCUCallback) throws(RCUError) -> RCUCallOutcome {
        try call(head.raw, bytes: bytes, unsafeBitCast(callback, to: CRCUCallback.self))
    }

    @discardableResult
    static func call(
        _ head: UnsafeMutablePointer<ptlab_rcu_head>, bytes: UInt64, _ callback: CRCUCallback
    ) throws(RCUError) -> RCUCallOutcome {
        guard ptlab_rcu_thread_may_call() != 0 else { throw .unregisteredThread(operation: "call") }
        if ptlab_call_rcu_bounded(head, callback, bytes, DeferredBound.enforced.load(ordering: .relaxed)) != 0 {
            return .queued
        }
        if ptlab_rcu_read_ongoing() != 0 {
            // Waiting here would wait for ourselves; call_rcu never fails in
            // the kernel, so queue past the bound and say so in the stats.
            DeferredBound.overshoots.add(1, ordering: .relaxed)
            _ = ptlab_rcu_reserve(bytes, 0)
            ptlab_call_rcu(head, callback, bytes)
            return .queued
        }
        synchronizeUnchecked()
        ptlab_rcu_run_inline(head, callback)
        return .ranInline
    }

    /// Wait for a grace period (synchronize_rcu).
    public static func synchronize() throws(RCUError) {
        guard ptlab_rcu_read_ongoing() == 0 else { throw .insideReadSection(operation: "synchronize") }
        synchronizeUnchecked()
    }

    /// Wait until every callback queued so far has run (rcu_barrier). Costs at
    /// least one worker period (10 ms in liburcu 0.13): never in a loop.
    public static func barrier() throws(RCUError) {
        guard ptlab_rcu_read_ongoing() == 0 else { throw .insideReadSection(operation: "barrier") }
        guard ptlab_rcu_in_callback_now() == 0 else { throw .insideCallback(operation: "barrier") }
        ptlab_rcu_barrier()
    }

    static func synchronizeUnchecked() {
        let seq = GracePeriod.started.add(1, ordering: .sequentiallyConsistent).newValue
        ptlab_rcu_synchronize()
        GracePeriod.complete(seq)
    }
}
