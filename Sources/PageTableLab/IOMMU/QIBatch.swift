/// struct qi_batch: descriptors gathered so that up to 16 share one wait
/// descriptor (QI_MAX_BATCHED_DESC_COUNT), instead of one qi_submit_sync
/// each. Fixed inline storage: gathering allocates nothing.
public struct QIBatch: Sendable {
    public static let capacity = 16
    private var descriptors = InlineArray<16, RawDescriptor>(repeating: .zero)
    public private(set) var count = 0

    public init() {}

    /// qi_batch_add_desc: add, and submit when the batch is full.
    public mutating func add(_ descriptor: RawDescriptor, to iommu: IntelIOMMU) throws(QIError) {
        descriptors[count] = descriptor
        count += 1
        if count == Self.capacity { try flush(to: iommu) }
    }

    /// qi_batch_flush_descs: submit what was gathered (nothing if empty).
    /// The batch is empty afterwards, whether or not the submission failed.
    public mutating func flush(to iommu: IntelIOMMU) throws(QIError) {
        guard count > 0 else { return }
        let n = count
        count = 0
        try descriptors.span.withUnsafeBufferPointer { (all) throws(QIError) in
            try iommu.qiSubmitSync(UnsafeBufferPointer(rebasing: all[..<n]))
        }
    }
}
