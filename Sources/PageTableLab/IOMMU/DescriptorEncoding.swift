/// Bit positions of the descriptor fields (VT-d §6.5.2; Linux's QI_* macros
/// in drivers/iommu/intel/iommu.h use the same layout). One table for the
/// encoder and the decoder, so the two cannot drift apart.
enum DescriptorField {
    static let granularityShift: UInt64 = 4          // G, bits 5:4 (IEC: bit 4)
    static let didShift: UInt64 = 16                 // DID, bits 31:16
    static let pasidShift: UInt64 = 32               // PASID, bits 51:32
    static let pasidMask: UInt64 = 0xF_FFFF
    static let addressMask: UInt64 = ~0xFFF          // ADDR, bits 63:12
    static let amMask: UInt64 = 0x3F                 // AM, bits 5:0 of qw1
    static let ihBit: UInt64 = 1 << 6                // IH, bit 6 of qw1

    // context-cache
    static let ccSIDShift: UInt64 = 32
    static let ccFMShift: UInt64 = 48
    // IOTLB
    static let iotlbDrainWrites: UInt64 = 1 << 6
    static let iotlbDrainReads: UInt64 = 1 << 7
    // device-TLB (type 3): MIP 20:16, SID 47:32; PFSID 15:12 and 63:52
    static let dtlbMIPShift: UInt64 = 16
    static let dtlbSIDShift: UInt64 = 32
    // PASID device-TLB (type 8): MIP 8:4, SID 31:16, PASID 51:32
    static let pdtlbMIPShift: UInt64 = 4
    static let pdtlbSIDShift: UInt64 = 16
    static let pdtlbGlobal: UInt64 = 1 << 0          // G, qw1 bit 0
    static let pdtlbSize: UInt64 = 1 << 11           // S, qw1 bit 11
    static let dtlbSize: UInt64 = 1 << 0             // S, qw1 bit 0 (type 3)
    // interrupt entry cache
    static let iecSelective: UInt64 = 1 << 4
    static let iecIMShift: UInt64 = 27
    static let iecIndexShift: UInt64 = 32
    // wait
    static let waitIF: UInt64 = 1 << 4
    static let waitSW: UInt64 = 1 << 5
    static let waitFN: UInt64 = 1 << 6
    static let waitDataShift: UInt64 = 32

    static func pfsidBits(_ pfsid: UInt16) -> UInt64 {
        UInt64(pfsid & 0xF) << 12 | UInt64(pfsid >> 4) << 52
    }
    static func pfsid(from qw0: UInt64) -> UInt16 {
        UInt16((qw0 >> 12) & 0xF) | UInt16((qw0 >> 52) & 0xFFF) << 4
    }
}

extension InvalidationDescriptor {
    /// The descriptor as software writes it into the queue. Values wider
    /// than their field (a PASID above 2^20, say) are truncated to the field:
    /// callers that take such values from users validate them first.
    public func encode() -> RawDescriptor {
        typealias F = DescriptorField
        let type = UInt64(typeCode)
        switch self {
        case .contextCache(let cc):
            switch cc {
            case .global:
                return RawDescriptor(qw0: type | 1 << F.granularityShift)
            case .domain(let did):
                return RawDescriptor(qw0: type | 2 << F.granularityShift | UInt64(did) << F.didShift)
            case .device(let did, let sid, let fm):
                return RawDescriptor(qw0: type | 3 << F.granularityShift | UInt64(did) << F.didShift
                                     | UInt64(sid) << F.ccSIDShift | UInt64(fm & 3) << F.ccFMShift)
            }

        case .iotlb(let inv):
            var qw0 = type | (inv.drainReads ? F.iotlbDrainReads : 0) | (inv.drainWrites ? F.iotlbDrainWrites : 0)
            var qw1: UInt64 = 0
            switch inv.granularity {
            case .global:
                qw0 |= 1 << F.granularityShift
            case .domain(let did):
                qw0 |= 2 << F.granularityShift | UInt64(did) << F.didShift
            case .page(let did, let address, let am, let ih):
                qw0 |= 3 << F.granularityShift | UInt64(did) << F.didShift
                qw1 = Self.pageSelective(address: address, addressMask: am, ih: ih)
            }
            return RawDescriptor(qw0: qw0, qw1: qw1)

        case .deviceTLB(let inv):
            return RawDescriptor(
                qw0: type | F.pfsidBits(inv.pfsid) | UInt64(inv.maxInvalidationsPending & 0x1F) << F.dtlbMIPShift
                    | UInt64(inv.sid) << F.dtlbSIDShift,
                qw1: inv.range.address | (inv.range.sizeBit ? F.dtlbSize : 0))

        case .interruptEntryCache(let iec):
            switch iec {
            case .global:
                return RawDescriptor(qw0: type)
            case .selective(let index, let im):
                return RawDescriptor(qw0: type | F.iecSelective | UInt64(im & 0x1F) << F.iecIMShift
                                     | UInt64(index) << F.iecIndexShift)
            }

        case .wait(let wait):
            var qw0 = type | (wait.interrupt ? F.waitIF : 0) | (wait.fence ? F.waitFN : 0)
            var qw1: UInt64 = 0
            if let sw = wait.statusWrite {
                qw0 |= F.waitSW | UInt64(sw.data) << F.waitDataShift
                qw1 = sw.address & ~3
            }
            return RawDescriptor(qw0: qw0, qw1: qw1)

        case .pasidIOTLB(let inv):
            let base = type | UInt64(inv.did) << F.didShift | (UInt64(inv.pasid) & F.pasidMask) << F.pasidShift
            switch inv.granularity {
            case .pasid:
                return RawDescriptor(qw0: base | 2 << F.granularityShift)
            case .page(let address, let am, let ih):
                return RawDescriptor(qw0: base | 3 << F.granularityShift,
                                     qw1: Self.pageSelective(address: address, addressMask: am, ih: ih))
            }

        case .pasidCache(let pc):
            switch pc {
            case .domain(let did):
                return RawDescriptor(qw0: type | UInt64(did) << F.didShift)
            case .pasid(let did, let pasid):
                return RawDescriptor(qw0: type | 1 << F.granularityShift | UInt64(did) << F.didShift
                                     | (UInt64(pasid) & F.pasidMask) << F.pasidShift)
            case .global:
                return RawDescriptor(qw0: type | 3 << F.granularityShift)
            }

        case .pasidDeviceTLB(let inv):
            return RawDescriptor(
                qw0: type | UInt64(inv.maxInvalidationsPending & 0x1F) << F.pdtlbMIPShift | F.pfsidBits(inv.pfsid)
                    | UInt64(inv.sid) << F.pdtlbSIDShift | (UInt64(inv.pasid) & F.pasidMask) << F.pasidShift,
                qw1: inv.range.address | (inv.range.sizeBit ? F.pdtlbSize : 0) | (inv.allPASIDs ? F.pdtlbGlobal : 0))
        }
    }

    private static func pageSelective(address: UInt64, addressMask: UInt8, ih: Bool) -> UInt64 {
        (address & DescriptorField.addressMask) | (ih ? DescriptorField.ihBit : 0)
            | (UInt64(addressMask) & DescriptorField.amMask)
    }
}
