/// Where Linux's qi_submit_sync would never return. Linux polls with
/// interrupts off and q_lock taken between polls, so each of these is a
/// hard lockup there; the lab's copy of that driver (qi_driver=linux)
/// notices the state instead of spinning and reports it as
/// `QIError.lockup`. The robust driver never gets here.
public enum QILockup: Equatable, Sendable, CustomStringConvertible {
    /// IQE stopped the unit on ring slot `ringIndex`, which is not the first
    /// slot of any submission being polled: qi_check_fault replaces the
    /// refused descriptor only when IQH equals the submission's first slot,
    /// so nobody clears the error and the unit never fetches again.
    case refusedDescriptorInsideBatch(ringIndex: Int)
    /// After an ITE, qi_check_fault walks back from (IQH - 1) | 1 two slots
    /// at a time until it meets IQT - 1: from an odd slot it never meets an
    /// even one. Its CPU spins there holding q_lock.
    case abortWalkNeverEnds(from: Int, tail: Int)
    /// The unit aborted the wait in ring slot `ringIndex` (ITE) and the walk
    /// never marked it (it visits odd slots only): its owner polls a status
    /// nobody will write.
    case lostWait(ringIndex: Int)
    /// The submission needs more free slots than there will ever be: the
    /// oldest slot, `pinnedSlot`, belongs to a submitter that never returns
    /// or holds a status nobody will turn back to FREE.
    case queueFullForever(pinnedSlot: Int)
    /// Another CPU spins in qi_check_fault with q_lock held (the lab's
    /// first lockup, IntelIOMMU.lockup, says where): this one can never
    /// take the lock again.
    case queueLockHeld
    /// The watchdog: nothing changed in the queue for `seconds` while this
    /// submission's wait was still pending (a state the detectors above do
    /// not name).
    case noProgress(seconds: Int)

    public var description: String {
        switch self {
        case .refusedDescriptorInsideBatch(let i):
            "IQE on ring slot \(i), inside a batch: qi_check_fault clears IQE only on a submission's first slot, so the queue stays stopped"
        case .abortWalkNeverEnds(let from, let tail):
            "ITE: qi_check_fault's abort walk steps by two from odd slot \(from) and never meets even tail \(tail)"
        case .lostWait(let i):
            "ITE aborted the wait in ring slot \(i) (an even slot) and qi_check_fault never marked it: its submitter polls forever"
        case .queueFullForever(let slot):
            "the queue stays full: ring slot \(slot) is never let go"
        case .queueLockHeld:
            "q_lock is held for ever by a CPU stuck in qi_check_fault"
        case .noProgress(let s):
            "nothing happened in the queue for \(s) s while the wait was pending"
        }
    }
}
