import PageTableLab

extension Scenario {
    /// Several updaters at once on overlapping ranges, each op under the
    /// lock the kernel takes for it: faults and MADV_DONTNEED (PT_RECLAIM)
    /// under their VMA's lock (the mmap read lock where a writer holds the
    /// VMA, or DONTNEED spans VMAs), munmap + mmap, mremap (of private
    /// tables, whole or split by a read-only part into VMAs that move one
    /// by one (6.17+), and of the shared memory away and back) and
    /// mprotect under the write lock (munmap downgraded), guard regions
    /// installed and removed under the read lock, the collapse of shared
    /// memory under the read lock with the retract under none, and of
    /// private memory (collapse_huge_page) under the write lock. Private memory is
    /// huge PMDs as often as PTE tables, so a partial DONTNEED splits a huge
    /// PMD beside faults, and a partial mprotect under the write lock. What
    /// keeps one updater out of a table another has just unlinked is
    /// pte_offset_map_lock's pmd_same re-check; without it (no-pmd-recheck)
    /// a fault can install a PTE into a table PT_RECLAIM took away — lost,
    /// its page leaked. And since DONTNEED takes only its
    /// VMA's lock (6.17), collapse_huge_page must write-lock the VMA before
    /// it checks the PMD; 6.17-rc1 checked first (collapse-check-first), and
    /// a DONTNEED reclaimed the table the collapse went on to use.
    static let race = Scenario(
        name: "race",
        summary: "several updaters (faults, DONTNEED, munmap/mmap, mremap, mprotect, guard regions, shmem and anonymous collapse, THP splits) vs each other and every kind of walker",
        modes: [
            .safe("kernel") { _ in },
            // Both bugs are a fault's or a collapse's PTE table racing
            // PT_RECLAIM: small pages, whatever thp_enabled says.
            .unsafe("no-pmd-recheck", caughtBy: .staleTableWrite) {
                $0.skipPMDRecheck = true
                $0.thp = THPSettings()
            },
            .unsafe("collapse-check-first", caughtBy: .staleTableWrite) {
                $0.collapseChecksBeforeVMAWrite = true
                $0.thp = THPSettings()
            },
        ],
        walkers: [.gupFast, .pteOffsetMap(.rcu), .pteOffsetMap(.mmapRead), .pteOffsetMap(.rmap), .pteOffsetMapLock, .mmu],
        updaters: 2,
        followsTHPParameters: true,
        setUp: raceSetUp,
        step: raceStep)

    /// The kinds of op `race` takes, by the names its report counts them
    /// under (`op_kinds`).
    enum RaceOp: String {
        case fault
        case dontneed
        /// 64 KiB of a table: splits a huge PMD.
        case dontneedPart = "dontneed_part"
        case munmapMmap = "munmap_mmap"
        case mremap
        /// A table split in three by a read-only part, moved as three VMAs
        /// (6.17+), and the part made writable where it landed.
        case mremapVMAs = "mremap_vmas"
        /// The shared memory moved away, off its alignment, and back.
        case mremapShared = "mremap_shared"
        case collapseAnon = "collapse_anon"
        /// 64 KiB read-only and back: splits the VMA and a huge PMD.
        case mprotect
        case collapseShmem = "collapse_shmem"
        /// The shared memory, collapsed, unmapped and mapped afresh.
        case munmapMmapShared = "munmap_mmap_shared"
        /// 64 KiB guarded and unguarded again (MADV_GUARD_INSTALL, _REMOVE):
        /// tables allocated under the mmap read lock beside PT_RECLAIM, and
        /// kept from it while the markers are in.
        case guardRegion = "guard"
    }

    /// One updater's op in `race`. The region's last quarter is shared
    /// memory, the rest private. Another updater may have changed what an op
    /// expected (a range unmapped, a slot mapped, a range made read-only):
    /// those refusals are the race, not failures, and are counted apart.
    @Sendable static func raceStep(_ mm: MM, _ region: StressRegion, _ rng: inout SplitMix64) throws {
        let layout = RaceLayout(region)
        let index = Int(rng.next() % UInt64(layout.privateTables))
        let table = region.table(index)
        // 64 KiB somewhere in the table: the part a partial op cuts out.
        let part = table + (rng.next() % 32) << 16
        let shared = layout.sharedTable(&rng)
        // Another private table: where an mremap moves this one.
        let other = region.table((index + 1 + Int(rng.next() % UInt64(layout.privateTables - 1))) % layout.privateTables)
        let op: RaceOp
        let choice = rng.next() % 16
        switch choice {
        // An unsafe mode's bug is one op racing PT_RECLAIM: a fault without
        // the re-check (no-pmd-recheck), collapse_huge_page checking before
        // it locks the VMA (collapse-check-first). Only those two ops, or
        // the others dilute the race until a detection can take minutes.
        case _ where mm.profile.skipPMDRecheck: op = choice < 8 ? .fault : .dontneed
        case _ where mm.profile.collapseChecksBeforeVMAWrite: op = choice < 8 ? .collapseAnon : .dontneed
        case 0...3: op = .fault
        case 4...5: op = .dontneed
        case 6: op = .guardRegion
        case 7: op = .dontneedPart
        case 8: op = .munmapMmap
        case 9: op = mm.profile.mremapMovesVMAs && rng.next() % 2 == 0 ? .mremapVMAs : .mremap
        case 10: op = .mremapShared
        case 11: op = .collapseAnon
        case 12: op = .mprotect
        default: op = mm.isHugePMD(shared) ? .munmapMmapShared : .collapseShmem
        }
        // What the op is counted as once done: an mremap by how many VMAs
        // it moved (another updater's mprotect may have split or merged
        // the table meanwhile).
        var kind = op.rawValue
        do {
            switch op {
            case .fault:
                try mm.touch(address: table, length: MM.pmdSize, stride: 64 << 10)
            case .dontneed:
                try mm.madviseDontneed(address: table, length: MM.pmdSize)
            case .dontneedPart:
                // zap_pmd_range splits a huge PMD it only partly covers,
                // beside faults on the same PMD.
                try mm.madviseDontneed(address: part, length: 64 << 10)
            case .munmapMmap:
                try mm.munmap(address: table, length: MM.pmdSize)
                try mm.mmap(address: table, length: MM.pmdSize)
            case .mremap:
                if try mm.mremap(from: table, length: MM.pmdSize, to: other) > 1 { kind = RaceOp.mremapVMAs.rawValue }
            case .mremapVMAs:
                // Counted as a plain mremap where another updater's
                // mprotect merged the part back first. A move refused
                // leaves the part read-only where it is, until an
                // mprotect, a munmap or a move of another updater takes
                // it (faults there are refused meanwhile, as in any race).
                try mm.mprotect(address: part, length: 64 << 10, protection: .r)
                if try mm.mremap(from: table, length: MM.pmdSize, to: other) == 1 { kind = RaceOp.mremap.rawValue }
                try mm.mprotect(address: other + (part - table), length: 64 << 10, protection: .rw)
            case .mremapShared:
                // Every extent moves entry by entry, the way back a copy of
                // its own, without the rmap lock, beside collapses already
                // past the mmap lock whose retract may take a table the move
                // has just allocated.
                let away = region.base + region.length + 2 * MM.pmdSize + (64 << 10)
                try mm.mremap(from: layout.sharedStart, length: layout.sharedLength, to: away)
                try mm.mremap(from: away, length: layout.sharedLength, to: layout.sharedStart)
            case .collapseAnon:
                // collapse_huge_page: the PTE table withdrawn under the
                // write lock and deposited under the new huge PMD.
                try mm.touch(address: table, length: MM.pmdSize, stride: 64 << 10)
                try mm.madviseCollapse(address: table, length: MM.pmdSize)
            case .mprotect:
                // A write in between is refused.
                try mm.mprotect(address: part, length: 64 << 10, protection: .r)
                try mm.mprotect(address: part, length: 64 << 10, protection: .rw)
            case .collapseShmem:
                try mm.touch(address: shared, length: MM.pmdSize, stride: 64 << 10)
                try mm.madviseCollapse(address: shared, length: MM.pmdSize)
            case .munmapMmapShared:
                try mm.munmap(address: layout.sharedStart, length: layout.sharedLength)
                try mm.mmap(address: layout.sharedStart, length: layout.sharedLength, shared: true)
            case .guardRegion:
                try mm.madviseGuardInstall(address: part, length: 64 << 10)
                // Every marker of the private memory goes, wherever a move
                // took it meanwhile: left behind, markers would keep faults,
                // collapses and PT_RECLAIM out of their tables for good. A
                // hole another updater made is no reason to stop.
                do {
                    try mm.madviseGuardRemove(address: region.base, length: layout.sharedStart - region.base)
                } catch .notMapped {}
            }
        } catch {
            switch error {
            // A fault into another updater's guard region is refused too
            // (SIGSEGV), as is one past a VMA it unmapped.
            case .notMapped, .mappingExists, .moveAcrossVMAs, .collapseRefused, .accessDenied, .guardRegion:
                region.ops.refused(op.rawValue)
                return
            default: throw error
            }
        }
        region.ops.done(kind)
    }

    /// The mappings `race` starts from.
    @Sendable static func raceSetUp(_ mm: MM, _ region: StressRegion) throws {
        let layout = RaceLayout(region)
        guard layout.privateTables >= 2 else {
            throw StressError.invalidOption("race needs at least 3 tables (2 private to move between, 1 shared), not \(region.tables)")
        }
        try mm.mmap(address: region.base, length: layout.sharedStart - region.base)
        try mm.mmap(address: layout.sharedStart, length: layout.sharedLength, shared: true)
    }
}

/// `race`'s region: private tables, then a quarter (at least one) shared.
private struct RaceLayout {
    let region: StressRegion
    let privateTables: Int
    let sharedTables: Int

    init(_ region: StressRegion) {
        self.region = region
        sharedTables = max(1, region.tables / 4)
        privateTables = region.tables - sharedTables
    }

    var sharedStart: UInt64 { region.table(privateTables) }
    var sharedLength: UInt64 { region.base + region.length - sharedStart }

    func sharedTable(_ rng: inout SplitMix64) -> UInt64 {
        region.table(privateTables + Int(rng.next() % UInt64(sharedTables)))
    }
}
