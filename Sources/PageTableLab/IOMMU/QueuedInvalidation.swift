#if canImport(Glibc)
import Glibc
#endif
import CSupport
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
        /// aborted submitter whose device did not answer.
        var abortedBy: [UInt16]
        /// Per slot: holds the wait descriptor a submitter polls. An ITE
        /// aborts pending waits only; the descriptors before them ran.
        var isWait: [Bool]

        init(entries: Int) {
            freeCount = entries
            abortedBy = [UInt16](repeating: 0, count: entries)
            isWait = [Bool](repeating: false, count: entries)
        }
    }

    let hardware: InvalidationQueueHardware
    let width: DescriptorWidth
    /// QI_LENGTH: slots in the ring.
    let entries: Int
    let ring: Page
    let statusPage: Page
    let maxRetries: Int
    private let counters: IOMMUCounters
    private let ringBase: UnsafeMutableRawPointer
    private let statusBase: UnsafeMutablePointer<UInt32>
    private let queueSizeOrder: Int
    private let isDevicePresent: @Sendable (UInt16) -> Bool
    /// q_lock and what it protects.
    private let state: LabMutex<State>
    let waitMicroseconds = LabMutex(Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three))

    /// Allocate the ring (2^queueSizeOrder pages: IQA.QS) and the status
    /// words on `node`, zeroed, as dmar_enable_qi does.
    init(hardware: InvalidationQueueHardware, width: DescriptorWidth, queueSizeOrder: Int, node: NodePreference,
         maxRetries: Int, counters: IOMMUCounters,
         isDevicePresent: @escaping @Sendable (UInt16) -> Bool) throws(PageAllocError) {
        let allocator = hardware.allocator
        self.hardware = hardware
        self.width = width
        self.queueSizeOrder = queueSizeOrder
        self.entries = 1 << (queueSizeOrder + 8 - width.rawValue)
        self.maxRetries = maxRetries
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

    private var shift: Int { width.shift }
    private var ringPhysical: UInt64 { UInt64(ring.pfn) << 12 }
    private func statusPhysical(_ slot: Int) -> UInt64 { UInt64(statusPage.pfn) << 12 + UInt64(slot * 4) }
    private func status(_ slot: Int) -> UInt32 { ptlab_u32_load_acquire(statusBase + slot) }
    private func setStatus(_ slot: Int, _ s: SlotStatus) { ptlab_u32_store_release(statusBase + slot, s.rawValue) }

    private func writeSlot(_ slot: Int, _ d: RawDescriptor) {
        let p = ringBase + slot << shift
        p.storeBytes(of: d.qw0, toByteOffset: 0, as: UInt64.self)
        p.storeBytes(of: d.qw1, toByteOffset: 8, as: UInt64.self)
        if width == .bits256 {
            p.storeBytes(of: d.qw2, toByteOffset: 16, as: UInt64.self)
            p.storeBytes(of: d.qw3, toByteOffset: 24, as: UInt64.self)
        }
    }

    /// What replaces a refused descriptor: a wait that writes nothing.
    private static let harmless = InvalidationDescriptor.wait(InvalidationWait()).encode()

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
    /// errors. A submission whose wait an ITE aborted is resubmitted
    /// (-EAGAIN), at most `maxRetries` times.
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
            let (index, waitIndex) = post(descriptors)
            counters.qiSubmissions.add(1, ordering: .relaxed)
            counters.qiDescriptors.add(UInt64(count), ordering: .relaxed)
            switch waitForCompletion(index: index, waitIndex: waitIndex, count: count, attempts: attempts) {
            case .done:
                return
            case .failed(let error):
                throw error
            case .again(let sid):
                attempts += 1
                counters.qiRetries.add(1, ordering: .relaxed)
                if attempts > maxRetries {
                    counters.qiTimeouts.add(1, ordering: .relaxed)
                    throw .deviceTLBTimeout(sid: sid, deviceGone: false, attempts: attempts - 1)
                }
            }
        }
    }

    /// Wait for count + 2 free slots (the descriptors, the wait, and the gap
    /// that keeps IQT from catching IQH), write them, and ring the doorbell.
    private func post(_ descriptors: UnsafeBufferPointer<RawDescriptor>) -> (index: Int, waitIndex: Int) {
        let count = descriptors.count
        var waited = false
        while true {
            let key = hardware.progress.prepareWait()
            let slots: (Int, Int)? = state.withLock { st in
                guard st.freeCount >= count + 2 else { return nil }
                let index = st.freeHead
                let waitIndex = (index + count) % entries
                for i in 0..<count {
                    writeSlot((index + i) % entries, descriptors[i])
                    setStatus((index + i) % entries, .inUse)
                    st.isWait[(index + i) % entries] = false
                }
                setStatus(waitIndex, .inUse)
                st.isWait[waitIndex] = true
                let wait = InvalidationWait(
                    statusWrite: .init(address: statusPhysical(waitIndex), data: SlotStatus.done.rawValue), fence: true)
                writeSlot(waitIndex, InvalidationDescriptor.wait(wait).encode())
                st.freeHead = (st.freeHead + count + 1) % entries
                st.freeCount -= count + 1
                try? hardware.write(.iqt, UInt64(st.freeHead << shift))
                return (index, waitIndex)
            }
            if let slots { return slots }
            if !waited {
                waited = true
                counters.queueFull.add(1, ordering: .relaxed)
            }
            hardware.progress.wait(key)
        }
    }

    private enum Outcome {
        case done
        case again(sid: UInt16)
        case failed(QIError)
    }

    /// Poll this submission's status word, checking faults under q_lock
    /// between polls. An error found on the way is held until the wait has
    /// resolved (done or aborted), so no slot is reclaimed while the
    /// hardware may still fetch it.
    ///
    /// The status is read before the faults: the hardware raises a fault of
    /// this submission (ICE) before it writes the wait's status, so a status
    /// seen resolved here guarantees the fault check after it sees that
    /// fault. Read the other way round, an ICE raised between the two reads
    /// would be missed and left set for nobody. A status resolved by the
    /// fault check itself is seen on the next round: the check's FSTS write
    /// signalled progress, so the wait below returns at once.
    private func waitForCompletion(index: Int, waitIndex: Int, count: Int, attempts: Int) -> Outcome {
        var latched: QIError?
        while true {
            let key = hardware.progress.prepareWait()
            let outcome: Outcome? = state.withLock { st in
                let s = status(waitIndex)
                checkFault(&st, index: index, waitIndex: waitIndex, count: count, latched: &latched)
                guard s == SlotStatus.done.rawValue || s == SlotStatus.abort.rawValue else { return nil }
                for i in 0...count { setStatus((index + i) % entries, .free) }
                reclaim(&st)
                if let latched { return .failed(latched) }
                if s == SlotStatus.done.rawValue { return .done }
                let sid = st.abortedBy[waitIndex]
                if sid != 0, !isDevicePresent(sid) {
                    counters.qiTimeouts.add(1, ordering: .relaxed)
                    return .failed(.deviceTLBTimeout(sid: sid, deviceGone: true, attempts: attempts))
                }
                return .again(sid: sid)
            }
            if let outcome {
                hardware.progress.signal()     // slots were reclaimed
                return outcome
            }
            hardware.progress.wait(key)
        }
    }

    /// qi_check_fault, under q_lock.
    private func checkFault(_ st: inout State, index: Int, waitIndex: Int, count: Int, latched: inout QIError?) {
        let fault = hardware.read(.fsts)
        if fault & DMARRegister.invalidationQueueError != 0 {
            // IQH stops on the refused descriptor; if it is ours, replace it.
            // (A bad tail is not a descriptor error: whoever wrote IQT fixes it.)
            let head = Int(hardware.read(.iqh) >> UInt64(shift))
            let position = (head - index + entries) % entries
            let record = hardware.errorRecord
            if position <= count, record.iqeReason != .invalidTail, record.iqeReason != .tailMisaligned {
                writeSlot(head, Self.harmless)
                if head == waitIndex { setStatus(waitIndex, .done) }   // our wait will never write now
                if latched == nil {
                    latched = .invalidDescriptor(position: position, ringIndex: head, reason: record.iqeReason,
                                                 injected: record.iqeInjected, decodeError: record.iqeDecodeError)
                }
                counters.iqeHandled.add(1, ordering: .relaxed)
                try? hardware.write(.fsts, DMARRegister.invalidationQueueError)
            }
        }
        if fault & DMARRegister.invalidationTimeoutError != 0 {
            // The hardware aborted the waits it fetched after the time-out:
            // every wait it has passed that it did not complete, whoever's
            // it is (its owner resubmits). Only waits: marking another
            // submission's descriptors would tell nobody anything.
            let head = Int(hardware.read(.iqh) >> UInt64(shift))
            let sid = UInt16(truncatingIfNeeded: hardware.read(.iqercd) >> 32)
            var slot = st.freeTail
            while slot != head {
                if st.isWait[slot], status(slot) == SlotStatus.inUse.rawValue {
                    setStatus(slot, .abort)
                    st.abortedBy[slot] = sid
                }
                slot = (slot + 1) % entries
            }
            counters.iteHandled.add(1, ordering: .relaxed)
            try? hardware.write(.fsts, DMARRegister.invalidationTimeoutError)
        }
        if fault & DMARRegister.invalidationCompletionError != 0 {
            let record = hardware.errorRecord
            if let i = record.iceIndex, (i - index + entries) % entries < count {
                if latched == nil { latched = .completionError(sid: record.iceSID) }
                counters.iceHandled.add(1, ordering: .relaxed)
                try? hardware.write(.fsts, DMARRegister.invalidationCompletionError)
            }
        }
    }

    /// reclaim_free_desc: return the slots their owners released, oldest
    /// first, up to the first one still owned (FREE is also what unposted
    /// slots hold, hence the stop at the free head).
    private func reclaim(_ st: inout State) {
        while st.freeTail != st.freeHead, status(st.freeTail) == SlotStatus.free.rawValue {
            st.freeTail = (st.freeTail + 1) % entries
            st.freeCount += 1
        }
    }

    /// Free slots now (for tests and reports).
    var freeSlots: Int { state.withLock { $0.freeCount } }
}
