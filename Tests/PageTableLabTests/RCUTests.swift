import CSupport
import Dispatch
import Synchronization
import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

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

    /// A flood against a bound, as `RCU.call`'s callers make it, measured
    /// from the other side: a monitor samples the bytes liburcu really
    /// holds, counted where callbacks give them back.
    private func floodAgainstBound(admission: Bool) throws -> (peak: Int64, bound: Int64, ranInline: Int) {
        let threads = 2, perThread = 5_000, objectBytes: UInt64 = 4096
        let bound = 64 * objectBytes
        let objects = TrackedObjects(threads * perThread)
        defer { objects.deallocate() }
        try RCU.withRegisteredThread { try RCU.barrier() }
        DeferredBound.bytes = bound
        DeferredBound.disableAdmissionForTesting(!admission)
        defer { DeferredBound.disableAdmissionForTesting(false) }
        let before = DeferredBound.snapshot()
        let monitor = DeferredMemoryMonitor(periodMicroseconds: 0)
        let tally = Tally()
        // Without admission nobody waits, so a reader may hold every free
        // back for the whole flood, and the sample taken before it leaves
        // sees all of it (with admission a held reader would stall the
        // callers over the bound forever).
        let holder = admission ? nil : GracePeriodHolder()
        // With admission the monitor's own thread may get no CPU during the
        // flood, and the sample after it come when the worker has drained
        // everything (CI saw a peak of 0 once). So first, with a grace
        // period held, a few objects well under the bound are queued and
        // sampled: the monitor must see them, whatever the flood leaves.
        let primer = TrackedObjects(8)
        defer { primer.deallocate() }
        if admission {
            let hold = GracePeriodHolder()
            try RCU.withRegisteredThread {
                for i in 0..<8 { try RCU.call(primer.head(i), bytes: objectBytes, countRun) }
            }
            monitor.sample()
            hold.release()
        }
        let flooders = (0..<threads).map { t in
            RCUThread {
                for i in t * perThread..<(t + 1) * perThread {
                    do {
                        switch try RCU.call(objects.head(i), bytes: objectBytes, countRun) {
                        case .queued: tally.queued.add(1, ordering: .relaxed)
                        case .ranInline: tally.ranInline.add(1, ordering: .relaxed)
                        }
                    } catch {
                        tally.errors.add(1, ordering: .relaxed)
                    }
                }
            }
        }
        flooders.forEach { $0.join() }
        monitor.sample()
        holder?.release()
        let peak = monitor.stop()
        try RCU.withRegisteredThread { try RCU.barrier() }
        let after = DeferredBound.snapshot()
        let ranInline = tally.ranInline.load(ordering: .relaxed)
        XCTAssertGreaterThan(monitor.sampleCount, 1, "the monitor never sampled during the flood")
        XCTAssertEqual(tally.errors.load(ordering: .relaxed), 0)
        XCTAssertEqual(tally.queued.load(ordering: .relaxed) + ranInline, threads * perThread)
        XCTAssertEqual(after.inlineFallbacks - before.inlineFallbacks, UInt64(ranInline))
        XCTAssertEqual(after.boundOvershoots, before.boundOvershoots)
        XCTAssertEqual(after.inFlightBytes, before.inFlightBytes, "bytes still in flight after the barrier")
        XCTAssertEqual(objects.runCounts.filter { $0 != 1 }.count, 0, "callbacks that ran other than once")
        XCTAssertEqual(primer.runCounts.filter { $0 != (admission ? 1 : 0) }.count, 0, "primer callbacks")
        return (peak, Int64(bound), ranInline)
    }

    /// The bound holds: callers over it wait a grace period and free
    /// inline, so liburcu never holds more than the bound.
    func testBoundHoldsUnderFlood() throws {
        let r = try floodAgainstBound(admission: true)
        XCTAssertLessThanOrEqual(r.peak, r.bound, "liburcu held more deferred bytes than the bound")
        XCTAssertGreaterThan(r.peak, 0, "nothing was ever deferred")
        XCTAssertGreaterThan(r.ranInline, 0, "the flood never hit the bound")
    }

    /// The check above can fail: with admission switched off (the bound's
    /// check deleted), the same flood piles up far more than the bound,
    /// and the monitor sees it.
    func testBoundCheckCatchesAFloodWithoutAdmission() throws {
        let r = try floodAgainstBound(admission: false)
        XCTAssertEqual(r.ranInline, 0, "with admission off nothing should run inline")
        XCTAssertGreaterThan(r.peak, r.bound, "the monitor did not see the flood pass the bound")
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

    /// start_poll_synchronize_rcu starts a grace period by itself: nobody
    /// else waits for one or drains the callbacks, yet the cookie completes.
    func testStartPollStartsAGracePeriodOnItsOwn() throws {
        try RCU.withRegisteredThread {
            let cookie = try GracePeriod.startPoll()
            try waitUntil("the grace period startPoll should have started never completed") {
                GracePeriod.poll(cookie)
            }
        }
    }

    /// A grace period that began with startPoll cannot end while a reader
    /// that was inside before it is still inside, so poll must say false
    /// for as long as the reader stays, and true once it has left.
    func testPollIsNotTrueWhileAnEarlierReaderIsInside() throws {
        try RCU.withRegisteredThread {
            try RCU.synchronize()   // so "completed" has caught up with "started"
            let cookie = try withGracePeriodHeld { () throws -> GracePeriod.Cookie in
                let cookie = try GracePeriod.startPoll()
                // Long enough for liburcu's worker to take the callback
                // (it wakes every 10 ms); a correct grace period cannot
                // end, so this can only fail a broken poll.
                XCTAssertFalse(holdsWithin(milliseconds: 200) { GracePeriod.poll(cookie) },
                               "poll said the grace period was over while a reader from before it was inside")
                return cookie
            }
            try waitUntil("the polled grace period never completed after the reader left") { GracePeriod.poll(cookie) }
        }
    }

    /// cond_synchronize_rcu waits when no grace period has passed since
    /// its cookie: with a reader inside, it must not return until the
    /// reader leaves, and afterwards the cookie is complete.
    func testCondSynchronizeWaitsForAGracePeriodWhenNoneHasPassed() throws {
        let returned = DispatchSemaphore(value: 0)
        let cookieDone = Atomic<Bool>(false)
        let waiter: RCUThread = withGracePeriodHeld {
            let cookie = GracePeriod.state()
            let waiter = RCUThread {
                do {
                    try GracePeriod.condSynchronize(cookie)
                    cookieDone.store(GracePeriod.poll(cookie), ordering: .relaxed)
                } catch {
                    XCTFail("condSynchronize: \(error)")
                }
                returned.signal()
            }
            XCTAssertEqual(returned.wait(timeout: .now() + .milliseconds(200)), .timedOut,
                           "condSynchronize returned while a reader from before its cookie was inside")
            return waiter
        }
        XCTAssertEqual(returned.wait(timeout: .now() + .seconds(30)), .success, "condSynchronize never returned")
        waiter.join()
        XCTAssertTrue(cookieDone.load(ordering: .relaxed), "the cookie was not complete when condSynchronize returned")
    }

    func testStartPollCompletesByBarrier() throws {
        try RCU.withRegisteredThread {
            let cookie = try GracePeriod.startPoll()
            XCTAssertFalse(GracePeriod.poll(GracePeriod.state()))
            try RCU.barrier()
            XCTAssertTrue(GracePeriod.poll(cookie), "the polled grace period did not complete by barrier")
            // Already complete: condSynchronize must not need to wait, and
            // must not fail.
            let started = GracePeriod.started.load(ordering: .relaxed)
            try GracePeriod.condSynchronize(cookie)
            XCTAssertEqual(GracePeriod.started.load(ordering: .relaxed), started,
                           "condSynchronize waited for a grace period although one had passed")
        }
    }
}
