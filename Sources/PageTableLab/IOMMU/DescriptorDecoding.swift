/// Why the hardware refused a descriptor or a tail: the IQEI codes of the
/// invalidation-queue error record register (IQERCD bits 3:0), numbered as
/// the VT-d specification numbers them. Two of the specification's codes
/// never arise here: 5 (an IQA.DW the unit cannot use: the lab's unit takes
/// either width) and 7.
public enum IQEReason: UInt8, Sendable, Codable, CustomStringConvertible {
    case infoNotAvailable = 0
    /// IQT points past the end of the queue.
    case invalidTail = 1
    /// The descriptor could not be fetched (IQA points outside memory).
    case fetchError = 2
    /// A type the unit does not implement in this queue: 0 and 9–127, and
    /// the scalable-mode types 6–8 in a 128-bit (legacy-mode) queue.
    case invalidType = 3
    /// A reserved bit is set, or a field holds a reserved value.
    case reservedField = 4
    /// IQT bit 4 set while the queue holds 256-bit descriptors.
    case tailMisaligned = 6

    public var description: String {
        switch self {
        case .infoNotAvailable: "no information"
        case .invalidTail: "tail beyond the queue"
        case .fetchError: "the descriptor could not be fetched"
        case .invalidType: "invalid descriptor type"
        case .reservedField: "reserved field set"
        case .tailMisaligned: "tail not aligned to a 256-bit descriptor"
        }
    }
}

/// A descriptor the decoder refused: what was wrong with it, from which the
/// IQE reason follows, so that a report can say why in words and name the
/// offending bits.
public struct DescriptorDecodeError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Cause: Hashable, Sendable {
        /// Fewer bytes than one descriptor.
        case truncated
        /// No descriptor type has this code.
        case unknownType
        /// A PASID-granular type (6–8) in a 128-bit queue: scalable mode
        /// runs its queue with 256-bit descriptors.
        case scalableTypeInLegacyQueue
        /// Reserved bits set in quadword `quadword`.
        case reservedBits(quadword: Int, bits: UInt64)
        /// The granularity field holds a value this type reserves.
        case reservedGranularity(UInt8)
        /// A page-selective IOTLB invalidation (type 2) with an address
        /// mask above the capability's MAMV.
        case addressMaskAboveMAMV(mask: UInt8, mamv: UInt8)
    }

    public var cause: Cause
    /// The type field as read (0 when the input was too short to have one).
    public var type: UInt8

    public init(_ cause: Cause, type: UInt8) {
        self.cause = cause
        self.type = type
    }

    public var reason: IQEReason {
        switch cause {
        case .truncated: .fetchError
        case .unknownType, .scalableTypeInLegacyQueue: .invalidType
        case .reservedBits, .reservedGranularity, .addressMaskAboveMAMV: .reservedField
        }
    }

    /// The quadword (0–3) holding the offending bits, for reserved fields.
    public var quadword: Int? {
        switch cause {
        case .reservedBits(let q, _): q
        case .reservedGranularity: 0
        case .addressMaskAboveMAMV: 1
        case .truncated, .unknownType, .scalableTypeInLegacyQueue: nil
        }
    }

    /// The offending bits of `quadword`.
    public var bits: UInt64 {
        switch cause {
        case .reservedBits(_, let b): b
        case .reservedGranularity(let g): UInt64(g) << DescriptorField.granularityShift
        case .addressMaskAboveMAMV(let mask, _): UInt64(mask)
        case .truncated, .unknownType, .scalableTypeInLegacyQueue: 0
        }
    }

    /// Why, in words.
    public var why: String {
        switch cause {
        case .truncated: "fewer bytes than one descriptor"
        case .unknownType: "no descriptor type \(type)"
        case .scalableTypeInLegacyQueue: "type \(type) is a scalable-mode descriptor: it needs a 256-bit queue"
        case .reservedBits(let q, let b): "reserved bits 0x\(String(b, radix: 16)) set in qw\(q)"
        case .reservedGranularity(let g): "granularity \(g) is reserved for type \(type)"
        case .addressMaskAboveMAMV(let mask, let mamv):
            "address mask \(mask) is above the unit's MAMV (\(mamv)), which bounds type-2 page-selective flushes"
        }
    }

    public var description: String { "invalid descriptor (type \(type)): \(reason): \(why)" }
}

extension InvalidationDescriptor {
    /// Reserved bits of qw0 and qw1 per type, index = type code. Bits 11:9
    /// (type[6:4]) are left out: a non-zero value there is an unknown type.
    static let reservedBits: [(qw0: UInt64, qw1: UInt64)] = [
        (0, 0),
        (0xFFFC_0000_0000_F1C0, ~0),                      // 1 context-cache
        (0xFFFF_FFFF_0000_F100, 0xF80),                   // 2 IOTLB
        (0x000F_0000_FFE0_01F0, 0xFFE),                   // 3 device-TLB
        (0xFFFF_0000_07FF_F1E0, ~0),                      // 4 interrupt entry cache
        (0x0000_0000_FFFF_F180, 0x3),                     // 5 wait (PD reserved: no page requests here)
        (0xFFF0_0000_0000_F1C0, 0xF80),                   // 6 PASID-IOTLB
        (0xFFF0_0000_0000_F1C0, ~0),                      // 7 PASID-cache
        (0, 0x7FE),                                       // 8 PASID device-TLB
    ]

    /// Decode a descriptor as the hardware does when it fetches it. Pure,
    /// total and allocation-free: any 256 bits give either a descriptor or
    /// the IQE reason (this is the fuzz target). `maxAddressMask` is the
    /// capability MAMV: it bounds the AM of a type-2 page-selective flush
    /// only. A page-selective-within-PASID PASID-IOTLB flush (type 6) takes
    /// any mask: the specification requires scalable-mode hardware to, QEMU
    /// checks none (vtd_process_piotlb_desc), and Linux's first-stage
    /// flushes send masks far above any MAMV (cache_tag_flush_range).
    public static func decode(
        _ raw: RawDescriptor, width: DescriptorWidth, maxAddressMask: UInt8 = 63
    ) -> Result<InvalidationDescriptor, DescriptorDecodeError> {
        typealias F = DescriptorField
        let type = raw.type
        func fail(_ cause: DescriptorDecodeError.Cause) -> Result<InvalidationDescriptor, DescriptorDecodeError> {
            .failure(DescriptorDecodeError(cause, type: type))
        }
        guard type >= 1, Int(type) < reservedBits.count else { return fail(.unknownType) }
        if width == .bits128, needs256Bit(typeCode: type) { return fail(.scalableTypeInLegacyQueue) }
        let (r0, r1) = reservedBits[Int(type)]
        if raw.qw0 & r0 != 0 { return fail(.reservedBits(quadword: 0, bits: raw.qw0 & r0)) }
        if raw.qw1 & r1 != 0 { return fail(.reservedBits(quadword: 1, bits: raw.qw1 & r1)) }
        if width == .bits256 {
            if raw.qw2 != 0 { return fail(.reservedBits(quadword: 2, bits: raw.qw2)) }
            if raw.qw3 != 0 { return fail(.reservedBits(quadword: 3, bits: raw.qw3)) }
        }

        let g = (raw.qw0 >> F.granularityShift) & 3
        let did = UInt16(truncatingIfNeeded: raw.qw0 >> F.didShift)
        let pasid = UInt32((raw.qw0 >> F.pasidShift) & F.pasidMask)
        let address = raw.qw1 & F.addressMask
        let am = UInt8(raw.qw1 & F.amMask)
        let ih = raw.qw1 & F.ihBit != 0

        switch type {
        case 1:
            switch g {
            case 1: return .success(.contextCache(.global))
            case 2: return .success(.contextCache(.domain(did: did)))
            case 3:
                return .success(.contextCache(.device(
                    did: did, sid: UInt16(truncatingIfNeeded: raw.qw0 >> F.ccSIDShift),
                    functionMask: UInt8((raw.qw0 >> F.ccFMShift) & 3))))
            default: return fail(.reservedGranularity(UInt8(g)))
            }

        case 2:
            let granularity: IOTLBInvalidation.Granularity
            switch g {
            case 1: granularity = .global
            case 2: granularity = .domain(did: did)
            case 3:
                guard am <= maxAddressMask else { return fail(.addressMaskAboveMAMV(mask: am, mamv: maxAddressMask)) }
                granularity = .page(did: did, address: address, addressMask: am, invalidationHint: ih)
            default: return fail(.reservedGranularity(UInt8(g)))
            }
            return .success(.iotlb(IOTLBInvalidation(
                granularity, drainReads: raw.qw0 & F.iotlbDrainReads != 0,
                drainWrites: raw.qw0 & F.iotlbDrainWrites != 0)))

        case 3:
            return .success(.deviceTLB(DeviceTLBInvalidation(
                sid: UInt16(truncatingIfNeeded: raw.qw0 >> F.dtlbSIDShift), pfsid: F.pfsid(from: raw.qw0),
                maxInvalidationsPending: UInt8((raw.qw0 >> F.dtlbMIPShift) & 0x1F),
                range: DeviceTLBRange(address: address, sizeBit: raw.qw1 & F.dtlbSize != 0))))

        case 4:
            if raw.qw0 & F.iecSelective == 0 { return .success(.interruptEntryCache(.global)) }
            return .success(.interruptEntryCache(.selective(
                index: UInt16(truncatingIfNeeded: raw.qw0 >> F.iecIndexShift),
                indexMask: UInt8((raw.qw0 >> F.iecIMShift) & 0x1F))))

        case 5:
            var wait = InvalidationWait(interrupt: raw.qw0 & F.waitIF != 0, fence: raw.qw0 & F.waitFN != 0)
            if raw.qw0 & F.waitSW != 0 {
                wait.statusWrite = .init(address: raw.qw1, data: UInt32(truncatingIfNeeded: raw.qw0 >> F.waitDataShift))
            }
            return .success(.wait(wait))

        case 6:
            switch g {
            case 2: return .success(.pasidIOTLB(PASIDIOTLBInvalidation(did: did, pasid: pasid, granularity: .pasid)))
            case 3:
                return .success(.pasidIOTLB(PASIDIOTLBInvalidation(
                    did: did, pasid: pasid, granularity: .page(address: address, addressMask: am, invalidationHint: ih))))
            default: return fail(.reservedGranularity(UInt8(g)))
            }

        case 7:
            switch g {
            case 0: return .success(.pasidCache(.domain(did: did)))
            case 1: return .success(.pasidCache(.pasid(did: did, pasid: pasid)))
            case 3: return .success(.pasidCache(.global))
            default: return fail(.reservedGranularity(UInt8(g)))
            }

        default:  // 8
            return .success(.pasidDeviceTLB(PASIDDeviceTLBInvalidation(
                sid: UInt16(truncatingIfNeeded: raw.qw0 >> F.pdtlbSIDShift), pfsid: F.pfsid(from: raw.qw0),
                pasid: pasid, maxInvalidationsPending: UInt8((raw.qw0 >> F.pdtlbMIPShift) & 0x1F),
                allPASIDs: raw.qw1 & F.pdtlbGlobal != 0,
                range: DeviceTLBRange(address: address, sizeBit: raw.qw1 & F.pdtlbSize != 0))))
        }
    }

    /// Decode little-endian bytes as they lie in the queue: 16 or 32 of them
    /// by `width`. Fewer is a fetch error; more are ignored.
    public static func decode(
        bytes: some Collection<UInt8>, width: DescriptorWidth, maxAddressMask: UInt8 = 63
    ) -> Result<InvalidationDescriptor, DescriptorDecodeError> {
        guard bytes.count >= width.bytes else { return .failure(DescriptorDecodeError(.truncated, type: 0)) }
        var q: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        var index = bytes.startIndex
        for i in 0..<width.bytes {
            let byte = UInt64(bytes[index]) << UInt64((i & 7) * 8)
            switch i >> 3 {
            case 0: q.0 |= byte
            case 1: q.1 |= byte
            case 2: q.2 |= byte
            default: q.3 |= byte
            }
            index = bytes.index(after: index)
        }
        return decode(RawDescriptor(qw0: q.0, qw1: q.1, qw2: q.2, qw3: q.3), width: width, maxAddressMask: maxAddressMask)
    }
}
