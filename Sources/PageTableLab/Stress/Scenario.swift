/// A stress scenario: an updater that frees page tables one way, and
/// walkers that race with it. Each mode is a kernel: the safe ones are the
/// fixed kernel, the unsafe ones the kernel before the fix, where the
/// walkers' use-after-free detectors must fire.
public struct Scenario: Sendable {
    public struct Mode: Sendable {
        public let name: String
        public let safe: Bool
        /// An unsafe mode's own detector: the walker the bug is about, which
        /// must be the one to catch it (another walker firing does not
        /// prove this one works). nil for safe modes.
        public let expectedDetector: Detector?
        let profile: @Sendable (inout MMProfile) -> Void
        /// The IOMMU's driver as this mode has it, for scenarios with one.
        var iommu: @Sendable (inout IntelIOMMU.Parameters) -> Void = { _ in }

        /// The kernel with its fix: nothing may be detected.
        static func safe(_ name: String, _ profile: @escaping @Sendable (inout MMProfile) -> Void) -> Mode {
            Mode(name: name, safe: true, expectedDetector: nil, profile: profile)
        }

        /// The kernel before the fix, caught by `detector`.
        static func unsafe(_ name: String, caughtBy detector: Detector,
                           _ profile: @escaping @Sendable (inout MMProfile) -> Void) -> Mode {
            Mode(name: name, safe: false, expectedDetector: detector, profile: profile)
        }

        /// The same mode with its IOMMU set up by `configure`.
        func withIOMMU(_ configure: @escaping @Sendable (inout IntelIOMMU.Parameters) -> Void) -> Mode {
            var mode = self
            mode.iommu = configure
            return mode
        }
    }

    /// What a walker does on each step.
    enum WalkKind: Sendable {
        case gupFast
        case pteOffsetMap
        case pteOffsetMapLock
        case hardware
        /// A DMA translation by an IOMMU bound to the mm through SVA: no
        /// RCU, no IPIs, only the invalidations the notifier sends.
        case dma

        /// Walkers of this kind run on a CPU of the mm (and answer its IPIs).
        var isCPU: Bool { self != .dma }
    }

    public let name: String
    /// Which of a scenario's kernel paths this is (`collapse`: shmem or
    /// anon); nil where there is one.
    public let path: String?
    public let summary: String
    public let modes: [Mode]
    let walks: [WalkKind]
    /// The updater's loop body: one operation on `mm` inside the region.
    let step: @Sendable (MM, StressRegion, inout SplitMix64) throws -> Void

    public func mode(named name: String) -> Mode? { modes.first { $0.name == name } }

    init(name: String, path: String? = nil, summary: String, modes: [Mode], walks: [WalkKind],
         step: @escaping @Sendable (MM, StressRegion, inout SplitMix64) throws -> Void) {
        self.name = name
        self.path = path
        self.summary = summary
        self.modes = modes
        self.walks = walks
        self.step = step
    }

    /// The scenario's mm is bound to an emulated IOMMU through SVA.
    var needsIOMMU: Bool { walks.contains(.dma) }
}

/// Where a scenario works: whole PTE tables, in an otherwise empty 512 GiB
/// region, so freed tables are never shared with other mappings.
public struct StressRegion: Sendable {
    public let base: UInt64
    public let tables: Int
    public var length: UInt64 { UInt64(tables) << 21 }

    func table(_ i: Int) -> UInt64 { base + UInt64(i) << 21 }

    func randomAddress(_ rng: inout SplitMix64) -> UInt64 {
        base + (rng.next() % (length >> 12)) << 12
    }
}
