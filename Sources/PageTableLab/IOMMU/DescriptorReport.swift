/// `ptlab iommu decode`: one raw invalidation descriptor — its quadwords as
/// Linux's qi_submit tracepoint prints them — decoded into named fields,
/// with the emulated unit's verdict: accepted, or the IQE it would raise
/// and why. The unit's memory checks (a wait's status address) are not
/// part of a descriptor's bits and are not judged here.
public struct DescriptorReport: Sendable, Equatable, Encodable {
    /// The 7-bit type field.
    public var type: Int
    public var name: String
    public var accepted: Bool
    /// IQERCD.IQEI the unit would record; nil when accepted.
    public var iqeReason: Int?
    /// Why the unit refuses it, in words; nil when accepted. (Not in JSON.)
    public var why: String?
    /// The fields by name. A refused descriptor shows what its defined
    /// fields hold (its reserved bits aside), when its type has any.
    public var fields: [String: DescriptorFieldValue]

    enum CodingKeys: String, CodingKey {
        case type, name, accepted, fields
        case iqeReason = "iqe_reason"
    }

    /// iqe_reason is always present: a number, or null when accepted.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(type, forKey: .type)
        try c.encode(name, forKey: .name)
        try c.encode(accepted, forKey: .accepted)
        try c.encode(iqeReason, forKey: .iqeReason)
        try c.encode(fields, forKey: .fields)
    }

    /// Decode `raw` as a unit with a queue of `width` and capability MAMV
    /// `maxAddressMask` would.
    public init(_ raw: RawDescriptor, width: DescriptorWidth = .bits256,
                maxAddressMask: UInt8 = IntelIOMMU.Parameters().maxAddressMask) {
        type = Int(raw.type)
        name = Self.names[Int(raw.type)] ?? "unknown"
        switch InvalidationDescriptor.decode(raw, width: width, maxAddressMask: maxAddressMask) {
        case .success(let d):
            accepted = true
            fields = d.fields
        case .failure(let error):
            accepted = false
            iqeReason = Int(error.reason.rawValue)
            why = "\(error.reason): \(error.why)"
            fields = Self.lenient(raw)?.fields ?? [:]
        }
    }

    /// Parse `quadwords` — 1, 2 or 4 hexadecimal numbers, 0x optional — and
    /// decode them. One or two quadwords leave the rest zero.
    public init(parsing quadwords: [String], width: DescriptorWidth = .bits256,
                maxAddressMask: UInt8 = IntelIOMMU.Parameters().maxAddressMask) throws(DescriptorInputError) {
        guard [1, 2, 4].contains(quadwords.count) else { throw .count(quadwords.count) }
        var q: [UInt64] = []
        for (i, text) in quadwords.enumerated() {
            let digits = text.lowercased().hasPrefix("0x") ? text.dropFirst(2) : Substring(text)
            guard !digits.isEmpty, digits.count <= 16, let v = UInt64(digits, radix: 16) else {
                throw .notHex(quadword: i, text: text)
            }
            q.append(v)
        }
        while q.count < 4 { q.append(0) }
        if width == .bits128, q[2] | q[3] != 0 { throw .wideInNarrowQueue }
        self.init(RawDescriptor(qw0: q[0], qw1: q[1], qw2: q[2], qw3: q[3]), width: width, maxAddressMask: maxAddressMask)
    }

    static let names: [Int: String] = [
        1: "context-cache", 2: "iotlb", 3: "device-tlb", 4: "interrupt-entry-cache",
        5: "invalidation-wait", 6: "pasid-iotlb", 7: "pasid-cache", 8: "pasid-device-tlb",
    ]

    /// The descriptor with its reserved bits cleared, decoded as leniently
    /// as the decoder allows, to show what a refused one says.
    private static func lenient(_ raw: RawDescriptor) -> InvalidationDescriptor? {
        let type = Int(raw.type)
        guard type >= 1, type < InvalidationDescriptor.reservedBits.count else { return nil }
        let (r0, r1) = InvalidationDescriptor.reservedBits[type]
        let clean = RawDescriptor(qw0: raw.qw0 & ~r0, qw1: raw.qw1 & ~r1)
        return try? InvalidationDescriptor.decode(clean, width: .bits256, maxAddressMask: 63).get()
    }
}

/// A field's value: a number, a flag, a name, or a list (source_ids).
/// Addresses are 64-bit and print as hexadecimal strings in JSON, so that
/// no reader rounds them to a double.
public enum DescriptorFieldValue: Sendable, Equatable, Encodable, CustomStringConvertible {
    case number(UInt64)
    case address(UInt64)
    case flag(Bool)
    case text(String)
    case list([UInt64])

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .number(let n): try c.encode(n)
        case .address(let a): try c.encode(Self.hex(a))
        case .flag(let b): try c.encode(b)
        case .text(let s): try c.encode(s)
        case .list(let l): try c.encode(l)
        }
    }

    public var description: String {
        switch self {
        case .number(let n): "\(n)"
        case .address(let a): Self.hex(a)
        case .flag(let b): b ? "1" : "0"
        case .text(let s): s
        case .list(let l): l.map { Self.hex($0) }.joined(separator: " ")
        }
    }

    static func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
}

/// Input `ptlab iommu decode` cannot read (exit status 2).
public enum DescriptorInputError: Error, Equatable, Sendable, CustomStringConvertible {
    case count(Int)
    case notHex(quadword: Int, text: String)
    case wideInNarrowQueue

    public var description: String {
        switch self {
        case .count(let n): "give 1, 2 or 4 quadwords (QW0 [QW1 [QW2 QW3]]), not \(n)"
        case .notHex(let q, let text): "qw\(q) '\(text)' is not a 64-bit hexadecimal number"
        case .wideInNarrowQueue: "qw2 and qw3 are not part of a descriptor in a 128-bit queue"
        }
    }
}

extension InvalidationDescriptor {
    /// The descriptor's fields by name (the names of the VT-d descriptor
    /// layouts, in snake case). Page-selective and device-TLB forms add the
    /// range they cover (first_address, last_address); a device-selective
    /// context-cache form adds the source-ids it reaches (source_ids).
    public var fields: [String: DescriptorFieldValue] {
        typealias V = DescriptorFieldValue
        func range(_ r: AddressRange) -> [String: V] { ["first_address": .address(r.first), "last_address": .address(r.last)] }
        switch self {
        case .contextCache(.global): return ["granularity": .text("global")]
        case .contextCache(.domain(let did)): return ["granularity": .text("domain"), "did": .number(UInt64(did))]
        case .contextCache(.device(let did, let sid, let fm)):
            return ["granularity": .text("device"), "did": .number(UInt64(did)), "sid": .number(UInt64(sid)),
                    "function_mask": .number(UInt64(fm)),
                    "source_ids": .list(ContextCacheInvalidation.sourceIDs(sid: sid, functionMask: fm).map(UInt64.init))]
        case .iotlb(let inv):
            var f: [String: V] = ["drain_reads": .flag(inv.drainReads), "drain_writes": .flag(inv.drainWrites)]
            switch inv.granularity {
            case .global: f["granularity"] = .text("global")
            case .domain(let did): f.merge(["granularity": .text("domain"), "did": .number(UInt64(did))]) { $1 }
            case .page(let did, let address, let am, let ih):
                f.merge(["granularity": .text("page"), "did": .number(UInt64(did)), "address": .address(address),
                         "address_mask": .number(UInt64(am)), "ih": .flag(ih)]) { $1 }
                f.merge(range(AddressRange(address: address, addressMask: am))) { $1 }
            }
            return f
        case .deviceTLB(let inv):
            return ["sid": .number(UInt64(inv.sid)), "pfsid": .number(UInt64(inv.pfsid)),
                    "max_invalidations_pending": .number(UInt64(inv.maxInvalidationsPending)),
                    "address": .address(inv.range.address), "size": .flag(inv.range.sizeBit)]
                .merging(range(AddressRange(base: inv.range.span.base, bytes: inv.range.span.bytes))) { $1 }
        case .interruptEntryCache(.global): return ["granularity": .text("global")]
        case .interruptEntryCache(.selective(let index, let im)):
            return ["granularity": .text("selective"), "index": .number(UInt64(index)), "index_mask": .number(UInt64(im))]
        case .wait(let w):
            var f: [String: V] = ["status_write": .flag(w.statusWrite != nil), "interrupt": .flag(w.interrupt),
                                  "fence": .flag(w.fence)]
            if let sw = w.statusWrite {
                f["status_address"] = .address(sw.address)
                f["status_data"] = .number(UInt64(sw.data))
            }
            return f
        case .pasidIOTLB(let inv):
            var f: [String: V] = ["did": .number(UInt64(inv.did)), "pasid": .number(UInt64(inv.pasid))]
            switch inv.granularity {
            case .pasid: f["granularity"] = .text("pasid")
            case .page(let address, let am, let ih):
                f.merge(["granularity": .text("page"), "address": .address(address), "address_mask": .number(UInt64(am)),
                         "ih": .flag(ih)]) { $1 }
                f.merge(range(AddressRange(address: address, addressMask: am))) { $1 }
            }
            return f
        case .pasidCache(.global): return ["granularity": .text("global")]
        case .pasidCache(.domain(let did)): return ["granularity": .text("domain"), "did": .number(UInt64(did))]
        case .pasidCache(.pasid(let did, let pasid)):
            return ["granularity": .text("pasid"), "did": .number(UInt64(did)), "pasid": .number(UInt64(pasid))]
        case .pasidDeviceTLB(let inv):
            return ["sid": .number(UInt64(inv.sid)), "pfsid": .number(UInt64(inv.pfsid)), "pasid": .number(UInt64(inv.pasid)),
                    "max_invalidations_pending": .number(UInt64(inv.maxInvalidationsPending)),
                    "global": .flag(inv.allPASIDs), "address": .address(inv.range.address), "size": .flag(inv.range.sizeBit)]
                .merging(range(AddressRange(base: inv.range.span.base, bytes: inv.range.span.bytes))) { $1 }
        }
    }
}
