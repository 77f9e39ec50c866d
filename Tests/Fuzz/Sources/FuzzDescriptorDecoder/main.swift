import PageTableLab

/// libFuzzer's entry for the VT-d descriptor decoder, which reads whatever
/// software left in the invalidation queue. Input: one configuration byte
/// (bit 0: a 256-bit queue; bits 6:1: the capability's maximum address
/// mask), then the descriptor's bytes as they lie in the queue (any number:
/// too few must be a fetch error). The decoder must be total, and what it
/// accepts must survive re-encoding unchanged with the type it was read as.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDescriptorDecoder(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let width: DescriptorWidth = data[0] & 1 == 0 ? .bits128 : .bits256
    let mask = (data[0] >> 1) & 63
    let bytes = UnsafeBufferPointer(start: data + 1, count: size - 1)
    switch InvalidationDescriptor.decode(bytes: bytes, width: width, maxAddressMask: mask) {
    case .success(let descriptor):
        let raw = descriptor.encode()
        precondition(raw.type == descriptor.typeCode, "\(descriptor) encodes as type \(raw.type)")
        precondition(raw.type == bytes[0] & 0xF | (bytes[1] >> 1 & 0x7) << 4,
                     "decoded \(descriptor) from a descriptor of another type")
        let again = InvalidationDescriptor.decode(raw, width: width, maxAddressMask: mask)
        precondition(again == .success(descriptor), "\(descriptor) re-encoded as \(raw) decodes as \(again)")
    case .failure(let error):
        if bytes.count < width.bytes {
            precondition(error.reason == .fetchError, "a short descriptor gave \(error)")
        }
    }
    return 0
}
