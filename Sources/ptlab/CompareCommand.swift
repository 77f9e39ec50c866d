import ArgumentParser
import Foundation
import PageTableLab
import PageTableLabHarness

/// `ptlab compare`: replays mapping traces on the mm model and on the kernel
/// this process runs on, and shows VmPTE growth side by side at every
/// `expect`, so a kernel engineer can see the model allocate and free page
/// tables exactly as Linux does — or see where it does not.
struct CompareCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compare",
        abstract: "Run mapping traces on the model and on this machine's kernel; compare VmPTE growth.",
        discussion: """
            A trace is one op per line; # starts a comment; numbers are decimal or 0x hex \
            with an optional binary K, M or G suffix:
              mmap ADDR LEN [shared]  read-write mapping at ADDR: anonymous private, or
                                      with `shared` MAP_SHARED of a fresh memfd (shmem);
                                      MADV_NOHUGEPAGE at once
              touch ADDR LEN STRIDE   write a byte at ADDR, ADDR+STRIDE, ... < ADDR+LEN
              dontneed ADDR LEN       madvise(MADV_DONTNEED)
              munmap ADDR LEN
              hugepage ADDR LEN       madvise(MADV_HUGEPAGE): lifts mmap's NOHUGEPAGE
              collapse ADDR LEN       madvise(MADV_COLLAPSE)
              mremap OLD LEN NEW [dontunmap]
                                      mremap(OLD, LEN, LEN, MREMAP_MAYMOVE|MREMAP_FIXED, NEW);
                                      `dontunmap`: MREMAP_DONTUNMAP, the old range stays;
                                      OLD..OLD+LEN lies in one mapping, or with
                                      `profiles 6.14+` starts in one (6.17+ moves each
                                      VMA of the range, gaps kept; a comparison for an
                                      older kernel SKIPS such a trace)
              mprotect ADDR LEN PROT  PROT is none, r or rw
              guard ADDR LEN          madvise(MADV_GUARD_INSTALL) (6.13+)
              unguard ADDR LEN        madvise(MADV_GUARD_REMOVE)
              expect [KB] [PROFILE=KB]
                                      compare VmPTE growth since the trace began;
                                      KB (an extension): the growth expected,
                                      PROFILE=KB: the growth for one profile
              profiles PROFILE ...    before the first op: the trace is for these
                                      profiles only (guard, and an mremap across
                                      mappings, need `profiles 6.14+`);
                                      a comparison under another profile SKIPS it

            Addresses and lengths are 4 KiB multiples, at or above 4 GiB and inside 47-bit \
            user space; every op but mmap and munmap must stay inside memory the trace \
            mapped (but an mremap in a 6.14+ trace, whose OLD alone must be), touch only \
            where it is mapped rw and not guarded, collapse no guard \
            region, and mremap's NEW may overlap neither \
            its source nor other mappings. The kernel side runs in this process \
            (MAP_FIXED_NOREPLACE, MADV_NOHUGEPAGE) and refuses a trace that uses a 512 GiB \
            region already holding other mappings of the process. What a trace leaves mapped \
            is unmapped when it ends. The model follows this kernel's THP settings \
            (/sys/kernel/mm/transparent_hugepage; --param thp_enabled=, thp_shmem_enabled= \
            to choose others). When the kernel cannot get a huge page (thp_fault_fallback, \
            a MADV_COLLAPSE that fails with ENOMEM or EAGAIN) or khugepaged collapses memory \
            on its own, the rest of that trace is NOT COMPARABLE: no verdict either way.

            Exit status: 0 when every checkpoint of every trace matches (model and kernel \
            agree, and equal KB where given and the model follows the kernel the KB values \
            were measured on; with --model-only or --kernel-only, when every trace ran and \
            met those KB values, where they apply; a skipped trace counts as neither); 1 when \
            one does not; 3 when none mismatched but \
            some trace was not comparable; 2 when a trace is invalid or a side cannot be \
            built, before anything runs, or when the live kernel's region check refuses a \
            trace (its 512 GiB regions already hold a mapping of this process).

            Examples:
              ptlab compare Tests/PageTableLabTests/Traces/*.trace
              ptlab compare --random 500 --seed 1000
            """)

    @Flag(help: "Run the model only.")
    var modelOnly = false

    @Flag(help: "Run the live kernel only (to measure the values for a new trace's expect lines).")
    var kernelOnly = false

    @Flag(help: "Print one JSON object instead of a table.")
    var json = false

    @Flag(help: ArgumentHelp("Time each side's replay of each trace: seconds, ops/s, and kernel/model.",
                             discussion: "JSON: per trace ops, model_seconds, kernel_seconds, ratio (kernel / model). A side's time is its whole pass: ops, cleanup, and its VmPTE readings (for the kernel, /proc reads around every op)."))
    var time = false

    @Option(help: "Kernel behaviour the model follows: 6.14+ (PT_RECLAIM) or pre-6.14. Default: the running kernel's.")
    var profile: CompareProfile?

    @Option(name: .customLong("model-kernel"),
            help: ArgumentHelp("The kernel release (MAJOR.MINOR) whose mm the model follows, beside --profile's PT_RECLAIM.",
                               discussion: "Each behaviour the model knows switches at the release that brought it: per-VMA fault locks 6.4, the shmem retract through pte_free_defer for every mapping 6.6 (before, MADV_COLLAPSE retracts only its own mapping's table), mremap's realignment 6.7, guard regions 6.13 (shmem 6.15), the table dtor at free 6.14, per-VMA MADV_DONTNEED and mremap of several VMAs 6.17. Default: the running kernel's release when the live kernel is compared; with --model-only, the profile's own (6.18 for 6.14+, Debian's 6.1 for pre-6.14).",
                               valueName: "version"))
    var modelKernel: KernelVersion?

    @Option(help: ArgumentHelp("Also run N random traces (every op, aimed at table boundaries, a checkpoint after each), seeds --seed to --seed + N - 1; the table shows their rows only where they do not match, and prints such a trace to stderr, to replay.",
                               valueName: "n"))
    var random: UInt64 = 0

    @Option(help: "The first random trace's seed.")
    var seed: UInt64 = 1

    @Option(help: "Ops in each random trace.")
    var randomOps = 30

    @Argument(help: "Trace files.")
    var traces: [String] = []

    @OptionGroup var module: ModuleParameterOptions

    func validate() throws {
        if modelOnly && kernelOnly { throw ValidationError("--model-only and --kernel-only exclude each other") }
        if traces.isEmpty && random == 0 { throw ValidationError("name at least one trace file, or --random N") }
        if random > 0 && kernelOnly { throw ValidationError("--random needs the model: its traces state no values to hold the kernel to") }
        if modelKernel != nil && kernelOnly { throw ValidationError("--model-kernel needs the model, which --kernel-only leaves out") }
        if randomOps < 1 { throw ValidationError("--random-ops must be at least 1") }
        if seed.addingReportingOverflow(random).overflow { throw ValidationError("--seed \(seed) + --random \(random) overflows") }
    }

    func run() throws {
        let running = CompareProfile.runningKernel()
        let profile = self.profile ?? running
        let modelKernel = profile.modelKernel(asked: self.modelKernel, comparingLive: !modelOnly)
        var parsed: [Trace] = []
        var invalid = false
        for path in traces {
            do { parsed.append(try TraceParser.parse(contentsOf: path)) } catch {
                warn("\(error)")
                invalid = true
            }
        }
        if invalid { throw ExitCode(2) }

        var targets: [any TraceTarget] = []
        let params: ModuleParameters
        do {
            var assignments = module.assignments
            if random > 0 && !assignments.contains(where: { $0.hasPrefix("node_budget_pages=") }) {
                assignments.append("node_budget_pages=\(RandomTrace.modelNodeBudgetPages)")
            }
            params = try ModuleParameters(assignments)
            try params.applyRCU()
            if !kernelOnly {
                targets.append(try ModelTarget(profile: profile, kernel: modelKernel, parameters: params.allocator, thp: params.thp))
            }
            if !modelOnly { targets.append(try LiveKernel()) }
        } catch {
            warn("\(error)")
            throw ExitCode(2)
        }
        if !modelOnly && profile != running {
            warn("note: --profile \(profile.rawValue) is not this kernel's (\(running.rawValue)): expect kernel mismatches after DONTNEED")
        }
        if !modelOnly && !kernelOnly && params.thp != .running {
            let model = params.thp, kernel = THPSettings.running
            warn("note: the model's THP settings (enabled=\(model.enabled.rawValue), shmem_enabled=\(model.shmemEnabled.rawValue)) are not this kernel's (\(kernel.enabled.rawValue), \(kernel.shmemEnabled.rawValue)): expect huge-PMD mismatches in traces that use THP")
        }

        // The values were measured on the profile's own kernel: they hold a
        // model that follows it, and a kernel that is it.
        let ownKernel = profile.modelKernel(asked: nil, comparingLive: false)
        let judged = kernelOnly ? KernelVersion.running : modelKernel
        let expectationsApply = judged == ownKernel
        if !expectationsApply {
            warn(kernelOnly
                 ? "note: the traces' expected kB were measured on \(ownKernel) for \(profile.rawValue), and this kernel is \(judged.map(String.init(describing:)) ?? "unknown"): nothing holds it to them"
                 : "note: the traces' expected kB were measured on \(ownKernel) for \(profile.rawValue), and the model follows \(modelKernel): only the model and the kernel are held to each other")
        }
        let runner = CompareRunner(targets: targets, profile: profile, kernel: modelKernel, expectationsApply: expectationsApply)
        if !kernelOnly && profile == .ptReclaim && modelKernel < KernelVersion(6, 14) {
            warn("note: the model follows \(modelKernel), and PT_RECLAIM came in 6.14: --profile 6.14+ gives that kernel a PT_RECLAIM it never had")
        }
        var runs = parsed.isEmpty ? [] : runner.run(parsed)
        var randomTexts: [String: String] = [:]
        for first in stride(from: seed, to: seed + random, by: Int(RandomTrace.batch)) {
            let seeds = first..<min(first + RandomTrace.batch, seed + random)
            var batch: [Trace] = []
            for s in seeds {
                do {
                    let (text, trace) = try RandomTrace.parsed(seed: s, ops: randomOps, profile: profile, kernel: modelKernel)
                    randomTexts[trace.file] = text
                    batch.append(trace)
                } catch {
                    // The generator's own bug: name the seed and stop, as
                    // an invalid trace file stops the run (exit 2).
                    warn("random trace \(s) is invalid, a bug of the generator's: \(error)\n\(RandomTrace.text(seed: s, ops: randomOps, profile: profile, kernel: modelKernel))")
                    throw ExitCode(2)
                }
            }
            runs += runner.run(batch)
            warn("random traces: \(seeds.upperBound - seed) of \(random) run, \(runs.filter { !$0.matches && $0.skipped == nil }.count) not matching so far")
        }
        let report = CompareReport(profile: profile, modelKernel: kernelOnly ? nil : modelKernel, expectationsApply: expectationsApply,
                                   runs: runs, timed: time)
        for trace in report.traces where !trace.match && trace.skipped == nil {
            if let text = randomTexts[trace.file] { warn("\(trace.file), to replay with ptlab compare:\n\(text)") }
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else {
            print(CompareTable(report: report, terse: Set(randomTexts.keys)).text)
        }
        if report.refused { throw ExitCode(2) }
        if report.onlyNotComparable { throw ExitCode(3) }
        if !report.matches { throw ExitCode(1) }
    }

    private func warn(_ message: String) {
        FileHandle.standardError.write(Data("ptlab: \(message)\n".utf8))
    }
}

extension CompareProfile: ExpressibleByArgument {}

extension KernelVersion: ExpressibleByArgument {
    public init?(argument: String) { self.init(release: argument) }
}

/// The side-by-side text form of a report: one row per checkpoint.
struct CompareTable {
    let report: CompareReport
    /// Traces whose rows show only when they do not match (--random's: a
    /// thousand traces of thirty checkpoints would bury the one that
    /// matters).
    var terse: Set<String> = []

    var text: String {
        var rows: [[String]] = [["checkpoint", "model kB", "kernel kB", "expect kB", ""]]
        var notes: [String] = []
        for trace in report.traces {
            for checkpoint in trace.checkpoints where !(terse.contains(trace.file) && trace.match) {
                rows.append(["\(trace.file):\(checkpoint.line)", cell(checkpoint.modelKB), cell(checkpoint.kernelKB),
                             cell(checkpoint.expectedKB), checkpoint.match ? "ok" : "MISMATCH"])
            }
            if let cleanup = trace.afterCleanup, (cleanup.modelKB ?? 0) != 0 || (cleanup.kernelKB ?? 0) != 0 {
                rows.append(["\(trace.file): after cleanup", cell(cleanup.modelKB), cell(cleanup.kernelKB), "0", "MISMATCH"])
            }
            if let error = trace.error { notes.append("error: \(error)") }
            if trace.ops != nil { notes.append("time: \(trace.file): " + Self.describe(trace)) }
            if let why = trace.notComparable { notes.append("NOT COMPARABLE: \(why)") }
            if let why = trace.skipped { notes.append("SKIPPED: \(trace.file): \(why)") }
        }
        let widths = rows[0].indices.map { column in rows.map { $0[column].count }.max()! }
        var lines = rows.map { row in
            row.indices.map { column in
                column == 0 || column == row.count - 1
                    ? row[column].padding(toLength: widths[column], withPad: " ", startingAt: 0)
                    : String(repeating: " ", count: widths[column] - row[column].count) + row[column]
            }.joined(separator: "  ").trimmingCharacters(in: .whitespaces)
        }
        lines += notes
        let matched = report.traces.filter(\.match).count
        let unjudged = report.traces.filter { !$0.comparable }.count
        let skipped = report.traces.filter { $0.skipped != nil }.count
        lines.append("profile \(report.profile)\(report.modelKernel.map { " (model: \($0))" } ?? ""): \(matched) of \(report.traces.count) traces match"
                     + (unjudged > 0 ? ", \(unjudged) not comparable" : "") + (skipped > 0 ? ", \(skipped) skipped" : ""))
        return lines.joined(separator: "\n")
    }

    private func cell(_ value: Int?) -> String { value.map(String.init) ?? "-" }

    static func describe(_ trace: TraceReport) -> String {
        let ops = trace.ops ?? 0
        func side(_ name: String, _ seconds: Double?) -> String? {
            seconds.map { "\(name) " + String(format: "%.3f s (%.0f ops/s)", $0, $0 > 0 ? Double(ops) / $0 : 0) }
        }
        var parts = [side("model", trace.modelSeconds), side("kernel", trace.kernelSeconds)].compactMap { $0 }
        if let ratio = trace.ratio { parts.append(String(format: "kernel/model %.1f×", ratio)) }
        return "\(ops) ops; " + parts.joined(separator: ", ")
    }
}
