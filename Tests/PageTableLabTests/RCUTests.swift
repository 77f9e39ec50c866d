import CSupport
import Dispatch
import Synchronization
import XCTest
@testable import PageTableLab

/// An object with an embedded head at offset 0, as the lab's descriptors
/// have: the callback reaches the object from the head without a side table.
private struct TrackedObject {
    var head = ptlab_rcu_head()
    /// 0 while live; the callback stores 0x6b, like a poisoning free.
    var contents: UInt64 = 0
    var callbackRuns = 0
}

/// Objects for a test, reachable from @Sendable thread bodies by address.
private struct TrackedObjects {
    let base: UInt
    let count: Int

    init(_ count: Int) {
        precondition(MemoryLayout<TrackedObject>.offset(of: \.head) == 0)
        let p = UnsafeMutablePointer<TrackedObject>.allocate(capacity: count)
        p.initialize(repeating: TrackedObject(), count: count)
        base = UInt(bitPattern: p)
        self.count = count
    }

    var pointer: UnsafeMutablePointer<TrackedObject> { UnsafeMutablePointer(bitPattern: base)! }
    subscript(i: Int) -> TrackedObject { pointer[i] }
    func head(_ i: Int) -> UnsafeMutablePointer<ptlab_rcu_head> {
        UnsafeMutableRawPointer(pointer + i).assumingMemoryBound(to: ptlab_rcu_head.self)
    }
    var runCounts: [Int] { (0..<count).map { pointer[$0].callbackRuns } }
    func deallocate() { pointer.deallocate() }
}

private func trackedObject(_ head: UnsafeMutablePointer<ptlab_rcu_head>?) -> UnsafeMutablePointer<TrackedObject> {
    UnsafeMutableRawPointer(head!).assumingMemoryBound(to: TrackedObject.self)
}

/// What threads in a test report back.
private final class Tally: Sendable {
    let errors = Atomic<Int>(0)
    let queued = Atomic<Int>(0)
    let ranInline = Atomic<Int>(0)
    let seenInside = Atomic<UInt64>(.max)
}

/// Callbacks run on liburcu's worker: global functions, never closures.
private let callbackRan = DispatchSemaphore(value: 0)
private func poisonAndSignal(_ head: UnsafeMutablePointer<ptlab_rcu_head>?) {
    let object = trackedObject(head)
    object.pointee.contents = 0x6b6b_6b6b_6b6b_6b6b
    object.pointee.callbackRuns += 1
    callbackRan.signal()
}

private func countRun(_ head: UnsafeMutablePointer<ptlab_rcu_head>?) {
    trackedObject(head).pointee.callbackRuns += 1
}

private let barrierErrorInCallback = Mutex<RCUError?>(nil)
private func callBarrierFromCallback(_ head: UnsafeMutablePointer<ptlab_rcu_head>?) {
    do {
        try RCU.barrier()
    } catch {
        barrierErrorInCallback.withLock { $0 = error }
    }
}

final class RCUTests: XCTestCase {
    override func tearDown() {
        DeferredBound.bytes = 0
    }

    /// The core promise: a callback queued while a reader is inside a read
    /// section runs only after that reader has left.
    func testCallbackWaitsForReaderToLeave() throws {
        let object = TrackedObjects(1)
        defer { object.deallocate() }
        let readerInside = DispatchSemaphore(value: 0)
        let readerMayLeave = DispatchSemaphore(value: 0)
        let tally = Tally()

        let reader = RCUThread {
            RCU.read {
                readerInside.signal()
                readerMayLeave.wait()
                // Still inside: whatever the updater did, the object is intact.
                tally.seenInside.store(object[0].contents, ordering: .relaxed)
            }
        }
        readerInside.wait()
        try RCU.withRegisteredThread {
            _ = try RCU.call(object.head(0), bytes: 64, poisonAndSignal)
        }
        // The callback must not come while the reader is inside. A broken
        // grace period would run it after liburcu's ~10 ms batching delay;
        // a correct one never does, so this wait can only fail a broken build.
        let early = callbackRan.wait(timeout: .now() + .milliseconds(300))
        XCTAssertEqual(early, .timedOut, "the RCU callback ran while a reader was inside its read section")
        XCTAssertEqual(object[0].contents, 0, "object was touched during the read section")
        readerMayLeave.signal()
        reader.join()
        try RCU.withRegisteredThread { try RCU.barrier() }
        XCTAssertEqual(tally.seenInside.load(ordering: .relaxed), 0)
        XCTAssertEqual(object[0].contents, 0x6b6b_6b6b_6b6b_6b6b, "callback did not run after the reader left")
        XCTAssertEqual(object[0].callbackRuns, 1)
        if early == .timedOut { callbackRan.wait() }   // its signal, after the barrier
    }

    /// call from several threads at once: every callback runs exactly once.
    func testCallFromSeveralThreadsRunsEachCallbackOnce() throws {
        let threads = 4, perThread = 20_000
        let objects = TrackedObjects(threads * perThread)
        defer { objects.deallocate() }
        let before = DeferredBound.snapshot()
        let tally = Tally()
        let callers = (0..<threads).map { t in
            RCUThread {
                for i in t * perThread..<(t + 1) * perThread {
                    do {
                        try RCU.call(objects.head(i), bytes: 16, countRun)
                    } catch {
                        tally.errors.add(1, ordering: .relaxed)
                    }
                }
            }
        }
        callers.forEach { $0.join() }
        try RCU.withRegisteredThread { try RCU.barrier() }
        XCTAssertEqual(tally.errors.load(ordering: .relaxed), 0)
        XCTAssertEqual(objects.runCounts.filter { $0 != 1 }.count, 0, "callbacks that ran other than once")
        let after = DeferredBound.snapshot()
        XCTAssertEqual(after.queued - before.queued, UInt64(threads * perThread))
        XCTAssertEqual(after.invoked - before.invoked, UInt64(threads * perThread))
        XCTAssertEqual(after.outstandingBytes, before.outstandingBytes)
    }

    /// Priming (what `ptlab compare` does before its first trace) queues one
    /// callback through the trampoline and returns only after it ran.
    func testPrimeRunsOneCallbackBeforeReturning() throws {
        let before = DeferredBound.snapshot()
        RCU.withRegisteredThread { ptlab_rcu_prime() }
        let after = DeferredBound.snapshot()
        XCTAssertEqual(after.queued - before.queued, 1)
        XCTAssertEqual(after.invoked - before.invoked, 1, "returned before its callback ran")
        XCTAssertEqual(after.outstandingBytes, before.outstandingBytes)
    }

    /// A flood against a bound: outstanding deferred bytes never pass it,
    /// because callers over it wait a grace period and free inline.
    func testBoundHoldsUnderFlood() throws {
        let threads = 2, perThread = 5_000, objectBytes: UInt64 = 4096
        let bound = 64 * objectBytes
        let objects = TrackedObjects(threads * perThread)
        defer { objects.deallocate() }
        try RCU.withRegisteredThread { try RCU.barrier() }
        DeferredBound.bytes = bound
        DeferredBound.resetPeak()
        let before = DeferredBound.snapshot()
        let tally = Tally()
        let flooders = (0..<threads).map { t in
            RCUThread {
                for i in t * perThread..<(t + 1) * perThread {
                    switch try? RCU.call(objects.head(i), bytes: objectBytes, countRun) {
                    case .queued: tally.queued.add(1, ordering: .relaxed)
                    case .ranInline: tally.ranInline.add(1, ordering: .relaxed)
                    case nil: tally.errors.add(1, ordering: .relaxed)
                    }
                }
            }
        }
        flooders.forEach { $0.join() }
        try RCU.withRegisteredThread { try RCU.barrier() }
        let after = DeferredBound.snapshot()
        let ranInline = tally.ranInline.load(ordering: .relaxed)
        XCTAssertEqual(tally.errors.load(ordering: .relaxed), 0)
        XCTAssertEqual(tally.queued.load(ordering: .relaxed) + ranInline, threads * perThread)
        XCTAssertLessThanOrEqual(after.peakBytes, Int64(bound), "outstanding deferred bytes passed the bound")
        XCTAssertGreaterThan(after.peakBytes, 0, "nothing was ever deferred")
        XCTAssertGreaterThan(ranInline, 0, "the flood never hit the bound")
        XCTAssertEqual(after.inlineFallbacks - before.inlineFallbacks, UInt64(ranInline))
        XCTAssertEqual(after.boundOvershoots, before.boundOvershoots)
        XCTAssertEqual(objects.runCounts.filter { $0 != 1 }.count, 0, "callbacks that ran other than once")
    }

    /// Waiting for a grace period inside a read section would wait for
    /// itself: an error, not a hang.
    func testSynchronizeAndBarrierInsideReadSectionAreErrors() throws {
        try RCU.withRegisteredThread {
            try RCU.read {
                XCTAssertTrue(RCU.readSectionOngoing)
                XCTAssertThrowsError(try RCU.synchronize()) {
                    XCTAssertEqual($0 as? RCUError, .insideReadSection(operation: "synchronize"))
                }
                XCTAssertThrowsError(try RCU.barrier()) {
                    XCTAssertEqual($0 as? RCUError, .insideReadSection(operation: "barrier"))
                }
            }
            XCTAssertFalse(RCU.readSectionOngoing)
            try RCU.synchronize()
        }
    }

    func testBarrierFromCallbackIsAnError() throws {
        let object = TrackedObjects(1)
        defer { object.deallocate() }
        try RCU.withRegisteredThread {
            try RCU.call(object.head(0), bytes: 0, callBarrierFromCallback)
            try RCU.barrier()
        }
        XCTAssertEqual(barrierErrorInCallback.withLock { $0 }, .insideCallback(operation: "barrier"))
    }

    func testCallFromUnregisteredThreadIsAnError() {
        let object = TrackedObjects(1)
        defer { object.deallocate() }
        XCTAssertFalse(RCU.threadRegistered)
        XCTAssertThrowsError(try RCU.call(object.head(0), bytes: 0, countRun)) {
            XCTAssertEqual($0 as? RCUError, .unregisteredThread(operation: "call"))
        }
        XCTAssertThrowsError(try GracePeriod.startPoll()) {
            XCTAssertEqual($0 as? RCUError, .unregisteredThread(operation: "startPoll"))
        }
        RCU.withRegisteredThread { XCTAssertTrue(RCU.threadRegistered) }
        XCTAssertFalse(RCU.threadRegistered, "scoped registration outlived its scope")
        XCTAssertEqual(object[0].callbackRuns, 0)
    }

    func testGracePeriodCookieCompletesAfterSynchronize() throws {
        try RCU.withRegisteredThread {
            let cookie = GracePeriod.state()
            XCTAssertFalse(GracePeriod.poll(cookie), "no grace period has started since the cookie")
            try RCU.synchronize()
            XCTAssertTrue(GracePeriod.poll(cookie))
            XCTAssertTrue(GracePeriod.poll(GracePeriod.Cookie(sequence: cookie.sequence - 1)))
        }
    }

    func testStartPollCompletesByBarrier() throws {
        try RCU.withRegisteredThread {
            let cookie = try GracePeriod.startPoll()
            XCTAssertFalse(GracePeriod.poll(GracePeriod.state()))
            try RCU.barrier()
            XCTAssertTrue(GracePeriod.poll(cookie), "the polled grace period did not complete by barrier")
            // Already complete: condSynchronize must not need to wait, and
            // must not fail.
            try GracePeriod.condSynchronize(cookie)
        }
    }
}
