import PageTableLab
/// A stress scenario: an updater that frees page tables one way, and
/// walkers that race with it. Each mode is a kernel: the safe ones are the
/// fixed kernel, the unsafe ones the kernel before the fix, where the
/// walkers' use-after-free detectors must fire.
public struct Scenario: Sendable {
    public struct Mode: Sendable {
        public let name: String
        /// The detector that must catch this mode under each kind of TLB
        /// flush (the walker the bug is about: another walker firing does
        /// not prove this one works); nil where the mode is the kernel with
        /// its fix, which must detect nothing.
        let detector: @Sendable (TLBFlushKind) -> Detector?
        let profile: @Sendable (inout MMProfile) -> Void
        /// The IOMMU's driver as this mode has it, for scenarios with one.
        var iommu: @Sendable (inout IntelIOMMU.Parameters) -> Void = { _ in }

        public func expectedDetector(under flush: TLBFlushKind) -> Detector? { detector(flush) }
        public func isSafe(under flush: TLBFlushKind) -> Bool { detector(flush) == nil }

        /// A mode whose detector may depend on how TLB flushes are sent
        /// (nil under a kind: nothing may be detected under it), with the
        /// profile and IOMMU it sets up.
        public init(name: String, detector: @escaping @Sendable (TLBFlushKind) -> Detector?,
                    profile: @escaping @Sendable (inout MMProfile) -> Void,
                    iommu: @escaping @Sendable (inout IntelIOMMU.Parameters) -> Void = { _ in }) {
            self.name = name
            self.detector = detector
            self.profile = profile
            self.iommu = iommu
        }

        /// The kernel with its fix: nothing may be detected.
        public static func safe(_ name: String, _ profile: @escaping @Sendable (inout MMProfile) -> Void) -> Mode {
            Mode(name: name, detector: { _ in nil }, profile: profile)
        }

        /// The kernel before the fix, caught by `detector`.
        public static func unsafe(_ name: String, caughtBy detector: Detector,
                           _ profile: @escaping @Sendable (inout MMProfile) -> Void) -> Mode {
            Mode(name: name, detector: { _ in detector }, profile: profile)
        }

        /// Safe while TLB flushes are IPIs, which wait out GUP-fast; caught
        /// by `detector` when they are not.
        public static func safeWithIPIs(_ name: String, caughtWithoutBy detector: Detector,
                                 _ profile: @escaping @Sendable (inout MMProfile) -> Void) -> Mode {
            Mode(name: name, detector: { $0 == .ipi ? nil : detector }, profile: profile)
        }

        /// The same mode with its IOMMU set up by `configure`.
        public func withIOMMU(_ configure: @escaping @Sendable (inout IntelIOMMU.Parameters) -> Void) -> Mode {
            var mode = self
            mode.iommu = configure
            return mode
        }
    }

    /// What a walker does on each step.
    public enum WalkKind: String, Sendable, Codable {
        case gupFast = "gup_fast"
        case pteOffsetMap = "pte_offset_map"
        case pteOffsetMapLock = "pte_offset_map_lock"
        /// A CPU's MMU.
        case hardware = "mmu"
        /// A DMA translation by an IOMMU bound to the mm through SVA: no
        /// RCU, no IPIs, only the invalidations the notifier sends.
        case dma

        /// Walkers of this kind run on a CPU of the mm (and answer its IPIs).
        var isCPU: Bool { self != .dma }
    }

    /// A walker and what it holds while walking.
    public struct Walker: Sendable, Equatable, Codable {
        public let kind: WalkKind
        public let context: LockContext

        enum CodingKeys: String, CodingKey {
            case kind = "walker"
            case context
        }

        public init(kind: WalkKind, context: LockContext) {
            self.kind = kind
            self.context = context
        }

        public static let gupFast = Walker(kind: .gupFast, context: .irqsOff)
        public static let mmu = Walker(kind: .hardware, context: .hardware)
        public static let dma = Walker(kind: .dma, context: .hardware)
        public static func pteOffsetMap(_ context: LockContext) -> Walker { Walker(kind: .pteOffsetMap, context: context) }
        public static let pteOffsetMapLock = Walker(kind: .pteOffsetMapLock, context: .rcu)

        public var description: String { "\(kind.rawValue) (\(context.rawValue))" }
    }

    public let name: String
    /// Which of a scenario's kernel paths this is (`collapse`: shmem or
    /// anon); nil where there is one.
    public let path: String?
    public let summary: String
    public let modes: [Mode]
    public let walkers: [Walker]
    /// Updater threads unless the run says otherwise (only `race` has more).
    public let updaters: Int
    /// Whether its faults follow the THP module parameters (`race`'s safe
    /// mode, built for huge PMDs beside PTE tables). The others map small
    /// pages whatever they say (the lab's default policy, madvise and
    /// never): each exercises a path that frees PTE tables, which faults
    /// that map huge PMDs would not make. A mode may pin it too.
    public let followsTHPParameters: Bool
    /// The updater's loop body: one operation on `mm` inside the region.
    let step: @Sendable (MM, StressRegion, inout SplitMix64) throws -> Void
    /// What the mm holds before the first step, if anything.
    let setUp: (@Sendable (MM, StressRegion) throws -> Void)?

    public func mode(named name: String) -> Mode? { modes.first { $0.name == name } }

    /// A scenario: `step` is one updater operation on `mm` inside `region`
    /// (run by `updaters` threads at once where it is written for that),
    /// `setUp` what the mm holds before the first, `walkers` what each
    /// walker thread walks in turn.
    public init(name: String, path: String? = nil, summary: String, modes: [Mode], walkers: [Walker], updaters: Int = 1,
         followsTHPParameters: Bool = false, setUp: (@Sendable (MM, StressRegion) throws -> Void)? = nil,
         step: @escaping @Sendable (MM, StressRegion, inout SplitMix64) throws -> Void) {
        self.setUp = setUp
        self.name = name
        self.path = path
        self.summary = summary
        self.modes = modes
        self.walkers = walkers
        self.updaters = updaters
        self.followsTHPParameters = followsTHPParameters
        self.step = step
    }

    /// Whether a run of this scenario binds its mm to an emulated IOMMU
    /// (SVA): it has DMA walkers.
    public var needsIOMMU: Bool { walkers.contains { $0.kind == .dma } }
}

/// Where a scenario works: whole PTE tables, in an otherwise empty 512 GiB
/// region, so freed tables are never shared with other mappings.
public struct StressRegion: Sendable {
    public let base: UInt64
    public let tables: Int
    public var length: UInt64 { UInt64(tables) << 21 }
    /// What the updaters did to the region, by kind, where a scenario's
    /// step counts it.
    public let ops = OpTally()

    /// `tables` PTE tables' worth of address space from `base` (2 MiB
    /// aligned).
    public init(base: UInt64, tables: Int) {
        self.base = base
        self.tables = tables
    }

    /// The start of the region's `i`th 2 MiB (one PTE table's span).
    public func table(_ i: Int) -> UInt64 { base + UInt64(i) << 21 }

    public func randomAddress(_ rng: inout SplitMix64) -> UInt64 {
        base + (rng.next() % (length >> 12)) << 12
    }
}
