/// The registers of the DMA-remapping unit that queued invalidation uses,
/// at their VT-d offsets (DMAR_*_REG in Linux's iommu.h).
public enum DMARRegister: Int, Sendable, CaseIterable, CustomStringConvertible {
    case gcmd = 0x18
    case gsts = 0x1C
    case fsts = 0x34
    case iqh = 0x80
    case iqt = 0x88
    case iqa = 0x90
    case ics = 0x9C
    case iqercd = 0xB0

    public var description: String {
        switch self {
        case .gcmd: "GCMD"
        case .gsts: "GSTS"
        case .fsts: "FSTS"
        case .iqh: "IQH"
        case .iqt: "IQT"
        case .iqa: "IQA"
        case .ics: "ICS"
        case .iqercd: "IQERCD"
        }
    }

    /// GCMD.QIE / GSTS.QIES: queued invalidation enable / enabled.
    public static let queuedInvalidationEnable: UInt64 = 1 << 26
    /// FSTS error bits; write 1 to clear.
    public static let invalidationQueueError: UInt64 = 1 << 4       // IQE
    public static let invalidationCompletionError: UInt64 = 1 << 5  // ICE
    public static let invalidationTimeoutError: UInt64 = 1 << 6     // ITE
    public static let queueErrors: UInt64 = invalidationQueueError | invalidationCompletionError
        | invalidationTimeoutError
    /// ICS.IWC: an invalidation wait with IF = 1 completed; write 1 to clear.
    public static let invalidationWaitComplete: UInt64 = 1 << 0
    /// IQA: DW (256-bit descriptors), QS (log2 of the queue's 4 KiB pages).
    public static let iqaDescriptorWidth: UInt64 = 1 << 11
    public static let iqaQueueSizeMask: UInt64 = 0x7
    /// IQH/IQT: the QT/QH field, bits 18:4 (index << 4 or << 5).
    public static let queueOffsetMask: UInt64 = 0x7FFF0

    /// IQERCD fields.
    public static func iqercd(iqei: IQEReason, iteSID: UInt16, iceSID: UInt16) -> UInt64 {
        UInt64(iqei.rawValue) | UInt64(iteSID) << 32 | UInt64(iceSID) << 48
    }
}

/// A register write the hardware would ignore or that breaks the protocol:
/// the lab says so instead of silently doing nothing.
public enum DMARRegisterError: Error, Equatable, Sendable, CustomStringConvertible {
    case readOnly(DMARRegister)
    /// IQA may change only while queued invalidation is disabled.
    case iqaWhileEnabled

    public var description: String {
        switch self {
        case .readOnly(let r): "register \(r) is read-only (hardware-owned)"
        case .iqaWhileEnabled: "IQA written while queued invalidation is enabled (GSTS.QIES = 1)"
        }
    }
}

/// What the hardware recorded about its queue errors: IQERCD plus the lab's
/// extra: the ring index of each faulting descriptor.
public struct QIErrorRecord: Sendable, Equatable {
    /// IQE: why, and the index IQH stopped on.
    public var iqeReason: IQEReason = .infoNotAvailable
    public var iqeIndex: Int?
    /// The decoder's verdict for the descriptor, when the IQE came from it.
    public var iqeDecodeError: DescriptorDecodeError?
    /// True when the IQE was injected rather than found in the descriptor.
    public var iqeInjected = false
    /// ITE: the device that did not answer and the ring index of its
    /// device-TLB invalidation.
    public var iteSID: UInt16 = 0
    public var iteIndex: Int?
    /// The ring index of the wait the time-out aborted (it wrote no status);
    /// nil when none was fetched before the queue ran dry.
    public var iteAbortedWait: Int?
    /// ICE: the device whose completion was bad, and its descriptor's index.
    public var iceSID: UInt16 = 0
    public var iceIndex: Int?

    public init() {}
}
