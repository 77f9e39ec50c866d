extension IntelIOMMU {
    /// The page-selective form that covers pages `first`…`last` (inclusive
    /// addresses): the smallest naturally aligned block of 2^mask pages
    /// holding both. A range that straddles a large alignment boundary needs
    /// a large mask, as in the kernel's calculate_psi_aligned_address.
    public static func addressMask(first: UInt64, last: UInt64) -> (address: UInt64, mask: UInt8) {
        let differing = (first >> 12) ^ (last >> 12)
        let mask = UInt8(UInt64.bitWidth - differing.leadingZeroBitCount)
        let span: UInt64 = mask >= 52 ? .max : (4096 << UInt64(mask)) - 1
        return (first & ~span, mask)
    }

    /// Invalidate [start, end) of a bound PASID and wait: one PASID-IOTLB
    /// descriptor, plus a PASID device-TLB descriptor for each present ATS
    /// device, sharing one wait. `end == UInt64.max` (TLB_FLUSH_ALL), or a
    /// range whose mask exceeds MAMV, becomes a PASID-selective flush, which
    /// drops every paging-structure entry of the PASID.
    ///
    /// `ih` is the invalidation hint: true promises that only leaf entries
    /// changed, and leaves the paging-structure caches alone. Pass it only
    /// when no page table was freed in the range.
    public func iommuSVAInvalidateRange(pasid: UInt32, start: UInt64, end: UInt64, ih: Bool = false) throws(IOMMUError) {
        var batch = QIBatch()
        try iommuSVAInvalidateRange(pasid: pasid, start: start, end: end, ih: ih, into: &batch)
        do { try batch.flush(to: self) } catch { throw .queue(error) }
    }

    /// The same descriptors, gathered into `batch` (which submits each time
    /// it fills), so that a flush of many PASIDs shares waits, 16 descriptors
    /// to a wait. The caller flushes the batch.
    public func iommuSVAInvalidateRange(pasid: UInt32, start: UInt64, end: UInt64, ih: Bool = false,
                                        into batch: inout QIBatch) throws(IOMMUError) {
        guard let entry = remapping.pasidTable.withLock({ $0[pasid] }) else { throw .pasidNotBound(pasid) }
        guard start < end else { throw .emptyRange(start: start, end: end) }
        var granularity = PASIDIOTLBInvalidation.Granularity.pasid
        var deviceRange = DeviceTLBRange(base: 0, sizeOrder: 52)
        if end != .max {
            let (address, mask) = Self.addressMask(first: start, last: end - 1)
            if mask <= parameters.maxAddressMask {
                granularity = .page(address: address, addressMask: mask, invalidationHint: ih)
                deviceRange = DeviceTLBRange(base: address, sizeOrder: Int(mask))
            }
        }
        do {
            try batch.add(InvalidationDescriptor.pasidIOTLB(
                PASIDIOTLBInvalidation(did: entry.did, pasid: pasid, granularity: granularity)).encode(), to: self)
            for device in entry.devices where device.ats && device.isPresent {
                try batch.add(InvalidationDescriptor.pasidDeviceTLB(
                    PASIDDeviceTLBInvalidation(sid: device.sid, pasid: pasid, range: deviceRange)).encode(), to: self)
            }
        } catch {
            throw .queue(error)
        }
    }
}
