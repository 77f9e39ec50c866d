import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// qi_driver=linux: Linux's qi_submit_sync and qi_check_fault. Where every
/// submission is one descriptor and its wait (two slots: waits on odd
/// slots), Linux's IQE and ITE handling works. A batch breaks the two
/// assumptions it rests on — the refused descriptor is the submission's
/// first, and waits sit on odd slots — and then a wait is hung, lost or
/// misdirected. Each case here is deterministic: the hardware is stalled
/// while the ring is laid out. Linux would spin for ever in each lockup;
/// the lab's copy of the driver returns `QIError.lockup` instead, so no
/// test here can hang. The robust driver survives every sequence.
final class IOMMULinuxDriverTests: XCTestCase {
    static let good = InvalidationDescriptor.pasidCache(.global).encode()
    static let sid: UInt16 = 0x20
    static let deviceTLB = InvalidationDescriptor.pasidDeviceTLB(PASIDDeviceTLBInvalidation(
        sid: sid, pasid: 1, range: DeviceTLBRange(base: 0, sizeOrder: 52))).encode()

    private func parameters(_ driver: QIDriver) -> IntelIOMMU.Parameters {
        var p = IntelIOMMU.Parameters()
        p.driver = driver
        return p
    }

    /// One descriptor per submission: IQE on its (first) slot is replaced
    /// by the wait's copy and -EINVAL; an ITE aborts a wait on an odd slot,
    /// which the walk marks, and the submission is posted again; ICE is
    /// cleared and reported to nobody.
    func testOneDescriptorSubmissionsAreHandledAsLinuxIntends() throws {
        try withIOMMU(parameters(.linux)) { allocator, iommu in
            _ = try iommu.attachDevice(sid: Self.sid, did: 1, ats: true)
            iommu.faultInjection.injectIQE()
            XCTAssertThrowsError(try iommu.qiSubmitSync([Self.good])) {
                guard case .invalidDescriptor(0, 0, .reservedField, true, _) = $0 as? QIError else { return XCTFail("\($0)") }
            }
            XCTAssertEqual(readRingSlot(iommu, allocator, 0), readRingSlot(iommu, allocator, 1), "the wait's copy")
            for _ in 0..<3 {
                iommu.faultInjection.injectITE()
                try iommu.qiSubmitSync([Self.deviceTLB])
            }
            iommu.faultInjection.injectICE()
            try iommu.qiSubmitSync([Self.deviceTLB])      // ICE is reported to nobody
            let s = iommu.counters.snapshot()
            XCTAssertEqual([s.qiRetries, s.iteHandled, s.qiLockups, s.misdirectedAborts], [3, 3, 0, 0])
            XCTAssertEqual(iommu.read(.fsts) & ~DMARRegister.invalidationCompletionError, 0)
            XCTAssertEqual(iommu.freeSlots, iommu.queueLength)
        }
    }

    /// Hang 1: the refused descriptor is the second of a batch. IQH stops on
    /// it; qi_check_fault replaces a descriptor only when IQH is the
    /// submission's first slot, so nobody clears IQE and the unit never
    /// fetches again. The robust driver finds it anywhere in its batch.
    func testARefusedDescriptorInsideABatchStopsTheQueueForGood() throws {
        try withIOMMU(parameters(.linux)) { _, iommu in
            iommu.faultInjection.injectIQE(skipping: 1)
            XCTAssertThrowsError(try iommu.qiSubmitSync([Self.good, Self.good])) {
                XCTAssertEqual($0 as? QIError, .lockup(.refusedDescriptorInsideBatch(ringIndex: 1)))
            }
            XCTAssertNotEqual(iommu.read(.fsts) & DMARRegister.invalidationQueueError, 0, "IQE never cleared")
            XCTAssertThrowsError(try iommu.qiSubmitSync([Self.good]), "everyone after it waits too") {
                XCTAssertEqual($0 as? QIError, .lockup(.refusedDescriptorInsideBatch(ringIndex: 1)))
            }
            XCTAssertEqual(iommu.lockup, .refusedDescriptorInsideBatch(ringIndex: 1))
            try iommu.write(.fsts, DMARRegister.invalidationQueueError)     // let shutdown drain
        }
        try withIOMMU(parameters(.robust)) { _, iommu in
            iommu.faultInjection.injectIQE(skipping: 1)
            XCTAssertThrowsError(try iommu.qiSubmitSync([Self.good, Self.good])) {
                guard case .invalidDescriptor(1, 1, _, true, _) = $0 as? QIError else { return XCTFail("\($0)") }
            }
            try iommu.qiSubmitSync([Self.good])
        }
    }

    /// Hang 2: a device-TLB time-out in a batch of two leaves IQT odd. The
    /// walk starts at (IQH - 1) | 1 and steps by two towards IQT - 1, an
    /// even slot it never reaches: the CPU spins there holding q_lock, and
    /// every other submitter waits for the lock.
    func testATimeOutWithAnOddTailMakesTheAbortWalkEndless() throws {
        try withIOMMU(parameters(.linux)) { _, iommu in
            _ = try iommu.attachDevice(sid: Self.sid, did: 1, ats: true)
            iommu.faultInjection.injectITE()
            XCTAssertThrowsError(try iommu.qiSubmitSync([Self.deviceTLB, Self.good])) {
                XCTAssertEqual($0 as? QIError, .lockup(.abortWalkNeverEnds(from: 3, tail: 2)))
            }
            XCTAssertThrowsError(try iommu.qiSubmitSync([Self.good])) {
                XCTAssertEqual($0 as? QIError, .lockup(.queueLockHeld))
            }
            XCTAssertEqual(iommu.lockup, .abortWalkNeverEnds(from: 3, tail: 2), "the first lockup says where")
        }
        try withIOMMU(parameters(.robust)) { _, iommu in
            _ = try iommu.attachDevice(sid: Self.sid, did: 1, ats: true)
            iommu.faultInjection.injectITE()
            try iommu.qiSubmitSync([Self.deviceTLB, Self.good])
            try iommu.qiSubmitSync([Self.good])
            XCTAssertEqual(iommu.counters.snapshot().qiRetries, 1)
        }
    }

    /// Lost and misdirected: S1 [good] completes; then, stalled, S2
    /// [device-TLB, good] (wait on even slot 4) and S3 [] (wait on slot 5),
    /// IQT even. S2's device times out, the unit aborts S2's wait. The walk
    /// starts at (5 - 1) | 1 = 5: it marks S3's wait, which the unit has not
    /// even fetched (misdirected: S3 posts again while its first wait is
    /// still to run), and never visits slot 4: S2 polls for ever. Its slots
    /// are never let go, so the queue fills behind them.
    func testATimeOutLosesAWaitOnAnEvenSlotAndAbortsAnotherSubmissions() throws {
        try withIOMMU(parameters(.linux)) { _, iommu in
            _ = try iommu.attachDevice(sid: Self.sid, did: 1, ats: true)
            try iommu.qiSubmitSync([Self.good])
            // The unit stalls as it raises ITE, so the walk meets S3's wait
            // before the unit has run it (in hardware a race the walk wins).
            iommu.faultInjection.injectITE(thenStall: true)
            let submitters = try postStalled(iommu, [[Self.deviceTLB, Self.good], []])
            iommu.faultInjection.resumeFetching()
            XCTAssertThrowsError(try submitters[0].outcome().get()) {
                XCTAssertEqual($0 as? QIError, .lockup(.lostWait(ringIndex: 4)))
            }
            try waitUntil("S3 to post again after its abort") { iommu.counters.snapshot().qiRetries == 1 }
            iommu.faultInjection.resumeFetching()
            XCTAssertNoThrow(try submitters[1].outcome().get())
            let s = iommu.counters.snapshot()
            XCTAssertEqual(s.misdirectedAborts, 1, "S3's unfetched wait marked ABORT")
            XCTAssertEqual(s.qiRetries, 1, "S3 posted again")
            let many = [RawDescriptor](repeating: Self.good, count: iommu.freeSlots - 1)
            XCTAssertThrowsError(try iommu.qiSubmitSync(many)) {
                XCTAssertEqual($0 as? QIError, .lockup(.queueFullForever(pinnedSlot: 2)))
            }
        }
        try withIOMMU(parameters(.robust)) { _, iommu in
            _ = try iommu.attachDevice(sid: Self.sid, did: 1, ats: true)
            try iommu.qiSubmitSync([Self.good])
            iommu.faultInjection.injectITE()
            let submitters = try postStalled(iommu, [[Self.deviceTLB, Self.good], []])
            iommu.faultInjection.resumeFetching()
            for s in submitters { XCTAssertNoThrow(try s.outcome().get()) }
            XCTAssertEqual(iommu.counters.snapshot().qiRetries, 1, "only S2 posted again")
            XCTAssertEqual(iommu.freeSlots, iommu.queueLength)
        }
    }

    /// Misdirected: A's only descriptor is refused; Linux copies A's wait
    /// over it, clears IQE and lets A's slots go at once, before the unit
    /// has fetched them again. A submission large enough to wrap the ring
    /// takes them back: its wait lands on slot 0, where the unit resumes,
    /// and IQT lands next to it. The unit runs that wait and stops: B
    /// returns with none of its 254 descriptors run. (Wrapping the ring in
    /// that window takes a big submission or a crowd of CPUs; the robust
    /// driver lets slots go only once the unit has fetched past their wait.)
    func testSlotsLetGoBeforeTheUnitFetchedThemMisdirectALaterWait() throws {
        try withIOMMU(parameters(.linux)) { _, iommu in
            iommu.faultInjection.injectIQE(thenStall: true)
            XCTAssertThrowsError(try iommu.qiSubmitSync([Self.good]))
            XCTAssertEqual(iommu.freeSlots, iommu.queueLength, "A's slots let go while the unit is stalled")
            let b = [RawDescriptor](repeating: Self.good, count: iommu.queueLength - 2)
            let submitter = Submitter(iommu, b)
            try waitUntil("B to take its slots") { iommu.freeSlots == 1 }
            iommu.faultInjection.resumeFetching()
            XCTAssertNoThrow(try submitter.outcome().get(), "B believes its flush done")
            let s = iommu.counters.snapshot()
            XCTAssertEqual(s.ringOverruns, 1)
            XCTAssertEqual(s.executedByType[6], 0, "none of B's descriptors ran")
        }
        try withIOMMU(parameters(.robust)) { _, iommu in
            iommu.faultInjection.injectIQE(thenStall: true)
            let a = Submitter(iommu, [Self.good])
            try waitUntil("the unit to stall on A's IQE") { iommu.faultInjection.isStalled }
            iommu.faultInjection.resumeFetching()
            XCTAssertThrowsError(try a.outcome().get())
            try iommu.qiSubmitSync([RawDescriptor](repeating: Self.good, count: iommu.queueLength - 2))
            let s = iommu.counters.snapshot()
            XCTAssertEqual(s.ringOverruns, 0)
            XCTAssertEqual(s.executedByType[6], UInt64(iommu.queueLength - 2))
        }
    }
}
