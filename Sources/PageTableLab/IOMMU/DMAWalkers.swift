import Synchronization

/// DMA engines: threads that keep asking the IOMMU to translate, as a
/// device streaming through memory does. They are RCUThreads only to share
/// the thread plumbing: they never enter a read section, because hardware
/// cannot; whatever protects them must come from invalidation.
public final class DMAWalkers: @unchecked Sendable {
    private let running = Atomic<Bool>(true)
    private var threads: [RCUThread] = []
    /// Translations issued, over all walkers.
    public let translations = Atomic<UInt64>(0)
    /// Those that came back translated: what says the walkers reached
    /// live tables at all.
    public let translated = Atomic<UInt64>(0)

    /// Start `count` walkers. Walker `w` issues `request(w, i)` for
    /// i = 0, 1, 2, …, through `device` when given (its context entry and
    /// TLB) or straight to the IOMMU, until `stop`. `onResult` sees every
    /// outcome (to count or check what was translated).
    public init(iommu: IntelIOMMU, device: DMADevice? = nil, count: Int,
                request: @escaping @Sendable (_ walker: Int, _ iteration: UInt64) -> DMARequest,
                onResult: (@Sendable (_ walker: Int, DMATranslation) -> Void)? = nil) {
        for w in 0..<count {
            threads.append(RCUThread { [self] in
                var i: UInt64 = 0
                while running.load(ordering: .relaxed) {
                    let r = request(w, i)
                    let result = device.map { iommu.translate(r, device: $0) } ?? iommu.translate(r)
                    onResult?(w, result)
                    translations.add(1, ordering: .relaxed)
                    if case .translated = result { translated.add(1, ordering: .relaxed) }
                    i &+= 1
                }
            })
        }
    }

    /// Stop every walker and wait for it. Idempotent.
    public func stop() {
        running.store(false, ordering: .relaxed)
        for t in threads { t.join() }
    }

    deinit { stop() }
}
