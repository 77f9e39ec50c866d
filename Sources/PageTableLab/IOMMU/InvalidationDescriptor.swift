/// One slot of the invalidation queue as the hardware sees it: four
/// quadwords. A 128-bit queue (IQA.DW = 0) carries only `qw0` and `qw1`;
/// `qw2` and `qw3` exist for 256-bit (scalable-mode) queues and are reserved
/// in every descriptor type the lab knows.
public struct RawDescriptor: Hashable, Sendable, CustomStringConvertible {
    public var qw0: UInt64
    public var qw1: UInt64
    public var qw2: UInt64
    public var qw3: UInt64

    @inlinable
    public init(qw0: UInt64, qw1: UInt64 = 0, qw2: UInt64 = 0, qw3: UInt64 = 0) {
        self.qw0 = qw0
        self.qw1 = qw1
        self.qw2 = qw2
        self.qw3 = qw3
    }

    public static let zero = RawDescriptor(qw0: 0)

    /// The 7-bit type: bits 3:0 of qw0 are type[3:0], bits 11:9 are type[6:4].
    @inlinable public var type: UInt8 { UInt8(qw0 & 0xF) | UInt8((qw0 >> 9) & 0x7) << 4 }

    public var description: String {
        "qw0=0x\(String(qw0, radix: 16)) qw1=0x\(String(qw1, radix: 16))"
            + (qw2 | qw3 != 0 ? " qw2=0x\(String(qw2, radix: 16)) qw3=0x\(String(qw3, radix: 16))" : "")
    }
}

/// IQA.DW: the width of every descriptor in the queue.
public enum DescriptorWidth: Int, Sendable, Codable, CaseIterable {
    case bits128 = 0
    case bits256 = 1

    /// Log2 of the slot size: offsets in IQH/IQT are index << shift.
    @inlinable public var shift: Int { 4 + rawValue }
    @inlinable public var bytes: Int { 1 << shift }
}

/// The descriptor types 1–8 of VT-d queued invalidation, decoded. Fields
/// that the hardware ignores for a granularity (the address of a global
/// flush, say) are not represented: encoding writes them as zero.
public enum InvalidationDescriptor: Hashable, Sendable {
    case contextCache(ContextCacheInvalidation)
    case iotlb(IOTLBInvalidation)
    case deviceTLB(DeviceTLBInvalidation)
    case interruptEntryCache(InterruptEntryCacheInvalidation)
    case wait(InvalidationWait)
    case pasidIOTLB(PASIDIOTLBInvalidation)
    case pasidCache(PASIDCacheInvalidation)
    case pasidDeviceTLB(PASIDDeviceTLBInvalidation)

    /// The type code in the descriptor's type field.
    public var typeCode: UInt8 {
        switch self {
        case .contextCache: 1
        case .iotlb: 2
        case .deviceTLB: 3
        case .interruptEntryCache: 4
        case .wait: 5
        case .pasidIOTLB: 6
        case .pasidCache: 7
        case .pasidDeviceTLB: 8
        }
    }

    /// PASID-granular descriptors belong to scalable mode, which (as in Linux
    /// with ecap.SMTS) runs its queue with 256-bit descriptors. In a 128-bit
    /// queue they are the "256-bit descriptor in a 128-bit queue" error.
    public static func needs256Bit(typeCode: UInt8) -> Bool { (6...8).contains(typeCode) }
}

/// Type 1: context-cache invalidation.
public enum ContextCacheInvalidation: Hashable, Sendable {
    case global
    case domain(did: UInt16)
    /// Device-selective: `functionMask` (FM, 0–3) leaves bits of the SID's
    /// 3-bit function number out of the comparison, from the top: FM=1 bit
    /// 2, FM=2 bits 2:1, FM=3 bits 2:0 (VT-d context-cache invalidate descriptor; QEMU's
    /// vtd_context_device_invalidate masks the same way).
    case device(did: UInt16, sid: UInt16, functionMask: UInt8)

    /// The SID bits FM leaves out of the comparison.
    static func maskedFunctionBits(_ functionMask: UInt8) -> UInt16 {
        switch functionMask & 3 {
        case 0: 0
        case 1: 0b100
        case 2: 0b110
        default: 0b111
        }
    }

    /// Does a device-selective invalidation of `sid` under `functionMask`
    /// reach the context entry of `other`?
    static func covers(sid: UInt16, functionMask: UInt8, _ other: UInt16) -> Bool {
        let compared = ~maskedFunctionBits(functionMask)
        return sid & compared == other & compared
    }

    /// Every source-id a device-selective invalidation reaches, ascending.
    public static func sourceIDs(sid: UInt16, functionMask: UInt8) -> [UInt16] {
        let masked = maskedFunctionBits(functionMask)
        let base = sid & ~masked
        return (0...UInt16(7)).filter { $0 & ~masked == 0 }.map { base | $0 }
    }
}

/// Type 2: IOTLB invalidation, by domain ID.
public struct IOTLBInvalidation: Hashable, Sendable {
    public enum Granularity: Hashable, Sendable {
        case global
        case domain(did: UInt16)
        /// 2^addressMask pages at `address` (low bits ignored). `invalidationHint`
        /// (IH) = 1 says only leaves changed: paging-structure caches survive.
        case page(did: UInt16, address: UInt64, addressMask: UInt8, invalidationHint: Bool)
    }
    public var granularity: Granularity
    /// DR/DW: drain pending DMA reads/writes first (the lab has no pending
    /// DMA to drain: accepted and recorded).
    public var drainReads: Bool
    public var drainWrites: Bool

    public init(_ granularity: Granularity, drainReads: Bool = false, drainWrites: Bool = false) {
        self.granularity = granularity
        self.drainReads = drainReads
        self.drainWrites = drainWrites
    }
}

/// The size encoding of device-TLB invalidations (S bit): with S = 0 one
/// page at `address`; with S = 1 the lowest clear bit of the address at or
/// above bit 12 gives the size (bit 12 clear: 8 KiB, bit 13 clear: 16 KiB…).
public struct DeviceTLBRange: Hashable, Sendable {
    /// The address field as written (bits 63:12).
    public var address: UInt64
    public var sizeBit: Bool

    public init(address: UInt64, sizeBit: Bool) {
        self.address = address & ~0xFFF
        self.sizeBit = sizeBit
    }

    /// 2^sizeOrder pages at `base`, encoded with the S-bit trick. `base`
    /// should be aligned to the size; its low bits are overwritten.
    public init(base: UInt64, sizeOrder: Int) {
        guard sizeOrder > 0 else {
            self.init(address: base, sizeBit: false)
            return
        }
        let order = min(sizeOrder, 52)
        // Ones below the size bit, a zero at it.
        let ones: UInt64 = order >= 52 ? ~0xFFF : ((1 << UInt64(order + 11)) - 1) & ~0xFFF
        self.init(address: (base | ones) & ~(1 << UInt64(order + 11)), sizeBit: true)
    }

    /// The first byte covered and the number of bytes, as the hardware
    /// reads the encoding. All ones with S = 1 covers everything.
    public var span: (base: UInt64, bytes: UInt64?) {
        guard sizeBit else { return (address, 4096) }
        let ones = (~address) >> 12   // zero bits of the address, from bit 12 up
        guard ones != 0 else { return (0, nil) }
        let bit = ones.trailingZeroBitCount + 12      // the lowest clear bit
        let bytes: UInt64? = bit >= 63 ? nil : 1 << UInt64(bit + 1)
        let base = bytes.map { address & ~($0 - 1) } ?? 0
        return (base, bytes)
    }
}

/// Type 3: device-TLB (ATS) invalidation of translations without PASID.
public struct DeviceTLBInvalidation: Hashable, Sendable {
    public var sid: UInt16
    /// Physical function SID, for SR-IOV virtual functions.
    public var pfsid: UInt16
    /// MIP: the device's invalidate queue depth (Linux's qdep), 0–31.
    public var maxInvalidationsPending: UInt8
    public var range: DeviceTLBRange

    public init(sid: UInt16, pfsid: UInt16 = 0, maxInvalidationsPending: UInt8 = 0, range: DeviceTLBRange) {
        self.sid = sid
        self.pfsid = pfsid
        self.maxInvalidationsPending = maxInvalidationsPending
        self.range = range
    }
}

/// Type 4: interrupt-entry-cache invalidation.
public enum InterruptEntryCacheInvalidation: Hashable, Sendable {
    case global
    /// 2^indexMask entries starting at `index`.
    case selective(index: UInt16, indexMask: UInt8)
}

/// Type 5: invalidation wait. Completes after every earlier descriptor.
public struct InvalidationWait: Hashable, Sendable {
    /// SW: write `data` (32 bits) to the physical `address` (4-byte aligned).
    public var statusWrite: StatusWrite?
    /// IF: raise the invalidation-completion interrupt.
    public var interrupt: Bool
    /// FN: fetch nothing after this wait until it completes.
    public var fence: Bool

    public struct StatusWrite: Hashable, Sendable {
        public var address: UInt64
        public var data: UInt32
        public init(address: UInt64, data: UInt32) {
            self.address = address
            self.data = data
        }
    }

    public init(statusWrite: StatusWrite? = nil, interrupt: Bool = false, fence: Bool = false) {
        self.statusWrite = statusWrite
        self.interrupt = interrupt
        self.fence = fence
    }
}

/// Type 6: PASID-based IOTLB invalidation (first-stage translations, SVA).
public struct PASIDIOTLBInvalidation: Hashable, Sendable {
    public enum Granularity: Hashable, Sendable {
        /// Every (non-global) translation and paging-structure entry of the PASID.
        case pasid
        /// 2^addressMask pages at `address`; IH = 1 keeps paging-structure entries.
        case page(address: UInt64, addressMask: UInt8, invalidationHint: Bool)
    }
    public var did: UInt16
    public var pasid: UInt32
    public var granularity: Granularity

    public init(did: UInt16, pasid: UInt32, granularity: Granularity) {
        self.did = did
        self.pasid = pasid
        self.granularity = granularity
    }
}

/// Type 7: PASID-cache invalidation.
public enum PASIDCacheInvalidation: Hashable, Sendable {
    case domain(did: UInt16)
    case pasid(did: UInt16, pasid: UInt32)
    case global
}

/// Type 8: PASID-based device-TLB invalidation.
public struct PASIDDeviceTLBInvalidation: Hashable, Sendable {
    public var sid: UInt16
    public var pfsid: UInt16
    public var pasid: UInt32
    public var maxInvalidationsPending: UInt8
    /// G: every PASID of the device, not only `pasid`.
    public var allPASIDs: Bool
    public var range: DeviceTLBRange

    public init(sid: UInt16, pfsid: UInt16 = 0, pasid: UInt32, maxInvalidationsPending: UInt8 = 0,
                allPASIDs: Bool = false, range: DeviceTLBRange) {
        self.sid = sid
        self.pfsid = pfsid
        self.pasid = pasid
        self.maxInvalidationsPending = maxInvalidationsPending
        self.allPASIDs = allPASIDs
        self.range = range
    }
}
