import ArgumentParser
import Foundation
import PageTableLab
import PageTableLabHarness

/// The foundation's speed promises, checked on this machine.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure the RCU and page-allocator paths against raw C and check the targets.",
        discussion: """
            Runs, in one process and interleaved rounds: an RCU read section from Swift \
            and from C; a call_rcu flood from C (malloc + call_rcu + free) and, right \
            after it, the same objects through Swift's RCU.call; a flood of allocator \
            pages freed by a pte_free_defer-shaped callback; an order-0 page alloc+free; \
            and numa_alloc_onnode(4 KiB) + touch + numa_free. Each number is the median \
            of its rounds, each target ratio the median of per-round ratios (both sides \
            of a round run back to back); --json also gives every round.

            Then the page-table freeing paths end to end, each table allocated (unzeroed) \
            inside the timed loop as C mallocs its object: PTE tables through \
            pte_free_defer, and through an mmu_gather (509 per call_rcu) beside C's \
            batch loop; one GUP-fast \
            walk; invalidations per kernel table freed (a short kernel-free run, deferred \
            mode); qi_submit_sync of one descriptor; and a call_rcu flood past a stalled \
            reader under a DeferredBound.

            Targets: Swift read section <= 1.15x C; Swift call_rcu throughput >= 0.9x C; \
            page alloc+free <= 40 ns and >= 200x faster than numa_alloc_onnode; \
            pte_free_defer >= 1.0x C call_rcu; gather >= 0.8x C batch frees; <= 1/500 \
            callbacks per gathered table; flood peak <= the bound.

            Last, each freeing path sustained (1 s after a warm-up, at most 2^18 \
            tables awaiting a grace period): pte_free_defer beside C malloc + call_rcu \
            + free, and the mmu_gather table path beside C written in the kernel's \
            shape (struct page lists, ctor and dtor, 509 tables per call_rcu'd batch \
            page); then a churn trace replayed on the live kernel and on the model. \
            Targets: both steady ratios >= 1.0x; the gather >= 25 M tables/s. The \
            table also prints both steady ratios round by round: the C gather is \
            usually fastest in its first round, while its free list is still in \
            address order.

            After the steady rounds, as many rounds of the same table path and the same \
            C with the grace period taken out (each full batch freed at once, on one \
            thread, the C on a pool of its own): \
            table_path_cost_ratio, the model's ns per table over the C's, is what the \
            model's own bookkeeping costs. Its rounds stay within a few percent where \
            the steady gather ratio's rounds range over a factor of two or more. No \
            target: it is the number to watch when changing the table path. --steady-only \
            runs just the steady rounds and the table path, in seconds.

            Build with -c release: a debug build's numbers mean nothing.
            """)

    @Flag(help: "Print one JSON object instead of a table.")
    var json = false

    @Option(parsing: .unconditional, help: "Measurement rounds; each reported number is the median.")
    var rounds = 5

    @Flag(help: "Exit with status 1 if a target is missed.")
    var check = false

    @Flag(help: "Measure only the steady-state freeing rates, their targets, and the table path with no grace period.")
    var steadyOnly = false

    @Option(help: ArgumentHelp(
        "Also measure throughput against producer threads (default, then per-CPU call_rcu workers) and write scaling.svg and free-latency.svg into this directory.",
        valueName: "dir"))
    var plot: String?

    @OptionGroup var module: ModuleParameterOptions

    func validate() throws {
        // A round takes seconds (the steady ones, minutes with --plot): a
        // thousand is hours already, and more is a typo.
        guard (1...1000).contains(rounds) else { throw ValidationError("--rounds must be 1...1000") }
        guard !(steadyOnly && plot != nil) else { throw ValidationError("--plot needs the whole bench, not --steady-only") }
    }

    func run() throws {
        let parameters = try module.resolve()
        Diagnostics.warnIfDebugBuild("bench")
        var configuration = Bench.Configuration()
        configuration.rounds = rounds
        configuration.scaling = plot != nil
        let progress = ProgressLine("bench")
        defer { progress.finish() }
        if steadyOnly {
            let report = try Bench.runSteady(configuration, parameters: parameters) { progress.update($0) }
            progress.finish()
            if json { try JSONOutput.print(report) } else { printSteadyTable(report) }
            if check && !report.allTargetsMet { throw ExitCode(1) }
            return
        }
        // The directory is made before minutes of measuring, not after, and
        // the report is printed before the plots are written.
        if let plot { try Self.makeDirectory(plot) }
        let report = try Bench.run(configuration, parameters: parameters) { progress.update($0) }
        progress.finish()
        if json { try JSONOutput.print(report) } else { printTable(report) }
        if let plot { try writePlots(report, into: plot) }
        if check && !report.allTargetsMet { throw ExitCode(1) }
    }

    /// mkdir -p for --plot, each failure named with its errno.
    private static func makeDirectory(_ dir: String) throws {
        var path = dir.hasPrefix("/") ? "" : "."
        for component in dir.split(separator: "/") {
            path += "/" + component
            var st = stat()
            if stat(path, &st) == 0 {
                guard st.st_mode & S_IFMT == S_IFDIR else { throw ValidationError("--plot \(dir): \(path) is not a directory") }
                continue
            }
            guard mkdir(path, 0o755) == 0 || errno == EEXIST else {
                throw ValidationError("--plot \(dir): cannot make \(path): \(String(cString: strerror(errno)))")
            }
        }
        guard access(dir, W_OK) == 0 else { throw ValidationError("--plot \(dir): \(String(cString: strerror(errno)))") }
    }

    private func printTable(_ r: BenchReport) {
        print("ptlab bench: \(r.build) build, median of \(r.rounds) round(s), load average \(fmt(r.loadAverage1m, 2)) at start")
        let rows: [(String, String, String)] = [
            ("rcu_read_ns_swift", fmt(r.rcuReadNsSwift, 2), "ns per read lock+unlock, Swift RCU.read"),
            ("rcu_read_ns_c", fmt(r.rcuReadNsC, 2), "ns per read lock+unlock, liburcu inlines from C"),
            ("call_rcu_per_sec_swift", fmt(r.callRCUPerSecSwift, 0), "C's malloc'd object through RCU.call, freed in the callback, per s"),
            ("call_rcu_per_sec_c", fmt(r.callRCUPerSecC, 0), "malloc + call_rcu + free in callback, per s"),
            ("call_rcu_per_sec_swift_pages", fmt(r.callRCUPerSecSwiftPages, 0), "pte_free_defer's shape: page + RCU.call on its ptdesc head + free, per s"),
            ("page_alloc_free_ns", fmt(r.pageAllocFreeNs, 1), "ns per order-0 alloc + free (poisoned if page_poison=y)"),
            ("numa_alloc_onnode_ns", fmt(r.numaAllocOnnodeNs, 0), "ns per numa_alloc_onnode(4 KiB) + touch + numa_free"),
            ("poison_page_ns", fmt(r.poisonPageNs, 1), "ns to poison one 4 KiB page with 0x6b (hot in cache)"),
            ("call_rcu_peak_deferred_bytes", String(r.callRCUPeakDeferredBytes), "bytes awaiting a grace period at the flood's peak"),
            ("defer_tables_per_sec", fmt(r.deferTablesPerSec, 0), "PTE table alloc (unzeroed) + pte_free_defer + callback free, per s"),
            ("gather_tables_per_sec", fmt(r.gatherTablesPerSec, 0), "PTE table alloc (unzeroed) + mmu_gather freeTable/finish + batch free, per s"),
            ("c_batch_frees_per_sec", fmt(r.cBatchFreesPerSec, 0), "C: aligned_alloc + 509 per call_rcu + free, per s"),
            ("gather_callbacks_per_table", fmt(r.gatherCallbacksPerTable, 5), "RCU callbacks per table through the gather"),
            ("walk_ns", fmt(r.walkNs, 1), "ns per GUP-fast walk (16 PTEs), one thread"),
            ("kernel_free_invalidations_per_table", fmt(r.kernelFreeInvalidationsPerTable, 4), "IOMMU invalidations per kernel table freed (deferred)"),
            ("qi_submit_sync_us_p50", fmt(r.qiSubmitSyncUsP50, 2), "µs per qi_submit_sync of one descriptor + wait, median"),
            ("peak_deferred_bytes_flood", String(r.peakDeferredBytesFlood), "bytes outstanding at the bounded flood's peak"),
            ("deferred_bound_bytes", String(r.deferredBoundBytes), "the bound (DeferredBound.bytes) during the flood"),
            ("flood_inline_fallbacks", String(r.floodInlineFallbacks), "flood calls that met the bound and freed inline"),
        ] + steadyRows(defer: r.steadyDeferTablesPerSec, callRCUC: r.steadyCallRCUPerSecC, gather: r.steadyGatherTablesPerSec,
                       cGather: r.steadyCGatherTablesPerSec)
          + tablePathRows(ns: r.tablePathNs, c: r.tablePathNsC, ratio: r.tablePathCostRatio) + [
            ("trace_replay_model_seconds", fmt(r.traceReplayModelSeconds, 3), "s to replay the churn trace (\(r.traceReplayOps) ops) on the model"),
            ("trace_replay_kernel_seconds", r.traceReplayKernelSeconds.map { fmt($0, 3) } ?? "-", "s for the live kernel to run the same trace"),
            ("trace_replay_ratio", r.traceReplayRatio.map { fmt($0, 2) } ?? "-", "kernel time / model time"),
        ]
        printColumns(rows.map { [$0.0, $0.1, $0.2] }, rightAligned: [1])
        printSteadyRounds(r.samples)
        printTargets(r.targets)
        let parameters = ModuleParameters.table.map { "\($0.name)=\(r.parameters[$0.name] ?? "?")" }
        print("\nparameters: \(parameters.joined(separator: " "))")
        printVerdict(r.targets)
    }

    private func printSteadyTable(_ r: BenchSteadyReport) {
        print("ptlab bench --steady-only: \(r.build) build, median of \(r.rounds) round(s), \(fmt(r.steadySeconds, 1)) s windows")
        let rows = steadyRows(defer: r.steadyDeferTablesPerSec, callRCUC: r.steadyCallRCUPerSecC, gather: r.steadyGatherTablesPerSec,
                              cGather: r.steadyCGatherTablesPerSec)
            + tablePathRows(ns: r.tablePathNs, c: r.tablePathNsC, ratio: r.tablePathCostRatio)
        printColumns(rows.map { [$0.0, $0.1, $0.2] }, rightAligned: [1])
        printSteadyRounds(r.samples)
        printTargets(r.targets)
        printVerdict(r.targets)
    }

    /// The steady ratios and the table path's cost round by round, beside
    /// the medians reported: the kernel-shaped C's steady rounds can differ
    /// by more than the median shows (see Bench.steadyRoundRatios).
    private func printSteadyRounds(_ samples: [String: [Double]]) {
        let byRound = Bench.steadyRoundRatios(samples)
        print("\nratios, round by round (each reported ratio is their median):")
        printColumns(Bench.steadyRoundRatioKeys.map { key in
            [key, (byRound[key] ?? []).map { fmt($0, 2) }.joined(separator: " ")]
        }, rightAligned: [])
    }

    private func steadyRows(defer deferred: Double, callRCUC: Double, gather: Double, cGather: Double) -> [(String, String, String)] {
        [
            ("steady_defer_tables_per_sec", fmt(deferred, 0), "PTE table alloc + pte_free_defer, sustained, per s"),
            ("steady_call_rcu_per_sec_c", fmt(callRCUC, 0), "C: malloc + call_rcu + free, sustained, per s"),
            ("steady_gather_tables_per_sec", fmt(gather, 0), "PTE table alloc + mmu_gather freeTable, sustained, per s"),
            ("steady_c_gather_tables_per_sec", fmt(cGather, 0), "C in the kernel's shape (struct page lists, ctor/dtor, 509 per call_rcu), per s"),
        ]
    }

    private func tablePathRows(ns: Double, c: Double, ratio: Double) -> [(String, String, String)] {
        [
            ("table_path_ns", fmt(ns, 1), "ns per PTE table: alloc + mmu_gather freeTable + batch freed at once, no grace period"),
            ("table_path_ns_c", fmt(c, 1), "ns per table, the same in C in the kernel's shape"),
            ("table_path_cost_ratio", fmt(ratio, 2), "the model's table path over the C's (what its bookkeeping costs)"),
        ]
    }

    private func printTargets(_ targets: [BenchReport.Target]) {
        print("")
        printColumns(targets.map {
            [$0.key, String(format: "%.4g", $0.value), "\($0.comparison.rawValue) \(String(format: "%.4g", $0.limit))",
             $0.met ? "pass" : "FAIL", $0.why]
        }, rightAligned: [1])
    }

    private func printVerdict(_ targets: [BenchReport.Target]) {
        let missed = targets.filter { !$0.met }.map(\.key)
        print(missed.isEmpty
              ? "bench: pass (\(targets.count) of \(targets.count) targets met)"
              : "bench: FAIL (missed: \(missed.joined(separator: ", ")))")
    }

    private func writePlots(_ r: BenchReport, into dir: String) throws {
        let files = [("scaling.svg", r.scaling.flatMap(BenchPlot.scalingSVG)),
                     ("free-latency.svg", BenchPlot.latencySVG(r.deferFreeLatencyUs))]
        for (name, svg) in files {
            guard let svg else { throw ValidationError("bench: no data for \(name)") }
            let path = (dir as NSString).appendingPathComponent(name)
            do {
                try svg.write(toFile: path, atomically: true, encoding: .utf8)
            } catch {
                throw ValidationError("bench: cannot write \(path): \(error.localizedDescription)")
            }
            FileHandle.standardError.write(Data("bench: wrote \(path)\n".utf8))
        }
    }

    private func fmt(_ v: Double, _ decimals: Int) -> String {
        String(format: "%.\(decimals)f", v)
    }

    private func printColumns(_ rows: [[String]], rightAligned: Set<Int>) {
        guard let columns = rows.first?.count else { return }
        let widths = (0..<columns).map { c in rows.map { $0[c].count }.max() ?? 0 }
        for row in rows {
            let cells = row.enumerated().map { c, cell in
                let pad = String(repeating: " ", count: widths[c] - cell.count)
                return rightAligned.contains(c) ? pad + cell : (c == columns - 1 ? cell : cell + pad)
            }
            print(cells.joined(separator: "  "))
        }
    }
}
