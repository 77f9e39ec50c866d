#if canImport(Glibc)
import Glibc
#endif
internal import CSupport
import Histogram
import Synchronization

/// The driver's side of queued invalidation, struct q_inval: the ring and
/// the per-slot status words in NUMA memory, the free-slot bookkeeping
/// under q_lock, and qi_submit_sync.
///
/// Nothing on the submit path allocates: the deferred kernel page-table
/// free calls it from a work item that must not depend on memory.
final class QueuedInvalidation: @unchecked Sendable {
    /// desc_status values (QI_FREE, QI_IN_USE, QI_DONE, QI_ABORT).
    ///
    /// DONE (written by the hardware into a wait's slot) and ABORT (written
    /// by whoever handles an ITE) are news for the submitter that owns the
    /// wait, and for nobody else: only that submitter turns its slots back
    /// to FREE, and only FREE slots are reclaimed. Reclaiming DONE or ABORT
    /// slots, as Linux did before commit 3cf74230c139 ("iommu/vt-d: Fix
    /// potential lockup if qi_submit_sync called with 0 count"), lets one
    /// submitter free another's finished wait before its owner saw it: the
    /// owner then polls a FREE slot forever.
    enum SlotStatus: UInt32 {
        case free = 0, inUse = 1, done = 2, abort = 3
    }

    struct State {
        var freeHead = 0
        var freeTail = 0
        var freeCount: Int
        /// Per slot, the ITESID of the time-out that aborted it: tells an
        /// aborted submitter whose device did not answer (robust driver).
        var abortedBy: [UInt16]
        /// Per slot: holds the wait descriptor a submitter polls. An ITE
        /// aborts pending waits only; the descriptors before them ran.
        var isWait: [Bool]
        /// Per slot: the first slot of a submission whose owner still polls.
        /// Lab bookkeeping for the Linux driver's lockup detector.
        var isFirst: [Bool]
        /// Per slot: posted by a submitter that has not yet let it go
        /// (turned it back to FREE). Lab bookkeeping, as `isFirst`.
        var owned: [Bool]
        /// Per slot: a wait the unit aborted and no ITE handling marked;
        /// its owner would poll it forever (Linux driver).
        var lostWait: [Bool]
        /// Per slot: its owner locked up and will never let it go (Linux
        /// driver): reclaim stops here for good.
        var abandoned: [Bool]
        /// Set when a Linux-driver CPU spins in qi_check_fault holding
        /// q_lock for ever: nobody else can take the lock again.
        var lockHeldForever = false

        init(entries: Int) {
            freeCount = entries
            abortedBy = [UInt16](repeating: 0, count: entries)
            isWait = [Bool](repeating: false, count: entries)
            isFirst = [Bool](repeating: false, count: entries)
            owned = [Bool](repeating: false, count: entries)
            lostWait = [Bool](repeating: false, count: entries)
            abandoned = [Bool](repeating: false, count: entries)
        }
    }

    let hardware: InvalidationQueueHardware
    let width: DescriptorWidth
    /// QI_LENGTH: slots in the ring.
    let entries: Int
    let ring: Page
    let statusPage: Page
    /// Whose qi_submit_sync runs: the lab's robust one or Linux's.
    let driver: QIDriver
    let counters: IOMMUCounters
    private let ringBase: UnsafeMutableRawPointer
    private let statusBase: UnsafeMutablePointer<UInt32>
    private let queueSizeOrder: Int
    let isDevicePresent: @Sendable (UInt16) -> Bool
    /// q_lock and what it protects.
    let state: LabMutex<State>
    let waitMicroseconds = LabMutex(Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three))

    /// Allocate the ring (2^queueSizeOrder pages: IQA.QS) and the status
    /// words on `node`, zeroed, as dmar_enable_qi does.
    init(hardware: InvalidationQueueHardware, width: DescriptorWidth, queueSizeOrder: Int, node: NodePreference,
         driver: QIDriver, counters: IOMMUCounters,
         isDevicePresent: @escaping @Sendable (UInt16) -> Bool) throws(PageAllocError) {
        let allocator = hardware.allocator
        self.hardware = hardware
        self.width = width
        self.queueSizeOrder = queueSizeOrder
        self.entries = 1 << (queueSizeOrder + 8 - width.rawValue)
        self.driver = driver
        self.counters = counters
        self.isDevicePresent = isDevicePresent
        ring = try allocator.alloc(order: queueSizeOrder, node: node, zero: true)
        let statusBytes = entries * MemoryLayout<UInt32>.stride
        let statusOrder = max(0, Int.bitWidth - (statusBytes - 1).leadingZeroBitCount - 12)
        do {
            statusPage = try allocator.alloc(order: statusOrder, node: node, zero: true)
        } catch {
            try? allocator.free(ring)
            throw error
        }
        ringBase = allocator.address(of: ring)
        statusBase = allocator.address(of: statusPage).bindMemory(to: UInt32.self, capacity: entries)
        state = LabMutex(State(entries: entries))
    }

    /// Give the ring and the status words back (after disable). Not into an
    /// allocator that was unloaded meanwhile: its memmap is gone.
    func release() {
        guard PageAllocator.current === hardware.allocator else { return }
        try? hardware.allocator.free(ring)
        try? hardware.allocator.free(statusPage)
    }

    var shift: Int { width.shift }
    private var ringPhysical: UInt64 { UInt64(ring.pfn) << 12 }
    private func statusPhysical(_ slot: Int) -> UInt64 { UInt64(statusPage.pfn) << 12 + UInt64(slot * 4) }
    func status(_ slot: Int) -> UInt32 { ptlab_u32_load_acquire(statusBase + slot) }
    func setStatus(_ slot: Int, _ s: SlotStatus) { ptlab_u32_store_release(statusBase + slot, s.rawValue) }

    func writeSlot(_ slot: Int, _ d: RawDescriptor) {
        let p = ringBase + slot << shift
        p.storeBytes(of: d.qw0, toByteOffset: 0, as: UInt64.self)
        p.storeBytes(of: d.qw1, toByteOffset: 8, as: UInt64.self)
        if width == .bits256 {
            p.storeBytes(of: d.qw2, toByteOffset: 16, as: UInt64.self)
            p.storeBytes(of: d.qw3, toByteOffset: 24, as: UInt64.self)
        }
    }

    /// Copy ring slot `from` over ring slot `to`, all of it: how Linux's
    /// qi_check_fault replaces a refused descriptor with the submission's
    /// own wait (a memcpy of 1 << shift bytes).
    func copySlot(from: Int, to: Int) {
        (ringBase + to << shift).copyMemory(from: ringBase + from << shift, byteCount: 1 << shift)
    }

    /// The ring index the hardware will fetch next.
    var hardwareHead: Int { Int(hardware.read(.iqh) >> UInt64(shift)) }

    /// Has the hardware fetched (and so executed or aborted) the wait of the
    /// submission at `index` with `count` descriptors? IQH cannot have gone
    /// round the ring past it: its slots stay owned until it is let go.
    func hardwareHasPassed(index: Int, count: Int) -> Bool {
        (hardwareHead - index + entries) % entries > count
    }

    // MARK: - enable / disable (dmar_enable_qi, dmar_disable_qi)

    func enable() {
        guard hardware.read(.gsts) & DMARRegister.queuedInvalidationEnable == 0 else { return }
        state.withLock { st in
            st = State(entries: entries)
            for slot in 0..<entries { setStatus(slot, .free) }
        }
        try? hardware.write(.iqt, 0)
        try? hardware.write(.iqa, ringPhysical | (width == .bits256 ? DMARRegister.iqaDescriptorWidth : 0)
                                 | UInt64(queueSizeOrder))
        let gcmd = hardware.read(.gcmd)
        try? hardware.write(.gcmd, gcmd | DMARRegister.queuedInvalidationEnable)
        hardware.progress.wait { hardware.read(.gsts) & DMARRegister.queuedInvalidationEnable != 0 }
    }

    /// Give the hardware the chance to drain (IQH reaching IQT) before
    /// turning it off; a queue stopped on an error is turned off anyway.
    /// Returns the slots left unprocessed.
    @discardableResult
    func disable() -> Int {
        guard hardware.read(.gsts) & DMARRegister.queuedInvalidationEnable != 0 else { return 0 }
        let stopping = DMARRegister.invalidationQueueError | DMARRegister.invalidationTimeoutError
        hardware.progress.wait {
            hardware.read(.iqh) == hardware.read(.iqt) || hardware.read(.fsts) & stopping != 0
        }
        let left = (Int(hardware.read(.iqt) >> UInt64(shift)) - Int(hardware.read(.iqh) >> UInt64(shift)) + entries)
            % entries
        try? hardware.write(.gcmd, hardware.read(.gcmd) & ~DMARRegister.queuedInvalidationEnable)
        hardware.progress.wait { hardware.read(.gsts) & DMARRegister.queuedInvalidationEnable == 0 }
        return left
    }

    // MARK: - qi_submit_sync

    /// Submit `descriptors` and a wait descriptor whose status word belongs
    /// to this submission, then wait for that status while handling queue
    /// errors, in the manner of `driver`. A submission whose wait an ITE
    /// aborted is resubmitted (-EAGAIN) for as long as that happens, as in
    /// Linux: only a device that is gone ends it (-ETIMEDOUT). Injected
    /// time-outs are finite and a present device answers, so this ends.
    func submitSync(_ descriptors: UnsafeBufferPointer<RawDescriptor>) throws(QIError) {
        let count = descriptors.count
        guard count + 2 <= entries else { throw .tooManyDescriptors(count: count, max: entries - 2) }
        guard hardware.read(.gsts) & DMARRegister.queuedInvalidationEnable != 0 else { throw .queueDisabled }
        let start = monotonicNanoseconds()
        defer {
            let us = (monotonicNanoseconds() - start) / 1000
            waitMicroseconds.withLock { _ = $0.record(min(us, 60_000_000)) }
        }
        var attempts = 0
        while true {
            let index: Int, waitIndex: Int
            do {
                (index, waitIndex) = try post(descriptors)
            } catch {
                if case .lockup(let l) = error { lockedUp(l) }
                throw error
            }
            counters.qiSubmissions.add(1, ordering: .relaxed)
            counters.qiDescriptors.add(UInt64(count), ordering: .relaxed)
            let outcome = switch driver {
            case .robust: robustWaitForCompletion(index: index, waitIndex: waitIndex, count: count, attempts: attempts)
            case .linux: linuxWaitForCompletion(index: index, waitIndex: waitIndex, count: count, attempts: attempts)
            }
            switch outcome {
            case .done:
                return
            case .failed(let error):
                if case .lockup(let l) = error { lockedUp(l) }
                throw error
            case .again:
                attempts += 1
                counters.qiRetries.add(1, ordering: .relaxed)
            }
        }
    }

    /// The first lockup a submitter met (Linux driver), for reports.
    let firstLockup = LabMutex<QILockup?>(nil)

    private func lockedUp(_ lockup: QILockup) {
        counters.qiLockups.add(1, ordering: .relaxed)
        firstLockup.withLock { if $0 == nil { $0 = lockup } }
    }

    enum Outcome {
        case done
        /// -EAGAIN: the wait was aborted by a time-out; post it again.
        case again
        case failed(QIError)
    }

    /// Wait for count + 2 free slots (the descriptors, the wait, and the gap
    /// that keeps IQT from catching IQH), write them and a wait that is
    /// Linux's (status write of QI_DONE, neither IF nor FN), and ring the
    /// doorbell. The Linux driver can find that no slot will ever come back
    /// (a lockup it already hit): that is an error, not a hang.
    private func post(_ descriptors: UnsafeBufferPointer<RawDescriptor>) throws(QIError) -> (index: Int, waitIndex: Int) {
        let count = descriptors.count
        var waited = false
        while true {
            let key = hardware.progress.prepareWait()
            let slots: Result<(Int, Int), QIError>? = state.withLock { st in
                if st.lockHeldForever { return .failure(.lockup(.queueLockHeld)) }
                guard st.freeCount >= count + 2 else {
                    if driver == .linux, let pinned = linuxPinnedTail(st) { return .failure(.lockup(pinned)) }
                    return nil
                }
                let index = st.freeHead
                let waitIndex = (index + count) % entries
                // The count + 2 rule keeps IQT from reaching IQH only while
                // software's free count matches what the unit has fetched.
                let pending = (index - hardwareHead + entries) % entries
                if count + 2 > entries - pending { counters.ringOverruns.add(1, ordering: .relaxed) }
                for i in 0..<count {
                    let slot = (index + i) % entries
                    writeSlot(slot, descriptors[i])
                    setStatus(slot, .inUse)
                    st.isWait[slot] = false
                    st.isFirst[slot] = false
                    st.owned[slot] = true
                    st.lostWait[slot] = false
                }
                setStatus(waitIndex, .inUse)
                st.isWait[waitIndex] = true
                st.isFirst[waitIndex] = false
                st.owned[waitIndex] = true
                st.lostWait[waitIndex] = false
                st.isFirst[index] = true
                let wait = InvalidationWait(statusWrite: .init(address: statusPhysical(waitIndex), data: SlotStatus.done.rawValue))
                writeSlot(waitIndex, InvalidationDescriptor.wait(wait).encode())
                st.freeHead = (st.freeHead + count + 1) % entries
                st.freeCount -= count + 1
                try? hardware.write(.iqt, UInt64(st.freeHead << shift))
                return .success((index, waitIndex))
            }
            switch slots {
            case .success(let s): return s
            case .failure(let e): throw e
            case nil: break
            }
            if !waited {
                waited = true
                counters.queueFull.add(1, ordering: .relaxed)
            }
            hardware.progress.wait(key)
        }
    }

    /// Let a finished submission's slots go: FREE each (its wait too, as
    /// Linux does since 3cf74230c139) and reclaim what that freed.
    func release(_ st: inout State, index: Int, count: Int) {
        for i in 0...count {
            let slot = (index + i) % entries
            setStatus(slot, .free)
            st.owned[slot] = false
            st.isFirst[slot] = false
        }
        reclaim(&st)
    }

    /// reclaim_free_desc: return the slots their owners released, oldest
    /// first, up to the first one still owned (FREE is also what unposted
    /// slots hold, hence the stop at the free head).
    func reclaim(_ st: inout State) {
        while st.freeTail != st.freeHead, status(st.freeTail) == SlotStatus.free.rawValue {
            st.freeTail = (st.freeTail + 1) % entries
            st.freeCount += 1
        }
    }

    /// Free slots now (for tests and reports).
    var freeSlots: Int { state.withLock { $0.freeCount } }
}
