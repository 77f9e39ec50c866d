/// How a qi_submit_sync can fail, with the kernel's errno in each doc line.
public enum QIError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Queued invalidation is not enabled (GSTS.QIES = 0).
    case queueDisabled
    /// count + 2 slots can never be free in a queue this size (the kernel
    /// would spin forever).
    case tooManyDescriptors(count: Int, max: Int)
    /// -EINVAL: the hardware refused a descriptor of this submission (IQE).
    /// `position` is its index in the caller's batch (`count` for the wait
    /// the driver appended). The driver replaced it with a harmless wait, so
    /// the rest of the batch did execute; the refused one did not.
    case invalidDescriptor(position: Int, ringIndex: Int, reason: IQEReason, injected: Bool,
                           decodeError: DescriptorDecodeError?)
    /// -ETIMEDOUT: a device-TLB invalidation timed out (ITE) and the device
    /// is gone (`attempts`: resubmissions before that was found). A present
    /// device that times out is resubmitted to for as long as it does.
    case deviceTLBTimeout(sid: UInt16, attempts: Int)
    /// A device answered a device-TLB invalidation with an invalid
    /// completion (ICE). Linux clears ICE and carries on; the lab reports it
    /// to the submitter whose descriptor drew it, once its wait completed.
    case completionError(sid: UInt16)
    /// qi_driver=linux: Linux's qi_submit_sync would never return here; the
    /// lab found the state that keeps it spinning (see QILockup).
    case lockup(QILockup)

    public var description: String {
        switch self {
        case .queueDisabled:
            "queued invalidation is not enabled"
        case .tooManyDescriptors(let n, let max):
            "\(n) descriptors in one submission; at most \(max) fit with their wait"
        case .invalidDescriptor(let pos, let ring, let reason, let injected, let detail):
            "descriptor \(pos) of the submission (ring slot \(ring)) refused by the hardware: \(reason)"
                + (injected ? " (injected)" : "") + (detail.map { " — \($0)" } ?? "")
        case .deviceTLBTimeout(let sid, let attempts):
            "device-TLB invalidation of device \(sid) timed out and the device is gone"
                + (attempts > 0 ? " (after \(attempts) resubmissions)" : "")
        case .completionError(let sid):
            "invalid device-TLB invalidation completion from device \(sid)"
        case .lockup(let l):
            "qi_submit_sync would never return (Linux spins here with interrupts off): \(l)"
        }
    }
}
