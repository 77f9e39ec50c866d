/// Misuse of the emulated IOMMU's software interface, and queue failures
/// met on the way.
public enum IOMMUError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidParameter(String)
    /// The queue's ring or status words could not be allocated.
    case allocation(PageAllocError)
    /// PASIDs are 20 bits; 0 is the no-PASID value (RID_PASID).
    case invalidPASID(UInt32)
    case pasidNotBound(UInt32)
    case pasidAlreadyBound(UInt32)
    /// SVA.bind of an mm that has exited: its tables are gone.
    case mmExited
    /// A PASID whose entry was cleared but whose flush never completed: the
    /// IOMMU may still cache it, so it is bound again only once an unbind
    /// has flushed it.
    case pasidTeardownPending(UInt32)
    case deviceAlreadyAttached(sid: UInt16)
    case deviceNotAttached(sid: UInt16)
    /// An invalidation range with nothing in it (start >= end).
    case emptyRange(start: UInt64, end: UInt64)
    case queue(QIError)

    public var description: String {
        switch self {
        case .invalidParameter(let s): "invalid IOMMU parameter: \(s)"
        case .allocation(let e): "IOMMU: \(e)"
        case .invalidPASID(let p): "PASID \(p) is outside 1...0xFFFFF"
        case .pasidNotBound(let p): "PASID \(p) is not bound"
        case .pasidAlreadyBound(let p): "PASID \(p) is already bound"
        case .mmExited: "the mm has exited: there is nothing left to bind"
        case .pasidTeardownPending(let p): "PASID \(p) was cleared but its flush never completed: unbind it again first"
        case .deviceAlreadyAttached(let sid): "a device with source ID \(sid) is already attached"
        case .deviceNotAttached(let sid): "no device with source ID \(sid) is attached to this IOMMU"
        case .emptyRange(let s, let e): "empty invalidation range [0x\(String(s, radix: 16)), 0x\(String(e, radix: 16)))"
        case .queue(let e): "IOMMU queued invalidation: \(e)"
        }
    }
}
