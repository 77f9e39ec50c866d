import ArgumentParser
import Foundation
import PageTableLab
import PageTableLabHarness

/// `ptlab stress`: one freeing mechanism against concurrent walkers, in the
/// manner of the kernel's test modules: a seed, a thread count, a duration,
/// and a closing line that says PASS or FAIL.
struct StressCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stress",
        abstract: "Hammer one page-table freeing mechanism with concurrent walkers; report use-after-free detections.",
        discussion: """
            Each scenario runs walker threads ("CPUs") against updater threads on real memory. \
            A safe mode is the kernel with its fix: it must detect nothing and return every \
            page. An unsafe mode is the kernel before the fix: its detector must fire, which \
            is what proves the detector works.

            Each walker walks in a lock context, as its kernel caller does: GUP-fast with IRQs \
            off (irqs-off), pte_offset_map with nothing but RCU (rcu), under the mmap read lock \
            (mmap-read) or under the rmap lock (rmap), pte_offset_map_lock under RCU and the \
            ptlock, and the MMU or an IOMMU with no lock at all (hardware). Each updater takes \
            the locks its operation takes in the kernel: the mmap write lock for mmap, munmap \
            (downgraded to read to zap), mremap and mprotect, and with it each VMA it changes \
            (vma_start_write); faults lock only their VMA (per-VMA locks, 6.4+), and so does \
            MADV_DONTNEED inside one VMA (6.17+), so they run beside writers of other VMAs \
            (the JSON's vma_locks counts which lock each took); the read lock for collapse \
            (whose retract takes the write lock before 6.6: --path shmem-pre-6.6); and \
            pte_offset_map_lock, with its pmd_same re-check, for \
            every PTE table it changes. The report names the walkers with their contexts \
            and the number of updaters.

            Scenarios and modes (the first is the default):
            \(StressCommand.catalogue)
              all            every mode of every scenario; unsafe ones stop at their first detection

            The module parameter tlb_flush says how a TLB flush reaches other CPUs: ipi (x86 \
            native, the default), which a CPU answers only with IRQs on and so also waits out \
            GUP-fast, or no-ipi (AMD INVLPGB, a paravirt flush), which does not. A mode can be \
            safe under one and not the other: unmap's no-rcu (tables freed right after the \
            flush) is the x86 native kernel before RCU table freeing, safe with IPIs and caught \
            by GUP-fast with --param tlb_flush=no-ipi.

            thp_enabled and thp_shmem_enabled (the running kernel's unless set) decide \
            whether race's faults map huge PMDs in its safe mode. Every other run maps small \
            pages whatever they say, since its path frees PTE tables; the report's thp policy \
            (thp in --json) says what a run's faults followed.

            kernel-free, iommu-faults and sva-exit bring up the emulated VT-d IOMMU with the \
            module parameters qi_driver (robust, the default, or linux: Linux's qi_submit_sync \
            and qi_check_fault step for step) and sva_notifier_ih; sva-exit's mode is the \
            notifier's release (sva_mm_release: teardown, as intel_mm_release clears the PASID \
            entry before exit_mmap frees a table, or no-release). Where Linux's driver would spin \
            for ever the run stops with the lockup as its verdict (qi_lockup in --json), \
            never a hang: `ptlab stress iommu-faults --mode per-page --param qi_driver=linux` \
            shows, every time, an IQE inside a batched flush that Linux's qi_check_fault never \
            clears (README.md, "The IOMMU model").

            oom-reap kills processes while their threads still fault and MADV_DONTNEED and \
            walkers walk: the OOM reaper (or process_mrelease) zaps their private memory under \
            the mmap read lock beside those threads, and in one process in four beside its own \
            exit_mmap. A fault that begins after a reap must get SIGBUS (MMF_UNSTABLE, \
            sigbus_faults in --json); its mode ignore-unstable, the kernel before it, maps the \
            memory again, caught by reaped_refault.

            Exit status: 0 when every run passed; 1 when a safe run detected a use-after-free \
            or leaked pages, an unsafe run detected nothing, or qi_submit_sync locked up.

            Examples:
              ptlab stress collapse --mode immediate --duration 3
              ptlab stress batch-fail --fallback ipi-sync --walkers 2 --json
              ptlab stress race --updaters 3 --duration 10
              ptlab stress race --param thp_enabled=always --param thp_shmem_enabled=always
              ptlab stress unmap --mode no-rcu --param tlb_flush=no-ipi
              ptlab stress kernel-free --mode no-invalidate
              ptlab stress iommu-faults --mode per-page --param qi_driver=linux
              ptlab stress sva-exit --mode no-release --stop-on-detect
              ptlab stress oom-reap --updaters 3 --duration 10
              ptlab stress all --duration 2 --json
            """)

    @Argument(help: "Scenario to run, or `all`.")
    var scenario: String

    @Option(help: "Mode of the scenario (see the list above).")
    var mode: String?

    @Option(help: "batch-fail only: the tlb_remove_table_one fallback (\(Scenario.named("batch-fail")!.modes.map(\.name).joined(separator: ", "))); same as --mode.")
    var fallback: String?

    @Option(help: "collapse only: the kernel path, shmem (collapse_file + the retract, the default), shmem-pre-6.6 (the same under 6.1's mmap write locks and sync IPI) or anon (collapse_huge_page).")
    var path: String?

    /// The least time an unsafe run under `all` is given to detect. A
    /// bound, not a wait: the run stops at its first detection. Races
    /// between two updaters need them on CPUs at once, so on a loaded
    /// machine their first detection can take many times its idle time.
    static let unsafeBoundUnderAll = 60.0

    @Option(parsing: .unconditional, help: "Seconds to run (an unsafe run under `all` stops at its own detector's first detection, and has at least 60 s for it).")
    var duration: Double = 3

    @Option(parsing: .unconditional, help: "Walker threads: 1...256 (kernel-free, iommu-faults and sva-exit: 1...64).")
    var walkers: Int = 2

    @Option(parsing: .unconditional, help: "race and oom-reap: updater threads (default 2; oom-reap: 1...16).")
    var updaters: Int?

    @Option(help: "Seed for the updater's and walkers' choices; printed, so a run can be repeated.")
    var seed: UInt64 = 1

    @Flag(help: "Stop an unsafe run at its first detection.")
    var stopOnDetect = false

    @Flag(help: "Print one JSON object instead of a table.")
    var json = false

    /// The harness's self-test (tests use it to see a failing safe run exit 1).
    @Option(help: ArgumentHelp("Inject a bug into the run: double-free (frees one page twice at the end).",
                               visibility: .hidden))
    var inject: String?

    @OptionGroup var module: ModuleParameterOptions

    static var catalogue: String {
        var lines = Scenario.all.map { s in
            let name = s.path.map { "\(s.name) --path \($0)" } ?? s.name
            let modes = s.modes.map { mode in
                let ipi = mode.expectedDetector(under: .ipi), noIPI = mode.expectedDetector(under: .noIPI)
                if ipi == nil, let noIPI { return mode.name + " (\(noIPI.rawValue) with tlb_flush=no-ipi)*" }
                return mode.name + (ipi.map { " (\($0.rawValue))*" } ?? "")
            }
            let walkers = s.walkers.map { "\($0.kind.rawValue) [\($0.context.rawValue)]" }.joined(separator: ", ")
            let updaters = s.updaters > 1 ? "; \(s.updaters) updaters" : ""
            return "  \(name)\n    \(modes.joined(separator: ", "))\n    \(s.summary)\n    walkers: \(walkers)\(updaters)"
        }
        lines.append("  kernel-free\n    deferred, per-page, no-invalidate (iommu_from_cache)*\n" +
                     "    DMA walkers on SVA-bound PASIDs vs the kernel's own table frees:\n" +
                     "    pmd_free_pte_page, pud_free_pmd_page, memory hot-remove, CPA collapse")
        lines.append("  iommu-faults\n    deferred, per-page\n" +
                     "    kernel-free while IQE, ITE, ICE and queue-full are injected")
        lines.append("  sva-exit\n    teardown, no-release (iommu_from_cache)*\n" +
                     "    processes exiting with their device still bound (SVA) vs DMA walkers:\n" +
                     "    exit_mmap's mmu_notifier_release, the teardown, the driver's later unbind")
        lines.append("  oom-reap\n    \(OOMReapStress.modes[0]), \(OOMReapStress.modes[1]) (\(Detector.reapedRefault.rawValue))*\n" +
                     "    processes killed while their threads fault and DONTNEED (PT_RECLAIM):\n" +
                     "    the OOM reaper beside them, then beside exit_mmap; a fault after a\n" +
                     "    reap gets SIGBUS (MMF_UNSTABLE)\n" +
                     "    walkers: " + OOMReapStress.walkers.map { "\($0.kind.rawValue) [\($0.context.rawValue)]" }.joined(separator: ", ")
                     + "; 2 updaters")
        return lines.joined(separator: "\n") + "\n  (* unsafe: the kernel before the fix; in brackets, the detector that must catch it)"
    }

    func validate() throws {
        if mode != nil && fallback != nil { throw ValidationError("give --mode or --fallback, not both") }
        if fallback != nil && scenario != "batch-fail" { throw ValidationError("--fallback belongs to batch-fail") }
        if let path, Scenario.paths(of: scenario).isEmpty || !Scenario.paths(of: scenario).contains(path) {
            let known = Scenario.paths(of: scenario)
            throw ValidationError(known.isEmpty ? "--path belongs to collapse"
                                  : "scenario '\(scenario)' has no path '\(path)' (paths: \(known.joined(separator: ", ")))")
        }
        if let inject, inject != "double-free" { throw ValidationError("--inject knows only double-free, not '\(inject)'") }
        if inject != nil && Scenario.named(scenario) == nil {
            throw ValidationError("--inject works with the scenarios of \(Scenario.names.joined(separator: ", "))")
        }
        if let updaters, scenario != "all" {
            let racing = Scenario.all.filter { $0.updaters > 1 }.map(\.name) + ["oom-reap"]
            guard racing.contains(scenario) else {
                throw ValidationError("--updaters belongs to \(racing.joined(separator: ", ")): scenario '\(scenario)' has one updater")
            }
            guard (1...64).contains(updaters) else { throw ValidationError("--updaters must be 1...64") }
        }
        if scenario == "all" && mode != nil {
            throw ValidationError("--mode does not apply to 'all', which runs every mode of every scenario")
        }
        // Every run's options checked before the first starts: under `all`
        // a limit of the twentieth scenario must not end the run after
        // nineteen, with their results lost.
        let params = try module.resolve()
        for run in try plan(flush: params.tlbFlush) {
            do throws(StressError) {
                _ = try Self.runner(options(for: run, params: params))
            } catch {
                throw ValidationError("\(run.scenario): \(error)")
            }
        }
    }

    /// THP parameters set for runs that map small pages whatever they say
    /// are said to be unused, not silently dropped.
    private func noteTHPParameters(_ params: ModuleParameters, results: [StressResult]) {
        guard params.string("thp_enabled") != "kernel" || params.string("thp_shmem_enabled") != "kernel" else { return }
        let small = results.filter { !$0.followed(params) }.map { "\($0.scenario)/\($0.mode)" }
        guard !small.isEmpty else { return }
        Diagnostics.warn("thp_enabled and thp_shmem_enabled apply to race's safe mode; \(small.joined(separator: ", ")) map small pages "
            + "whatever they say (their paths free PTE tables, which huge PMDs from faults would not make)")
    }

    /// The stress options for one planned run.
    private func options(for run: PlannedRun, params: ModuleParameters) -> StressOptions {
        var options = StressOptions(scenario: run.scenario, mode: run.mode)
        options.path = run.path
        // Under `all` an unsafe run stops at its detector's first
        // detection; a short --duration sized for the safe runs must
        // not cut it off before its detector had a fair chance.
        options.duration = scenario == "all" && !run.safe ? max(duration, Self.unsafeBoundUnderAll) : duration
        options.walkers = walkers
        options.updaters = run.scenario == "oom-reap" || Scenario.named(run.scenario).map { $0.updaters > 1 } == true ? updaters : nil
        options.tlbFlush = run.tlbFlush
        options.thp = params.thp
        options.seed = seed
        options.iommu = params.iommu
        options.stopOnDetection = stopOnDetect || (scenario == "all" && !run.safe)
        options.injectDoubleFree = inject == "double-free"
        return options
    }

    /// The run `options` describe, checked: the IOMMU scenarios' own
    /// runner, or the lab's.
    private static func runner(_ options: StressOptions) throws(StressError) -> (PageAllocator) throws -> StressResult {
        switch options.scenario {
        case "kernel-free": try KernelFreeStress(options).run(allocator:)
        case "iommu-faults": try KernelFreeStress(options, injectFaults: true).run(allocator:)
        case "sva-exit": try SVAExitStress(options).run(allocator:)
        case "oom-reap": try OOMReapStress(options).run(allocator:)
        default: try StressRunner(options).run(allocator:)
        }
    }

    func run() throws {
        let params = try module.resolve()
        Diagnostics.warnIfDebugBuild("stress")
        let plan = try self.plan(flush: params.tlbFlush)
        var results: [StressResult] = []
        for run in plan {
            var options = options(for: run, params: params)
            let progress = ProgressLine("stress \(run.scenario)\(run.path.map { "(\($0))" } ?? "")/\(run.mode)\(run.tlbFlush == params.tlbFlush ? "" : " tlb_flush=\(run.tlbFlush.rawValue)")")
            options.progress = { p in
                progress.update(String(format: "%.1f/%.0fs  ops %d  walks %d  uaf %d", p.elapsed, p.duration, p.ops, p.walks, p.uaf))
            }
            let lab = try Lab(parameters: params)
            var result = try Self.runner(options)(lab.allocator)
            let exit = try lab.unload()
            // A run whose bug loses pages leaves them behind by design.
            let leaksByDesign = result.expectedDetector?.losesPages == true && exit.outstandingCallbacks == 0
            if !exit.clean && !leaksByDesign && result.pass {
                result.pass = false
                result.verdict = "module_exit found pages or callbacks left: \(exit.leakedPages) / \(exit.outstandingCallbacks)"
            }
            progress.finish()
            results.append(result)
            if !json { printTable(result, params: params) }
        }
        noteTHPParameters(params, results: results)
        if json {
            if self.scenario == "all" { try JSONOutput.print(StressSummary(runs: results)) } else { try JSONOutput.print(results[0]) }
        } else if results.count > 1 {
            let failed = results.filter { !$0.pass }
            print("stress all: \(results.count - failed.count) passed, \(failed.count) failed")
        }
        if results.contains(where: { !$0.pass }) { throw ExitCode(1) }
    }

    /// One run asked for.
    private struct PlannedRun {
        var scenario: String
        var path: String?
        var mode: String
        var safe: Bool
        var tlbFlush = TLBFlushKind.ipi
    }

    /// Each run asked for, in order.
    private func plan(flush: TLBFlushKind) throws -> [PlannedRun] {
        let iommuModes = KernelFreeStress.modes
        if scenario == "all" {
            // A mode whose verdict depends on the flush runs under both kinds.
            var runs = Scenario.all.flatMap { s in
                s.modes.flatMap { mode in
                    let kinds = mode.isSafe(under: .ipi) == mode.isSafe(under: .noIPI) ? [flush] : [flush] + TLBFlushKind.allCases.filter { $0 != flush }
                    return kinds.map { PlannedRun(scenario: s.name, path: s.path, mode: mode.name, safe: mode.isSafe(under: $0), tlbFlush: $0) }
                }
            }
            runs += iommuModes.map { PlannedRun(scenario: "kernel-free", mode: $0, safe: $0 != "no-invalidate", tlbFlush: flush) }
            runs += ["deferred", "per-page"].map { PlannedRun(scenario: "iommu-faults", mode: $0, safe: true, tlbFlush: flush) }
            runs += SVAExitStress.modes.map { PlannedRun(scenario: "sva-exit", mode: $0, safe: $0 == SVAMMRelease.teardown.rawValue, tlbFlush: flush) }
            runs += OOMReapStress.modes.map { PlannedRun(scenario: "oom-reap", mode: $0, safe: $0 == OOMReapStress.modes[0], tlbFlush: flush) }
            return runs
        }
        let chosen = mode ?? fallback
        if scenario == "kernel-free" || scenario == "iommu-faults" {
            let m = chosen ?? "deferred"
            guard iommuModes.contains(m) else {
                throw ValidationError("scenario '\(scenario)' has no mode '\(m)' (modes: \(iommuModes.joined(separator: ", ")))")
            }
            return [PlannedRun(scenario: scenario, mode: m, safe: m != "no-invalidate", tlbFlush: flush)]
        }
        if scenario == "sva-exit" {
            let m = chosen ?? SVAMMRelease.teardown.rawValue
            guard SVAExitStress.modes.contains(m) else {
                throw ValidationError("scenario 'sva-exit' has no mode '\(m)' (modes: \(SVAExitStress.modes.joined(separator: ", ")))")
            }
            return [PlannedRun(scenario: scenario, mode: m, safe: m == SVAMMRelease.teardown.rawValue, tlbFlush: flush)]
        }
        if scenario == "oom-reap" {
            let m = chosen ?? OOMReapStress.modes[0]
            guard OOMReapStress.modes.contains(m) else {
                throw ValidationError("scenario 'oom-reap' has no mode '\(m)' (modes: \(OOMReapStress.modes.joined(separator: ", ")))")
            }
            return [PlannedRun(scenario: scenario, mode: m, safe: m == OOMReapStress.modes[0], tlbFlush: flush)]
        }
        guard let s = Scenario.named(scenario, path: path) else {
            let known = Scenario.names + ["kernel-free", "iommu-faults", "sva-exit", "oom-reap", "all"]
            throw ValidationError("unknown scenario '\(scenario)' (scenarios: \(known.joined(separator: ", ")))")
        }
        let m = chosen ?? s.modes[0].name
        guard let found = s.mode(named: m) else {
            let on = s.path.map { " on path \($0)" } ?? ""
            throw ValidationError("scenario '\(scenario)'\(on) has no mode '\(m)' (modes: \(s.modes.map(\.name).joined(separator: ", ")))")
        }
        return [PlannedRun(scenario: s.name, path: s.path, mode: found.name, safe: found.isSafe(under: flush), tlbFlush: flush)]
    }

    private func printTable(_ r: StressResult, params: ModuleParameters) {
        let rows: [(String, String)] = [
            ("scenario", "\(r.scenario)\(r.path.map { " --path \($0)" } ?? "") / \(r.mode) (\(r.safe ? "safe" : "unsafe: the kernel before the fix"))"),
            ("seed", "\(r.seed)\(params.commandLine.isEmpty ? "" : "  " + params.commandLine.joined(separator: " "))"),
            ("walkers", "\(r.walkers) threads, each: " + r.walkerContexts.map { "\($0.kind.rawValue) [\($0.context.rawValue)]" }.joined(separator: ", ")),
            ("updaters", "\(r.updaters)"),
            ("tlb flush", r.tlbFlush.rawValue),
            ("duration", String(format: "%.2f s", r.durationSeconds)),
            ("updater ops", "\(r.ops)"),
            ("walks", "\(r.walks)"),
            ("use-after-free", "\(r.uafDetected)  \(detail(r.detections))"),
            ("must be caught by", r.expectedDetector?.rawValue ?? "nothing may be caught (safe)"),
            ("integrity", r.integrity.isClean ? "clean" : r.integrity.problems.joined(separator: "; ")),
            ("tables freed", "\(r.tablesFreed)"),
            ("rcu callbacks", "\(r.rcuCallbacks)"),
            ("tlb flushes", "\(r.tlbFlushes)"),
            ("thp policy", "enabled=\(r.thp.enabled) shmem_enabled=\(r.thp.shmemEnabled)"
                + (r.followed(params) ? "" : " (this run maps small pages whatever the parameters say)")),
            ("thp events", thp(r.thpEvents)),
            ("vma lock / mmap lock", vmaLocks(r.vmaLocks)),
            ("VmPTE at the end", "\(r.vmPTEBytes >> 10) kB accounted, \(r.tableBytesHeld >> 10) kB of tables held"),
            ("peak deferred", "\(r.peakDeferredBytes) bytes"),
            ("free latency", freeLatency(r.freeLatencyUs)),
            ("leaked pages", "\(r.leakedPages)"),
        ] + opRows(r) + iommuRows(r) + reapRows(r)
        for (k, v) in rows { print("  \(k.padding(toLength: 24, withPad: " ", startingAt: 0)) \(v)") }
        print(r.pass ? "PASS \(r.scenario)/\(r.mode)" : "FAIL \(r.scenario)/\(r.mode): \(r.verdict)")
    }

    /// Each kind of op, done and (if any) refused, where the scenario counts them.
    private func opRows(_ r: StressResult) -> [(String, String)] {
        guard let kinds = r.opKinds else { return [] }
        return [("op kinds (done/refused)", kinds.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value.done)/\($0.value.refused)" }
            .joined(separator: ", "))]
    }

    /// Faults and DONTNEEDs under their VMA's lock / under the mmap read
    /// lock, and how many of the first beside a writer.
    private func vmaLocks(_ l: StressResult.VMALocks) -> String {
        "faults \(l.faultVMA)/\(l.faultMMap) (\(l.faultBesideWriter) beside a writer), "
            + "dontneed \(l.dontneedVMA)/\(l.dontneedMMap) (\(l.dontneedBesideWriter) beside a writer)"
    }

    /// Only the events that happened: most scenarios map no huge page.
    private func thp(_ e: StressResult.THPEvents) -> String {
        let parts = [("fault_alloc", e.faultAlloc), ("fault_fallback", e.faultFallback), ("collapse_alloc", e.collapseAlloc),
                     ("split_pmd", e.splitPMD)].filter { $0.1 > 0 }.map { "thp_\($0.0) \($0.1)" }
        return parts.isEmpty ? "none" : parts.joined(separator: ", ")
    }

    private func detail(_ d: WalkCounters) -> String {
        var parts = d.fired.map { "\($0.0.rawValue) \($0.1)" }
        if d.poisonSeen > 0 { parts.append("\(d.poisonSeen) read poison") }
        return parts.isEmpty ? "" : "(" + parts.joined(separator: ", ") + ")"
    }

    /// The percentiles and how many frees they rest on; a run too short to
    /// time any free says so rather than printing zeros.
    private func freeLatency(_ l: FreeLatency.Summary) -> String {
        guard l.count > 0 else {
            guard FreeLatency.sampleShift > 0 else { return "none timed (this run deferred no free)" }
            return "none timed: one deferred free in \(FreeLatency.sampleEvery) per thread is; --param free_latency_sample_shift=0 times every one"
        }
        return String(format: "p50 %.1f us  p99 %.1f us  max %.1f us  (%llu frees timed)", l.p50, l.p99, l.max, l.count)
    }

    private func iommuRows(_ r: StressResult) -> [(String, String)] {
        guard let inv = r.iotlbInvalidations else { return [] }
        var rows = [
            ("iotlb invalidations", "\(inv)"),
            ("qi descriptors", "\(r.qiDescriptors ?? 0)"),
            ("qi wait", String(format: "p50 %.0f us  p99 %.0f us", r.qiWaitUs?.p50 ?? 0, r.qiWaitUs?.p99 ?? 0)),
            ("invalidations / table", String(format: "%.4f", r.invalidationsPerTable ?? 0)),
        ]
        if let f = r.faultsInjected {
            rows.append(("faults injected", "IQE \(f.iqe)  ITE \(f.ite)  ICE \(f.ice)  queue-full \(f.queueFull)"))
        }
        if let by = r.tablesFreedBy {
            rows.append(("tables freed by", by.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: "  ")))
        }
        if let driver = r.qiDriver { rows.append(("qi_driver", driver + (r.qiLockup.map { ": LOCKUP: \($0)" } ?? ""))) }
        if let stranded = r.tablesStranded, stranded > 0 { rows.append(("tables stranded", "\(stranded)")) }
        if let exits = r.exitsWhileBound { rows.append(("exits while bound", "\(exits)  (dma faults \(r.dmaFaults ?? 0))")) }
        return rows
    }

    private func reapRows(_ r: StressResult) -> [(String, String)] {
        guard let reaps = r.oomReaps else { return [] }
        return [("oom reaps", "reaped \(reaps.reaped) (\(reaps.besideExit) beside exit), skipped \(reaps.skipped), gone \(reaps.gone) (trylock retried \(reaps.contended))"),
                ("sigbus faults", "\(r.sigbusFaults ?? 0) (\(r.sigbusBesideReap ?? 0) began before the reap was over)")]
    }
}

/// `stress all --json`: every run, so a soak can be summarised in one object.
struct StressSummary: Encodable {
    var runs: [StressResult]
}

extension StressResult {
    /// Whether its faults followed the THP module parameters.
    func followed(_ params: ModuleParameters) -> Bool { thp == THPPolicy(params.thp) }
}
