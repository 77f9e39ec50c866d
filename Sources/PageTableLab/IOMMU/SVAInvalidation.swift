/// How Linux flushes an SVA (first-stage) domain for an address range:
/// intel_arch_invalidate_secondary_tlbs (svm.c) → cache_tag_flush_range
/// (cache.c), batched with qi_batch_add_* and one wait per domain. Read in
/// a 6.17-era tree; the kernel-range flush of 6.19 reaches it through the
/// same notifier.
extension IntelIOMMU {
    /// calculate_psi_aligned_address (cache.c): the naturally aligned block
    /// of 2^mask pages that a page-selective flush of the inclusive range
    /// [start, last] must name. Start with the range's page count rounded
    /// up to a power of two; if the start is not aligned to it, take the
    /// lowest bit above that size in which the first and last page frames
    /// agree (the carry out of the unaligned start ends there). Bits above
    /// the 52-bit frame number always agree, so the mask is at most 52 (the
    /// whole space, MAX_AGAW_PFN_WIDTH).
    public static func calculatePSIAlignedAddress(start: UInt64, last: UInt64) -> (address: UInt64, pages: UInt64, mask: UInt8) {
        let pfn = start >> 12
        let pages = (last >> 12) - pfn + 1
        var mask = UInt8(pages <= 1 ? 0 : UInt64.bitWidth - (pages - 1).leadingZeroBitCount)
        let bitmask: UInt64 = (1 << UInt64(mask)) - 1
        if bitmask & pfn != 0 {
            let shared = ~(pfn ^ (pfn + pages - 1)) & ~bitmask
            mask = UInt8(shared.trailingZeroBitCount)
        }
        let address = mask >= 52 ? 0 : start & ~((4096 << UInt64(mask)) - 1)
        return (address, 1 << UInt64(mask), mask)
    }

    /// intel_arch_invalidate_secondary_tlbs: the mm notifier's flush of
    /// [start, end) for one bound PASID, and wait. start = 0 and end = max
    /// is a flush of everything; any other range goes to
    /// cache_tag_flush_range with its last byte (mm ranges end exclusive,
    /// IOMMU ranges inclusive).
    public func invalidateSecondaryTLBs(pasid: UInt32, start: UInt64, end: UInt64, ih: Bool) throws(IOMMUError) {
        guard start < end else { throw .emptyRange(start: start, end: end) }
        var batch = QIBatch()
        try cacheTagFlushRange(pasid: pasid, start: start, last: start == 0 && end == .max ? .max : end - 1,
                               ih: ih, into: &batch)
        do { try batch.flush(to: self) } catch { throw .queue(error) }
    }

    /// cache_tag_flush_range for a first-stage domain, gathered into `batch`
    /// (which submits each time it fills; the caller flushes it): one
    /// PASID-IOTLB descriptor, then one PASID device-TLB descriptor per ATS
    /// device the PASID is bound for, all over the same aligned block. No
    /// MAMV check: for first-stage flushes Linux sends whatever mask the
    /// range needs. [0, max] is the whole PASID: PASID-selective, and the
    /// device TLBs over all 2^64 bytes (cache_tag_flush_all).
    public func cacheTagFlushRange(pasid: UInt32, start: UInt64, last: UInt64, ih: Bool,
                                   into batch: inout QIBatch) throws(IOMMUError) {
        guard let entry = remapping.pasidTable.withLock({ $0[pasid] }) else { throw .pasidNotBound(pasid) }
        guard start <= last else { throw .emptyRange(start: start, end: last) }
        let granularity: PASIDIOTLBInvalidation.Granularity
        let deviceRange: DeviceTLBRange
        if start == 0 && last == .max {
            granularity = .pasid
            deviceRange = DeviceTLBRange(base: 0, sizeOrder: 52)
        } else {
            let (address, _, mask) = Self.calculatePSIAlignedAddress(start: start, last: last)
            granularity = .page(address: address, addressMask: mask, invalidationHint: ih)
            deviceRange = DeviceTLBRange(base: address, sizeOrder: Int(mask))
        }
        do {
            try batch.add(InvalidationDescriptor.pasidIOTLB(
                PASIDIOTLBInvalidation(did: entry.did, pasid: pasid, granularity: granularity)).encode(), to: self)
            for device in entry.devices where device.ats {
                try batch.add(InvalidationDescriptor.pasidDeviceTLB(
                    PASIDDeviceTLBInvalidation(sid: device.sid, pasid: pasid, range: deviceRange)).encode(), to: self)
            }
        } catch {
            throw .queue(error)
        }
    }
}
