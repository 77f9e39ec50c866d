import Foundation
import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// The JSON keys and exit statuses README.md documents are a public
/// interface: scripts parse them. These tests run the built `ptlab` (as a
/// user does) and fail when a documented key disappears or an exit status
/// changes meaning.
final class CLIContractTests: XCTestCase {
    /// `ptlab` beside this test bundle: `swift build` and `swift test`
    /// build it into the same directory.
    private func ptlab() throws -> URL {
        let exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var dir = exe.deletingLastPathComponent()
        while !dir.path.isEmpty && dir.path != "/" {
            let candidate = dir.appendingPathComponent("ptlab")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        throw PtlabNotBuilt(near: exe.path)
    }

    private struct PtlabNotBuilt: Error, CustomStringConvertible {
        let near: String
        var description: String { "ptlab is not built next to \(near): run `swift build` first" }
    }

    private struct Run {
        var status: Int32
        var json: [String: Any]
        var stderr: String
        /// stdout as text, where it is not one JSON object (`text: true`).
        var stdout = ""
    }

    /// `usageError`: the run is refused before it starts (no JSON).
    /// `launcher`: a program (and its arguments) that runs ptlab.
    private func run(_ arguments: [String], usageError: Bool = false, text: Bool = false, launcher: [String] = []) throws -> Run {
        let process = Process()
        if let program = launcher.first {
            process.executableURL = URL(fileURLWithPath: program)
            process.arguments = launcher.dropFirst() + [try ptlab().path] + arguments
        } else {
            process.executableURL = try ptlab()
            process.arguments = arguments
        }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        if usageError || text {
            return Run(status: process.terminationStatus, json: [:], stderr: stderr, stdout: String(decoding: stdout, as: UTF8.self))
        }
        let object = try JSONSerialization.jsonObject(with: stdout) as? [String: Any]
        return Run(status: process.terminationStatus, json: try XCTUnwrap(object, "stdout is not one JSON object: \(stderr)"),
                   stderr: stderr)
    }

    private func assertKeys(_ object: [String: Any], _ keys: [String], _ what: String,
                            file: StaticString = #filePath, line: UInt = #line) {
        let missing = Set(keys).subtracting(object.keys)
        XCTAssertTrue(missing.isEmpty, "\(what) lacks documented keys \(missing.sorted())", file: file, line: line)
    }

    static let stressKeys = [
        "scenario", "mode", "safe", "expected_detector", "seed", "walkers", "duration_s", "ops", "walks",
        "uaf_detected", "leaked_pages", "tables_freed", "rcu_callbacks", "tlb_flushes", "peak_deferred_bytes",
        "free_latency_us", "detections", "free_errors", "double_queued", "notifier_failures", "stores_to_freed_pages", "bad_page_states", "pass", "verdict",
        "updaters", "walker_contexts", "tlb_flush", "vmpte_bytes", "table_bytes_held", "thp", "thp_events", "vma_locks",
    ]
    static let detectionKeys = ["walks", "mapped", "not_mapped", "retries", "poison_seen"] + Detector.allCases.map(\.rawValue)

    /// Run under `taskset -c 0`, the lab sees only CPU 0 in its nodes: the
    /// stress runs pin threads to those CPUs, and one the process may not
    /// use would leave the thread unpinned (inside a cpuset, silently).
    func testTheTopologyHoldsOnlyTheCPUsTheProcessMayUse() throws {
        let r = try run(["info", "--json"], launcher: ["/usr/bin/taskset", "-c", "0"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let nodes = try XCTUnwrap((r.json["topology"] as? [String: Any])?["nodes"] as? [[String: Any]])
        XCTAssertEqual(nodes.flatMap { $0["cpus"] as? [Int] ?? [] }, [0])
    }

    func testStressJSONKeysOfASafeRun() throws {
        let r = try run(["stress", "unmap", "--mode", "rcu-table-free", "--duration", "0.3", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        assertKeys(r.json, Self.stressKeys, "stress --json")
        assertKeys(try XCTUnwrap(r.json["detections"] as? [String: Any]), Self.detectionKeys, "detections")
        assertKeys(try XCTUnwrap(r.json["free_latency_us"] as? [String: Any]), ["p50", "p99", "max"], "free_latency_us")
        assertKeys(try XCTUnwrap(r.json["thp_events"] as? [String: Any]),
                   ["thp_fault_alloc", "thp_fault_fallback", "thp_collapse_alloc", "thp_split_pmd"], "thp_events")
        assertKeys(try XCTUnwrap(r.json["vma_locks"] as? [String: Any]),
                   ["fault_vma", "fault_mmap", "fault_beside_writer", "dontneed_vma", "dontneed_mmap",
                    "dontneed_beside_writer"], "vma_locks")
        XCTAssertTrue(r.json["expected_detector"] is NSNull, "a safe mode expects no detector")
        XCTAssertEqual(r.json["pass"] as? Bool, true)
    }

    /// free_latency_sample_shift=0 times every deferred free a stress
    /// queues: a short run's latency rests on its frees, not on a handful.
    func testStressTimesEveryFreeAtSampleShiftZero() throws {
        let r = try run(["stress", "unmap", "--mode", "rcu-table-free", "--duration", "0.3", "--json",
                         "--param", "free_latency_sample_shift=0"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let latency = try XCTUnwrap(r.json["free_latency_us"] as? [String: Any])
        let timed = try XCTUnwrap(latency["count"] as? Int), freed = try XCTUnwrap(r.json["tables_freed"] as? Int)
        XCTAssertGreaterThan(timed, 0)
        XCTAssertLessThanOrEqual(timed, freed)
        XCTAssertGreaterThan(timed, freed / 2, "nearly every table of this run is a deferred free")
    }

    /// `race` names its updaters and every walker with its lock context;
    /// --updaters belongs to it alone.
    func testStressJSONNamesUpdatersAndLockContexts() throws {
        let r = try run(["stress", "race", "--updaters", "3", "--duration", "0.5", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.json["updaters"] as? Int, 3)
        let walkers = try XCTUnwrap(r.json["walker_contexts"] as? [[String: String]])
        XCTAssertTrue(walkers.contains(["walker": "pte_offset_map", "context": "mmap-read"]), "\(walkers)")
        XCTAssertTrue(walkers.contains(["walker": "gup_fast", "context": "irqs-off"]), "\(walkers)")
        XCTAssertEqual(r.json["vmpte_bytes"] as? Int, r.json["table_bytes_held"] as? Int)
        let refused = try run(["stress", "unmap", "--updaters", "2"], usageError: true)
        XCTAssertEqual(refused.status, 64)
        XCTAssertTrue(refused.stderr.contains("--updaters belongs to race"), refused.stderr)
    }

    /// `ptlab help NAME` for a NAME that is no subcommand is a usage error
    /// that names what there is, not the top-level help and exit 0.
    func testHelpForAnUnknownSubcommandIsRefused() throws {
        let bogus = try run(["help", "bogus"], usageError: true)
        XCTAssertEqual(bogus.status, 64)
        XCTAssertTrue(bogus.stderr.contains("no subcommand 'bogus'"), bogus.stderr)
        XCTAssertTrue(bogus.stderr.contains("stress, compare, bench"), bogus.stderr)
        let nested = try run(["help", "iommu", "encode"], usageError: true)
        XCTAssertEqual(nested.status, 64)
        XCTAssertTrue(nested.stderr.contains("subcommands: decode"), nested.stderr)
        XCTAssertEqual(try run(["help", "iommu", "decode"], usageError: true).status, 0)
        XCTAssertEqual(try run(["help", "stress", "race"], usageError: true).status, 0, "a scenario is an argument")
        XCTAssertEqual(try run(["help", "help"], usageError: true).status, 0)
        let rounds = try run(["bench", "--rounds", "1001"], usageError: true)
        XCTAssertEqual(rounds.status, 64)
        XCTAssertTrue(rounds.stderr.contains("--rounds must be 1...1000"), rounds.stderr)
    }

    /// The verdict follows tlb_flush: unmap's no-rcu is safe with IPIs and
    /// must be caught by GUP-fast without them.
    func testTLBFlushDecidesNoRCUsVerdict() throws {
        let safe = try run(["stress", "unmap", "--mode", "no-rcu", "--duration", "0.3", "--json"])
        XCTAssertEqual(safe.status, 0, safe.stderr)
        XCTAssertTrue(safe.json["expected_detector"] is NSNull)
        XCTAssertEqual(safe.json["tlb_flush"] as? String, "ipi")
        let caught = try run(["stress", "unmap", "--mode", "no-rcu", "--param", "tlb_flush=no-ipi", "--stop-on-detect",
                              "--duration", "30", "--json"])
        XCTAssertEqual(caught.status, 0, caught.stderr)
        XCTAssertEqual(caught.json["expected_detector"] as? String, "gup_fast")
        XCTAssertEqual(caught.json["tlb_flush"] as? String, "no-ipi")
    }

    /// race's faults follow thp_enabled, as compare's model does: huge
    /// PMDs from faults with always, none with never (MADV_COLLAPSE makes
    /// them either way). A run whose path needs PTE tables maps small pages
    /// whatever it says, and says so.
    func testStressFaultsFollowTHPEnabledWhereTheScenarioTakesIt() throws {
        for (setting, faultsMapHugePMDs) in [("always", true), ("never", false)] {
            let r = try run(["stress", "race", "--duration", "0.5", "--param", "thp_enabled=\(setting)", "--json"])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual((r.json["thp"] as? [String: Any])?["enabled"] as? String, setting)
            let thp = try XCTUnwrap(r.json["thp_events"] as? [String: Any])
            XCTAssertEqual((thp["thp_fault_alloc"] as? Int ?? 0) > 0, faultsMapHugePMDs, "thp_enabled=\(setting): \(thp)")
        }
        let small = try run(["stress", "reclaim", "--duration", "0.3", "--param", "thp_enabled=always", "--json"])
        XCTAssertEqual(small.status, 0, small.stderr)
        XCTAssertEqual((small.json["thp"] as? [String: Any])?["enabled"] as? String, "madvise")
        XCTAssertEqual((small.json["thp_events"] as? [String: Any])?["thp_fault_alloc"] as? Int, 0)
        XCTAssertTrue(small.stderr.contains("reclaim/rcu-table-free map small pages"), small.stderr)
    }

    func testStressJSONNamesAnUnsafeRunsDetector() throws {
        let r = try run(["stress", "unmap", "--mode", "no-flush", "--stop-on-detect", "--duration", "30", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.json["expected_detector"] as? String, "stale_psc")
        XCTAssertGreaterThan((r.json["detections"] as? [String: Any])?["stale_psc"] as? Int ?? 0, 0)
    }

    /// A safe run that fails (here on its integrity counters, after a
    /// deliberate double free) exits 1 and says why.
    func testAFailingSafeRunExitsOne() throws {
        let r = try run(["stress", "unmap", "--mode", "rcu-table-free", "--duration", "0.3", "--inject", "double-free", "--json"])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.json["pass"] as? Bool, false)
        XCTAssertEqual(r.json["free_errors"] as? Int, 1)
        XCTAssertTrue((r.json["verdict"] as? String ?? "").contains("double free"), "\(r.json["verdict"] ?? "")")
    }

    /// Every run's limits are checked before the first starts (exit 64):
    /// `all` with a walker count kernel-free refuses must not run nineteen
    /// scenarios and then lose them; and `all` takes no --mode.
    func testStressAllRefusesBadOptionsBeforeRunningAnything() throws {
        let walkers = try run(["stress", "all", "--walkers", "100", "--duration", "0.2", "--json"], usageError: true)
        XCTAssertEqual(walkers.status, 64)
        XCTAssertTrue(walkers.stderr.contains("kernel-free: --walkers must be 1...64"), walkers.stderr)
        // A negative number is a value out of range, not a missing one.
        let negative = try run(["stress", "reclaim", "--duration", "-1"], usageError: true)
        XCTAssertEqual(negative.status, 64)
        XCTAssertTrue(negative.stderr.contains("--duration must be in (0, 86400] seconds"), negative.stderr)
        let mode = try run(["stress", "all", "--mode", "rcu-table-free", "--duration", "0.2"], usageError: true)
        XCTAssertEqual(mode.status, 64)
        XCTAssertTrue(mode.stderr.contains("--mode does not apply to 'all'"), mode.stderr)
    }

    /// A --plot directory that cannot be made is refused before minutes of
    /// measuring, by name, not after them with the report lost.
    func testBenchRefusesAnUnusablePlotDirectoryAtOnce() throws {
        let file = NSTemporaryDirectory() + "ptlab-plot-\(getpid())"
        XCTAssertTrue(FileManager.default.createFile(atPath: file, contents: Data()))
        defer { try? FileManager.default.removeItem(atPath: file) }
        let r = try run(["bench", "--rounds", "1", "--json", "--plot", file + "/plots"], usageError: true)
        XCTAssertEqual(r.status, 64)
        XCTAssertTrue(r.stderr.contains("--plot \(file)/plots: \(file) is not a directory"), r.stderr)
    }

    /// A window too short for one op and one walk is no safe verdict.
    func testARunThatTestedNothingDoesNotPass() throws {
        let r = try run(["stress", "collapse", "--duration", "1e-9", "--json"])
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertEqual(r.json["pass"] as? Bool, false)
        XCTAssertTrue((r.json["verdict"] as? String ?? "").contains("nothing was tested"), "\(r.json["verdict"] ?? "")")
    }

    func testStressAllJSONIsAListOfRuns() throws {
        let r = try run(["stress", "all", "--duration", "0.2", "--json"])
        let runs = try XCTUnwrap(r.json["runs"] as? [[String: Any]])
        XCTAssertEqual(r.status, 0, runs.filter { $0["pass"] as? Bool != true }.map { "\($0["scenario"] ?? "")/\($0["mode"] ?? ""): \($0["verdict"] ?? "")" }.joined(separator: "; "))
        // unmap/no-rcu twice: its verdict depends on tlb_flush, so `all` runs it under both.
        XCTAssertEqual(runs.count, Scenario.all.map(\.modes.count).reduce(0, +) + 1 + KernelFreeStress.modes.count + 2
                       + SVAExitStress.modes.count + OOMReapStress.modes.count)
        let noRCU = runs.filter { $0["scenario"] as? String == "unmap" && $0["mode"] as? String == "no-rcu" }
        XCTAssertEqual(noRCU.map { $0["tlb_flush"] as? String }, ["ipi", "no-ipi"])
        XCTAssertEqual(noRCU.map { $0["expected_detector"] as? String }, [nil, "gup_fast"])
        for run in runs { assertKeys(run, Self.stressKeys, "stress all run \(run["scenario"] ?? "")/\(run["mode"] ?? "")") }
    }

    func testCompareJSONKeys() throws {
        let trace = try XCTUnwrap(Bundle.module.url(forResource: "reclaim-whole", withExtension: "trace", subdirectory: "Traces"))
        let r = try run(["compare", "--model-only", "--json", trace.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        assertKeys(r.json, ["profile", "model_kernel", "expectations_apply", "traces"], "compare --json")
        XCTAssertEqual(r.json["model_kernel"] as? String, CompareProfile.runningKernel() == .ptReclaim ? "6.18" : "6.1")
        XCTAssertEqual(r.json["expectations_apply"] as? Bool, true)
        let traceReport = try XCTUnwrap((r.json["traces"] as? [[String: Any]])?.first)
        assertKeys(traceReport, ["file", "match", "checkpoints"], "a trace")
        let checkpoint = try XCTUnwrap((traceReport["checkpoints"] as? [[String: Any]])?.first)
        assertKeys(checkpoint, ["line", "model_kb", "kernel_kb", "expected_kb", "match"], "a checkpoint")
        XCTAssertTrue(checkpoint["kernel_kb"] is NSNull, "a side that did not run is null, not absent")
    }

    /// --model-kernel names the release the model follows; the traces'
    /// stated values, measured on 6.18 and 6.1, then do not apply.
    func testCompareFollowsTheModelKernelAsked() throws {
        let trace = try XCTUnwrap(Bundle.module.url(forResource: "mremap-dontunmap-collapse", withExtension: "trace",
                                                    subdirectory: "Traces"))
        let r = try run(["compare", "--model-only", "--profile", "pre-6.14", "--model-kernel", "6.12", "--json", trace.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.json["model_kernel"] as? String, "6.12")
        XCTAssertEqual(r.json["expectations_apply"] as? Bool, false)
        XCTAssertTrue(r.stderr.contains("measured on 6.1"), r.stderr)
        let bad = try run(["compare", "--model-kernel", "six", trace.path], usageError: true)
        XCTAssertEqual(bad.status, 64)
        XCTAssertTrue(bad.stderr.contains("--model-kernel"), bad.stderr)
    }

    /// --random N runs N generated traces, named by their seeds; with no
    /// trace file and no --random there is nothing to run.
    func testCompareRunsRandomTraces() throws {
        let r = try run(["compare", "--model-only", "--random", "3", "--seed", "5", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let files = (r.json["traces"] as? [[String: Any]])?.compactMap { $0["file"] as? String }
        XCTAssertEqual(files, ["random-5.trace", "random-6.trace", "random-7.trace"])
        XCTAssertTrue(r.stderr.contains("random traces: 3 of 3 run"), r.stderr)
        let none = try run(["compare"], usageError: true)
        XCTAssertEqual(none.status, 64)
        XCTAssertTrue(none.stderr.contains("or --random N"), none.stderr)
        let kernelOnly = try run(["compare", "--kernel-only", "--random", "2"], usageError: true)
        XCTAssertEqual(kernelOnly.status, 64)
        // The table shows a random trace's rows only where it does not match.
        let table = try run(["compare", "--model-only", "--random", "2"], text: true)
        XCTAssertEqual(table.status, 0, table.stderr)
        XCTAssertFalse(table.stdout.contains("random-1.trace:"), table.stdout)
        XCTAssertTrue(table.stdout.contains("2 of 2 traces match"), table.stdout)
    }

    /// Random traces get the model a budget they fit in: seed 15, under
    /// pre-6.14, collapses more than the default 256 MiB node holds.
    func testRandomTracesGetTheModelABudgetTheyFit() throws {
        let args = ["compare", "--model-only", "--profile", "pre-6.14", "--random", "1", "--seed", "15", "--json"]
        XCTAssertEqual(try run(args).status, 0)
        XCTAssertEqual(try run(args + ["--param", "node_budget_pages=65536"]).status, 1, "a budget the user sets is kept")
    }

    /// --kernel-only holds the kernel to the traces' values only where it is
    /// the kernel they were measured on; --model-kernel needs the model.
    func testKernelOnlyHoldsOnlyTheKernelTheValuesCameFrom() throws {
        let trace = try XCTUnwrap(Bundle.module.url(forResource: "reclaim-whole", withExtension: "trace", subdirectory: "Traces"))
        let refused = try run(["compare", "--kernel-only", "--model-kernel", "6.1", trace.path], usageError: true)
        XCTAssertEqual(refused.status, 64)
        XCTAssertTrue(refused.stderr.contains("--model-kernel needs the model"), refused.stderr)
        if let reason = LiveKernel.unavailableReason { throw XCTSkip("no live kernel to compare with: \(reason)") }
        let own = CompareProfile.runningKernel()
        let other: CompareProfile = own == .ptReclaim ? .prePTReclaim : .ptReclaim
        let mine = try run(["compare", "--kernel-only", "--json", trace.path])
        XCTAssertEqual(mine.json["expectations_apply"] as? Bool, KernelVersion.running == own.modelKernel(asked: nil, comparingLive: false))
        let theirs = try run(["compare", "--kernel-only", "--profile", other.rawValue, "--json", trace.path])
        XCTAssertEqual(theirs.json["expectations_apply"] as? Bool, false, "another profile's values are another kernel's")
        // No status asserted: a live run's verdict can be interference (an
        // instrumented build's runtime takes page tables of its own).
    }

    /// A trace for 6.14+ alone, compared under pre-6.14: skipped, said so,
    /// and no failure (the VM check compares every shipped trace on 6.1).
    func testCompareSkipsATraceForOtherProfiles() throws {
        let trace = try XCTUnwrap(Bundle.module.url(forResource: "guard-reclaim", withExtension: "trace", subdirectory: "Traces"))
        let r = try run(["compare", "--model-only", "--profile", "pre-6.14", "--json", trace.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        let traceReport = try XCTUnwrap((r.json["traces"] as? [[String: Any]])?.first)
        XCTAssertEqual(traceReport["match"] as? Bool, false)
        XCTAssertTrue((traceReport["skipped"] as? String ?? "").contains("6.14+ only"), "\(traceReport)")
        XCTAssertEqual((traceReport["checkpoints"] as? [Any])?.count, 0)
    }

    /// Live compare with the model's THP settings other than this kernel's
    /// says up front why huge PMDs may differ, as --profile does.
    func testCompareNotesTHPSettingsThatAreNotThisKernels() throws {
        if let reason = LiveKernel.unavailableReason { throw XCTSkip("no live kernel to compare with: \(reason)") }
        let trace = try XCTUnwrap(Bundle.module.url(forResource: "reclaim-whole", withExtension: "trace", subdirectory: "Traces"))
        let other = THPSettings.running.enabled == .never ? "always" : "never"
        let r = try run(["compare", "--json", "--param", "thp_enabled=\(other)", trace.path])
        XCTAssertTrue(r.stderr.contains("the model's THP settings (enabled=\(other)"), r.stderr)
        let same = try run(["compare", "--json", trace.path])
        XCTAssertFalse(same.stderr.contains("THP settings"), same.stderr)
    }

    /// A trace in a region this process already maps (its stack and
    /// libraries lie in the top 512 GiB of the user half) is refused before
    /// it runs: exit 2, `refused`, and the mapping in the way named.
    func testCompareRefusesATraceInARegionThisProcessMaps() throws {
        if let reason = LiveKernel.unavailableReason { throw XCTSkip("no live kernel to compare with: \(reason)") }
        let trace = NSTemporaryDirectory() + "ptlab-region-\(getpid()).trace"
        try "mmap 0x7f8000000000 2M\ntouch 0x7f8000000000 2M 4K\nexpect\n".write(toFile: trace, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: trace) }
        let r = try run(["compare", "--json", trace])
        XCTAssertEqual(r.status, 2, r.stderr)
        let report = try XCTUnwrap((r.json["traces"] as? [[String: Any]])?.first)
        XCTAssertEqual(report["refused"] as? Bool, true)
        XCTAssertTrue((report["error"] as? String ?? "").contains("already holds a mapping of this process"), "\(report)")
    }

    /// `compare --time`: per trace ops, model_seconds, kernel_seconds and
    /// ratio (kernel / model); a side that did not run is null.
    func testCompareTimeJSONKeys() throws {
        let trace = try XCTUnwrap(Bundle.module.url(forResource: "reclaim-whole", withExtension: "trace", subdirectory: "Traces"))
        let r = try run(["compare", "--model-only", "--time", "--json", trace.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        let traceReport = try XCTUnwrap((r.json["traces"] as? [[String: Any]])?.first)
        assertKeys(traceReport, ["ops", "model_seconds", "kernel_seconds", "ratio"], "a timed trace")
        XCTAssertGreaterThan(try XCTUnwrap(traceReport["ops"] as? Int), 0)
        XCTAssertGreaterThan(try XCTUnwrap(traceReport["model_seconds"] as? Double), 0)
        XCTAssertTrue(traceReport["kernel_seconds"] is NSNull)
        XCTAssertTrue(traceReport["ratio"] is NSNull)
        let untimed = try run(["compare", "--model-only", "--json", trace.path])
        let plain = try XCTUnwrap((untimed.json["traces"] as? [[String: Any]])?.first)
        XCTAssertNil(plain["model_seconds"], "timings only when asked for")
    }

    /// The bench's report, from a run too small to measure anything: only
    /// its shape is checked here (the numbers belong to BENCHMARKS.md).
    func testBenchJSONKeys() throws {
        var c = Bench.Configuration()
        c.rounds = 1
        c.readIterations = 1_000
        c.callRCUObjects = 1_024
        c.pageIterations = 1_000
        c.numaIterations = 4
        c.walkIterations = 1_000
        c.walkTables = 2
        c.kernelFreeSeconds = 0.05
        c.qiSubmissions = 16
        c.floodBoundBytes = 1 << 20
        c.floodCallsPerProducer = 1_024
        c.steadySeconds = 0.02
        c.steadyWarmupSeconds = 0.005
        c.steadyBoundTables = 2_048
        c.tablePathTables = 1_024
        c.traceReplayCycles = 4
        let report = try Bench.run(c)
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: JSONEncoder().encode(report)) as? [String: Any])
        assertKeys(object, [
            "rcu_read_ns_swift", "rcu_read_ns_c", "rcu_read_ratio", "call_rcu_per_sec_swift", "call_rcu_per_sec_c",
            "call_rcu_ratio", "page_alloc_free_ns", "numa_alloc_onnode_ns", "page_alloc_speedup", "defer_tables_per_sec",
            "gather_tables_per_sec", "c_batch_frees_per_sec", "gather_callbacks_per_table", "walk_ns",
            "kernel_free_invalidations_per_table", "qi_submit_sync_us_p50", "peak_deferred_bytes_flood",
            "deferred_bound_bytes", "targets", "all_targets_met", "rounds", "build", "parameters",
            "steady_seconds", "steady_bound_bytes", "steady_defer_tables_per_sec", "steady_gather_tables_per_sec",
            "steady_call_rcu_per_sec_c", "steady_c_gather_tables_per_sec", "steady_gather_ratio", "steady_defer_ratio",
            "table_path_ns", "table_path_ns_c", "table_path_cost_ratio",
            "trace_replay_ops", "trace_replay_model_seconds", "trace_replay_kernel_seconds", "trace_replay_ratio",
        ], "bench --json")
        XCTAssertEqual(object["trace_replay_ops"] as? Int, 12)
        if Bench.traceReplayKernelUnavailableReason == nil {
            XCTAssertNotNil(object["trace_replay_ratio"] as? Double)
        } else {
            XCTAssertTrue(object["trace_replay_ratio"] is NSNull, "a side that did not run is null, not absent")
        }
        let targetKeys = Set(try XCTUnwrap(object["targets"] as? [[String: Any]]).compactMap { $0["key"] as? String })
        XCTAssertTrue(targetKeys.isSuperset(of: ["steady_defer_ratio", "steady_gather_ratio", "steady_gather_tables_per_sec"]))
        XCTAssertEqual(targetKeys.contains("trace_replay_ratio"), Bench.traceReplayKernelUnavailableReason == nil,
                       "the replay is a target exactly where the kernel's side ran")
        let target = try XCTUnwrap((object["targets"] as? [[String: Any]])?.first)
        XCTAssertNotNil(target["met"], "a target says whether it was met")
    }

    /// `bench --steady-only`: the whole bench's steady keys and targets,
    /// nothing else measured.
    func testBenchSteadyOnlyJSONKeys() throws {
        var c = Bench.Configuration()
        c.rounds = 1
        c.steadySeconds = 0.02
        c.steadyWarmupSeconds = 0.005
        c.steadyBoundTables = 2_048
        c.tablePathTables = 1_024
        let report = try Bench.runSteady(c)
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: JSONEncoder().encode(report)) as? [String: Any])
        assertKeys(object, [
            "steady_seconds", "steady_bound_bytes", "steady_defer_tables_per_sec", "steady_gather_tables_per_sec",
            "steady_call_rcu_per_sec_c", "steady_c_gather_tables_per_sec", "steady_gather_ratio", "steady_defer_ratio",
            "table_path_ns", "table_path_ns_c", "table_path_cost_ratio",
            "targets", "all_targets_met", "rounds", "build", "samples",
        ], "bench --steady-only --json")
        XCTAssertNil(object["rcu_read_ratio"], "only the steady runs")
        let targetKeys = Set(try XCTUnwrap(object["targets"] as? [[String: Any]]).compactMap { $0["key"] as? String })
        XCTAssertEqual(targetKeys, ["steady_defer_ratio", "steady_gather_ratio", "steady_gather_tables_per_sec"])
        XCTAssertGreaterThan(try XCTUnwrap(object["steady_c_gather_tables_per_sec"] as? Double), 0)
        let ns = try XCTUnwrap(object["table_path_ns"] as? Double), nsC = try XCTUnwrap(object["table_path_ns_c"] as? Double)
        XCTAssertGreaterThan(nsC, 0)
        XCTAssertEqual(try XCTUnwrap(object["table_path_cost_ratio"] as? Double), ns / nsC, accuracy: 1e-9,
                       "one round: the model's ns over the C's")
    }
}
