/// The lab's own qi_submit_sync polling (qi_driver=robust, the default):
/// Linux's protocol, with its fault handling made safe for submissions that
/// carry batches and for several submitters in flight. Where Linux's
/// qi_check_fault looks only at the submission's first slot (IQE) and at
/// odd slots (ITE), this one finds the refused descriptor anywhere in the
/// submission and the aborted waits wherever they sit.
extension QueuedInvalidation {
    /// Poll this submission's status word, checking faults under q_lock
    /// between polls. An error found on the way is held until the wait has
    /// resolved and the unit has fetched past it, so no slot is let go while
    /// the hardware may still fetch it: a refused descriptor's replacement
    /// is a copy of this wait, which writes the same status early.
    ///
    /// The status is read before the faults: the hardware raises a fault of
    /// this submission (ICE) before it writes the wait's status, so a status
    /// seen resolved here guarantees the fault check after it sees that
    /// fault. Read the other way round, an ICE raised between the two reads
    /// would be missed and left set for nobody. A status resolved by the
    /// fault check itself is seen on the next round: the check's FSTS write
    /// signalled progress, so the wait below returns at once.
    func robustWaitForCompletion(index: Int, waitIndex: Int, count: Int, attempts: Int) -> Outcome {
        var latched: QIError?
        while true {
            let key = hardware.progress.prepareWait()
            let outcome: Outcome? = state.withLock { st in
                let s = status(waitIndex)
                robustCheckFault(&st, index: index, waitIndex: waitIndex, count: count, latched: &latched)
                guard s == SlotStatus.done.rawValue || s == SlotStatus.abort.rawValue,
                      hardwareHasPassed(index: index, count: count) else { return nil }
                release(&st, index: index, count: count)
                if let latched { return .failed(latched) }
                if s == SlotStatus.done.rawValue { return .done }
                let sid = st.abortedBy[waitIndex]
                if sid != 0, !isDevicePresent(sid) {
                    counters.qiTimeouts.add(1, ordering: .relaxed)
                    return .failed(.deviceTLBTimeout(sid: sid, attempts: attempts))
                }
                return .again
            }
            if let outcome {
                hardware.progress.signal()     // slots were reclaimed
                return outcome
            }
            hardware.progress.wait(key)
        }
    }

    /// qi_check_fault, made batch-safe, under q_lock.
    private func robustCheckFault(_ st: inout State, index: Int, waitIndex: Int, count: Int, latched: inout QIError?) {
        let fault = hardware.read(.fsts)
        if fault & DMARRegister.invalidationQueueError != 0 {
            // IQH stops on the refused descriptor; if it is one of ours,
            // replace it with a copy of our wait, as Linux does. (A bad tail
            // is not a descriptor error: whoever wrote IQT fixes it. Our own
            // wait is never refused: its status word is the lab's memory,
            // and injected IQEs spare waits.)
            let head = hardwareHead
            let position = (head - index + entries) % entries
            let record = hardware.errorRecord
            if position < count, record.iqeReason != .invalidTail, record.iqeReason != .tailMisaligned {
                copySlot(from: waitIndex, to: head)
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
            let head = hardwareHead
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
}
