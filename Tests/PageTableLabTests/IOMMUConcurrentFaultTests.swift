import Synchronization
import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// qi_submit_sync with several submitters in flight when the hardware
/// reports an error. Whoever polls first handles it; the error goes to the
/// submitter whose descriptor it hit; an aborted wait is resubmitted; and
/// every submitter returns. The hardware is stalled while each round is
/// posted, so that the ring order is the one the test names, and resumed
/// with everyone asleep, so that the order in which they wake is the
/// scheduler's: over the rounds, each submitter gets to look first.
///
/// The bug these guard against made a submitter wait forever (a test that
/// hangs under `timeout` is that failure): another submitter reclaimed its
/// finished wait slot before it saw it complete.
final class IOMMUConcurrentFaultTests: XCTestCase {
    static let rounds = 32
    static let good = InvalidationDescriptor.pasidCache(.global).encode()
    static let sid: UInt16 = 0x20
    static let deviceTLB = InvalidationDescriptor.pasidDeviceTLB(PASIDDeviceTLBInvalidation(
        sid: sid, pasid: 1, range: DeviceTLBRange(base: 0, sizeOrder: 52))).encode()

    /// Post `batches` in this ring order with fetching stalled, each
    /// submitter on its own thread, then resume the hardware and wait for
    /// every submitter. Returns each one's outcome.
    private func round(_ iommu: IntelIOMMU, _ batches: [[RawDescriptor]]) throws -> [Result<Void, QIError>] {
        let submitters = try postStalled(iommu, batches)
        iommu.faultInjection.resumeFetching()
        return submitters.map { $0.outcome() }
    }

    private func assertQuiet(_ iommu: IntelIOMMU, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(iommu.read(.fsts), 0, "an error left set for nobody", file: file, line: line)
        XCTAssertEqual(iommu.read(.iqh), iommu.read(.iqt), file: file, line: line)
        XCTAssertEqual(iommu.freeSlots, iommu.queueLength, "slots never given back", file: file, line: line)
    }

    /// Linux's lockup fixed by 3cf74230c139: a wait-only submission (a
    /// drain) posted before another, which finishes first and reclaims.
    func testAnEmptySubmissionCompletesBesideOthers() throws {
        try withIOMMU { _, iommu in
            for _ in 0..<Self.rounds {
                let results = try round(iommu, [[], [Self.good], []])
                for r in results { XCTAssertNoThrow(try r.get()) }
                assertQuiet(iommu)
            }
            let stats = iommu.counters.snapshot()
            XCTAssertEqual(stats.statusWrites, UInt64(3 * Self.rounds))
            XCTAssertEqual(stats.executedByType[6], UInt64(Self.rounds))
        }
    }

    /// A completes, K's device times out, B waits behind: whoever handles
    /// the ITE must abort K's wait only. A's finished wait and B's unfetched
    /// one are not K's business; K resubmits and everyone returns.
    func testATimeOutAbortsOnlyTheWaitItCovers() throws {
        try withIOMMU { _, iommu in
            _ = try iommu.attachDevice(sid: Self.sid, did: 1, ats: true)
            for _ in 0..<Self.rounds {
                iommu.faultInjection.injectITE()
                let results = try round(iommu, [[Self.good], [Self.deviceTLB], [Self.good]])
                for r in results { XCTAssertNoThrow(try r.get()) }
                assertQuiet(iommu)
            }
            let stats = iommu.counters.snapshot()
            let n = UInt64(Self.rounds)
            XCTAssertEqual(stats.iteRaised, n)
            XCTAssertEqual(stats.iteHandled, n)
            XCTAssertEqual(stats.waitsAborted, n)
            XCTAssertEqual(stats.qiRetries, n, "only K resubmitted")
            XCTAssertEqual(stats.qiSubmissions, 4 * n)
            XCTAssertEqual(stats.statusWrites, 3 * n)
        }
    }

    /// The injected IQE stops the hardware on B's second descriptor while A
    /// (done) and C (behind it) poll too: B gets the error, A and C complete.
    func testARefusedDescriptorIsReportedToItsOwnerWhoeverPollsFirst() throws {
        try withIOMMU { _, iommu in
            for _ in 0..<Self.rounds {
                iommu.faultInjection.injectIQE(skipping: 2)    // A's, B's first, then B's second
                let results = try round(iommu, [[Self.good], [Self.good, Self.good], [Self.good]])
                XCTAssertNoThrow(try results[0].get())
                XCTAssertThrowsError(try results[1].get()) {
                    guard case .invalidDescriptor(1, _, .reservedField, true, nil) = $0 as? QIError else {
                        return XCTFail("\($0)")
                    }
                }
                XCTAssertNoThrow(try results[2].get())
                assertQuiet(iommu)
            }
            let stats = iommu.counters.snapshot()
            XCTAssertEqual(stats.iqeRaised, UInt64(Self.rounds))
            XCTAssertEqual(stats.iqeHandled, UInt64(Self.rounds))
            XCTAssertEqual(stats.executedByType[6], UInt64(3 * Self.rounds), "the refused one never ran")
        }
    }

    /// An invalid completion from K's device, with A and C in flight: K
    /// hears of it, nobody else does, and ICE is clear afterwards.
    func testACompletionErrorIsReportedToItsOwnerAmongOthers() throws {
        try withIOMMU { _, iommu in
            _ = try iommu.attachDevice(sid: Self.sid, did: 1, ats: true)
            for _ in 0..<Self.rounds {
                iommu.faultInjection.injectICE()
                let results = try round(iommu, [[Self.good], [Self.good, Self.deviceTLB], [Self.good]])
                XCTAssertNoThrow(try results[0].get())
                XCTAssertThrowsError(try results[1].get()) {
                    XCTAssertEqual($0 as? QIError, .completionError(sid: Self.sid))
                }
                XCTAssertNoThrow(try results[2].get())
                assertQuiet(iommu)
            }
            let stats = iommu.counters.snapshot()
            XCTAssertEqual(stats.iceRaised, UInt64(Self.rounds))
            XCTAssertEqual(stats.iceHandled, UInt64(Self.rounds))
            XCTAssertEqual(stats.statusWrites, UInt64(3 * Self.rounds), "ICE aborts nothing")
        }
    }

    /// No stall, no chosen order: three submitters hammer the queue while
    /// time-outs and invalid completions are injected into whichever
    /// device-TLB invalidations come first. Every submission returns, every
    /// raised error is accounted for, and nothing is left held.
    func testFreeRunningSubmittersSurviveTimeOutsAndCompletionErrors() throws {
        try withIOMMU { _, iommu in
            _ = try iommu.attachDevice(sid: Self.sid, did: 1, ats: true)
            iommu.faultInjection.injectITE(count: 60)
            iommu.faultInjection.injectICE(count: 60)
            let perThread = 150
            let submitters = (0..<3).map { _ in
                Submitter(iommu, [Self.good, Self.deviceTLB], times: perThread)
            }
            let results = submitters.flatMap { $0.results() }
            XCTAssertEqual(results.count, 3 * perThread)

            var completionErrors = 0
            for r in results {
                switch r {
                case .success: break
                case .failure(.completionError(Self.sid)): completionErrors += 1
                case .failure(let e): XCTFail("\(e)")
                }
            }
            let stats = iommu.counters.snapshot()
            XCTAssertEqual(iommu.faultInjection.injected.ite, 60)
            XCTAssertEqual(stats.iteRaised, 60)
            XCTAssertEqual(stats.iteHandled, 60)
            XCTAssertEqual(stats.waitsAborted, 60)
            XCTAssertEqual(stats.qiRetries, 60, "each aborted wait resubmitted")
            XCTAssertEqual(stats.qiTimeouts, 0, "a present device is never given up on")
            XCTAssertGreaterThan(stats.iceRaised, 0)
            XCTAssertEqual(stats.iceHandled, stats.iceRaised)
            XCTAssertEqual(UInt64(completionErrors), stats.iceRaised, "an ICE raised and reported to nobody")
            XCTAssertEqual(stats.statusWrites + stats.waitsAborted, stats.qiSubmissions)
            assertQuiet(iommu)
        }
    }
}
