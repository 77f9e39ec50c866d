/// Linux's qi_submit_sync polling and qi_check_fault, as in
/// drivers/iommu/intel/dmar.c (read in a 6.17-era tree; the copies at hand
/// stop short of 6.19, whose versions are taken to be the same), selected
/// with qi_driver=linux. What it
/// does is Linux's, step for step, under q_lock:
///
///  - a wait already marked ABORT is -EAGAIN;
///  - IQE: if IQH is this submission's *first* slot, copy the submission's
///    wait over the refused descriptor, clear IQE, -EINVAL; else nothing;
///  - ITE: read the time-out's SID, clear ITE, then walk back from
///    (IQH - 1) | 1 two slots at a time until IQT - 1, marking every IN_USE
///    slot ABORT; -ETIMEDOUT if the device is gone, -EAGAIN if this wait is
///    now ABORT;
///  - ICE: clear it (no error for anyone).
///
/// and on the way out every slot of the submission goes back to FREE,
/// whatever happened. Linux spins between polls with interrupts off; where
/// that spin could never end, the lab says so instead (`QILockup`), through
/// bookkeeping Linux does not have: which slots are a submission's first,
/// which waits the unit aborted. That bookkeeping only observes: it never
/// changes what the driver does to the queue.
extension QueuedInvalidation {
    /// How long the watchdog lets a pending wait see no event at all before
    /// calling it a lockup the detectors did not name. Generous: every
    /// lockup the lab knows is found at once by a detector.
    static let linuxWatchdogNanoseconds: UInt64 = 10_000_000_000

    private enum Poll {
        case spin
        case finished(Outcome)
    }

    func linuxWaitForCompletion(index: Int, waitIndex: Int, count: Int, attempts: Int) -> Outcome {
        while true {
            let key = hardware.progress.prepareWait()
            let poll: Poll = state.withLock { st in
                if st.lockHeldForever { return .finished(abandon(&st, index, count, .queueLockHeld)) }
                if status(waitIndex) == SlotStatus.done.rawValue {
                    if !hardwareHasPassed(index: index, count: count) {
                        // A status written by something other than this
                        // wait: Linux takes it as done all the same.
                        counters.misdirectedCompletions.add(1, ordering: .relaxed)
                    }
                    release(&st, index: index, count: count)
                    return .finished(.done)
                }
                if st.lostWait[waitIndex] {
                    return .finished(abandon(&st, index, count, .lostWait(ringIndex: waitIndex)))
                }
                switch qiCheckFault(&st, index: index, waitIndex: waitIndex, attempts: attempts) {
                case .none:
                    if let stuck = refusedInsideBatch(st) { return .finished(abandon(&st, index, count, stuck)) }
                    return .spin
                case .some(.failed(.lockup(let l))):
                    return .finished(abandon(&st, index, count, l))
                case .some(let rc):
                    release(&st, index: index, count: count)
                    return .finished(rc)
                }
            }
            switch poll {
            case .finished(let outcome):
                hardware.progress.signal()
                return outcome
            case .spin:
                guard hardware.progress.wait(key, timeoutNanoseconds: Self.linuxWatchdogNanoseconds) else {
                    let lockup = QILockup.noProgress(seconds: Int(Self.linuxWatchdogNanoseconds / 1_000_000_000))
                    return state.withLock { abandon(&$0, index, count, lockup) }
                }
            }
        }
    }

    /// qi_check_fault. nil: nothing for this submission (keep polling).
    private func qiCheckFault(_ st: inout State, index: Int, waitIndex: Int, attempts: Int) -> Outcome? {
        if status(waitIndex) == SlotStatus.abort.rawValue { return .again }
        let fault = hardware.read(.fsts)
        if fault & DMARRegister.invalidationQueueError != 0 {
            let head = hardwareHead
            if head == index {
                let record = hardware.errorRecord
                copySlot(from: waitIndex, to: head)
                try? hardware.write(.fsts, DMARRegister.invalidationQueueError)
                counters.iqeHandled.add(1, ordering: .relaxed)
                return .failed(.invalidDescriptor(position: 0, ringIndex: head, reason: record.iqeReason,
                                                  injected: record.iqeInjected, decodeError: record.iqeDecodeError))
            }
        }
        if fault & DMARRegister.invalidationTimeoutError != 0 {
            let from = ((hardwareHead - 1 + entries) % entries) | 1
            let tail = (Int(hardware.read(.iqt) >> UInt64(shift)) - 1 + entries) % entries
            let record = hardware.errorRecord
            let sid = UInt16(truncatingIfNeeded: hardware.read(.iqercd) >> 32)
            try? hardware.write(.fsts, DMARRegister.invalidationTimeoutError)
            counters.iteHandled.add(1, ordering: .relaxed)
            guard walkAbortingWaits(&st, from: from, tail: tail, aborted: record.iteAbortedWait) else {
                let lockup = QILockup.abortWalkNeverEnds(from: from, tail: tail)
                st.lockHeldForever = true
                return .failed(.lockup(lockup))
            }
            if let w = record.iteAbortedWait, status(w) == SlotStatus.inUse.rawValue { st.lostWait[w] = true }
            if sid != 0, !isDevicePresent(sid) {
                counters.qiTimeouts.add(1, ordering: .relaxed)
                return .failed(.deviceTLBTimeout(sid: sid, attempts: attempts))
            }
            if status(waitIndex) == SlotStatus.abort.rawValue { return .again }
        }
        if fault & DMARRegister.invalidationCompletionError != 0 {
            try? hardware.write(.fsts, DMARRegister.invalidationCompletionError)
            counters.iceHandled.add(1, ordering: .relaxed)
        }
        return nil
    }

    /// Linux's do { mark IN_USE as ABORT; head -= 2 } while (head != tail).
    /// False when it would never end: it steps by two, so after entries / 2
    /// steps it is back where it started without having met `tail`. Marks
    /// on waits the unit did not abort are counted as misdirected.
    private func walkAbortingWaits(_ st: inout State, from: Int, tail: Int, aborted: Int?) -> Bool {
        var slot = from
        for _ in 0..<(entries / 2) {
            if status(slot) == SlotStatus.inUse.rawValue {
                setStatus(slot, .abort)
                if st.isWait[slot], slot != aborted { counters.misdirectedAborts.add(1, ordering: .relaxed) }
            }
            slot = (slot - 2 + entries) % entries
            if slot == tail { return true }
        }
        return false
    }

    /// An IQE no poller will ever clear: the unit stopped on a slot that is
    /// not the first of a submission still being polled.
    private func refusedInsideBatch(_ st: State) -> QILockup? {
        guard hardware.read(.fsts) & DMARRegister.invalidationQueueError != 0 else { return nil }
        let head = hardwareHead
        let record = hardware.errorRecord
        guard record.iqeReason != .invalidTail, record.iqeReason != .tailMisaligned,
              !st.isFirst[head] else { return nil }
        return .refusedDescriptorInsideBatch(ringIndex: head)
    }

    /// The submitter stops here for good, as its CPU would in Linux: its
    /// slots are never let go.
    private func abandon(_ st: inout State, _ index: Int, _ count: Int, _ lockup: QILockup) -> Outcome {
        for i in 0...count {
            let slot = (index + i) % entries
            st.abandoned[slot] = true
            st.isFirst[slot] = false
        }
        return .failed(.lockup(lockup))
    }

    /// Queue full with the oldest slot held for good: by a submitter that
    /// locked up, or by a status (a late write from the unit) that no owner
    /// will turn back to FREE.
    func linuxPinnedTail(_ st: State) -> QILockup? {
        let slot = st.freeTail
        guard st.abandoned[slot] || (!st.owned[slot] && status(slot) != SlotStatus.free.rawValue) else { return nil }
        return .queueFullForever(pinnedSlot: slot)
    }
}
