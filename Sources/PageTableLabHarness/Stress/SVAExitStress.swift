import PageTableLab

/// `ptlab stress sva-exit`: processes that die with their device still
/// bound through SVA, while DMA keeps coming.
///
/// do_exit runs exit_mm before exit_files, so a process killed with a
/// device file open reaches exit_mmap bound: mmu_notifier_release first
/// (intel_mm_release clears the PASID entry and flushes), then the teardown,
/// whose flushes no longer reach the IOMMU, then, when the files close, the
/// driver's unbind. Two PASIDs stand for two such processes. In turn for
/// each, the updater unbinds the one that died there last (its files
/// close), creates an mm, binds it, maps and faults in its region, frees
/// one PTE table of it with MADV_DONTNEED (PT_RECLAIM: a flush the notifier
/// still carries), and exits it while bound. The dead process's bond stays
/// through the other's whole life, so its tables are freed, after their
/// grace period, while the IOMMU would still walk them if the release had
/// done nothing. DMA walkers translate random addresses of both PASIDs
/// throughout: a released PASID must fault, never reach a freed table.
public struct SVAExitStress {
    /// The mode names `--mode` takes: sva_mm_release's values.
    public static let modes = SVAMMRelease.allCases.map(\.rawValue)
    static let pasids: [UInt32] = [1, 2]
    static let stride: UInt64 = 64 << 10

    public let options: StressOptions
    public let release: SVAMMRelease
    public var safe: Bool { release == .teardown }

    public init(_ options: StressOptions) throws(StressError) {
        guard let release = SVAMMRelease(rawValue: options.mode) else {
            throw .unknownMode(scenario: "sva-exit", mode: options.mode, known: Self.modes)
        }
        guard options.walkers >= 1, options.walkers <= 64 else { throw .invalidOption("--walkers must be 1...64") }
        guard options.duration > 0 else { throw .invalidOption("--duration must be positive") }
        self.options = options
        self.release = release
    }

    public func run(allocator: PageAllocator) throws -> StressResult {
        let books = StressBooks(allocator)
        return try RCU.withRegisteredThread {
            var parameters = options.iommu
            parameters.mmRelease = release
            let iommu = try IntelIOMMU(allocator: allocator, parameters: parameters)
            let sva = SVA(iommu: iommu)
            let region = StressRegion(base: 4 << 40, tables: options.tables)
            let seed = options.seed
            let walkers = DMAWalkers(iommu: iommu, count: options.walkers) { w, i in
                var rng = SplitMix64(seed: seed ^ UInt64(w) << 56 ^ i)
                let r = rng.next()
                // The pages a process faults in (one each 64 KiB), so that a
                // walk of a live process mostly reaches a mapped one.
                let page = rng.next() % (region.length / Self.stride)
                return DMARequest(pasid: Self.pasids[Int(r % UInt64(Self.pasids.count))],
                                  address: region.base + page * Self.stride, write: r & 2 == 2)
            }

            // The bond of the process that died last on each PASID, which
            // its driver has yet to unbind.
            var dead: [SVABond?] = Self.pasids.map { _ in nil }
            var rng = SplitMix64(seed: seed)
            var unbindFailures = 0
            var tlbFlushes = 0
            let (ops, elapsed, failure) = options.runIOMMUUpdater(iommu: iommu, walkers: walkers, safe: safe) { i in
                let slot = i % Self.pasids.count
                if let bond = dead[slot] {
                    dead[slot] = nil
                    do { try sva.unbind(bond) } catch { unbindFailures += 1 }
                }
                let mm = try MM(allocator: allocator)
                defer {
                    mm.exit()
                    tlbFlushes += mm.tlb.remoteFlushes.load(ordering: .relaxed)
                }
                dead[slot] = try sva.bind(mm, pasid: Self.pasids[slot], did: 1)
                try live(mm, region: region, rng: &rng)
            }
            walkers.stop()
            for case let bond? in dead {
                do { try sva.unbind(bond) } catch { unbindFailures += 1 }
            }
            let stillBound = sva.boundPASIDs.count
            let end = try IOMMURunEnd(iommu: iommu, sva: sva, walkers: walkers, books: books, failure: failure)
            var problems = end.lockupProblem.map { [$0] } ?? []
            if unbindFailures > 0 { problems.append("\(unbindFailures) unbinds failed") }
            if stillBound > 0 { problems.append("\(stillBound) PASIDs still bound after the run") }
            if safe && end.stats.faults == 0 {
                problems.append("no DMA faulted: the walkers never met a released PASID; give it a longer --duration")
            }
            var result = StressResult(
                iommuRun: "sva-exit", mode: release.rawValue, safe: safe, options: options, ops: ops, elapsed: elapsed,
                dma: walkers, end: end, books: books, tablesFreed: books.tablesFreedSince,
                rcuCallbacks: books.callbacksSince, tlbFlushes: tlbFlushes, invalidationsPerTable: nil, faultsInjected: nil)
            result.exitsWhileBound = ops
            result.dmaFaults = Int(end.stats.faults)
            result.judge(problems: problems)
            return result
        }
    }

    /// One process's life, bound: its region mapped and faulted in, one PTE
    /// table reclaimed by MADV_DONTNEED. The caller exits it while bound.
    private func live(_ mm: MM, region: StressRegion, rng: inout SplitMix64) throws {
        try mm.mmap(address: region.base, length: region.length)
        try mm.touch(address: region.base, length: region.length, stride: Self.stride)
        try mm.madviseDontneed(address: region.table(Int(rng.next() % UInt64(region.tables))), length: MM.pmdSize)
    }
}
