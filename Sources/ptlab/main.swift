import ArgumentParser

/// The `ptlab` command: the lab's front door. Each subcommand is one way a
/// kernel engineer uses the lab; the discussion below is the tutorial
/// `ptlab --help` gives.
struct PTLab: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ptlab",
        abstract: "PageTableLab: a userspace laboratory for how Linux frees page tables.",
        discussion: """
            PageTableLab models the kernel's page-table lifecycle on real machinery:
            liburcu's call_rcu for grace periods and libnuma for node-bound memory,
            under simulated x86-64 page tables, an mmu_gather, pte_free_defer and an
            emulated VT-d IOMMU. Page-table pages are real 4 KiB pages; freeing one
            bumps its descriptor's generation (and, with --param page_poison=y,
            fills it with 0x6b), so a walker that reads a freed table is caught,
            not assumed away.

            Three ways to use it:
              1. Import it: `import PageTableLab` in a Swift prototype, to try a
                 freeing scheme against real concurrency (see README.md).
              2. Stress: hammer one mechanism with concurrent walkers; count
                 use-after-free detections, throughput, latency, memory held.
              3. Compare: replay one mapping trace on the model and on this
                 machine's kernel; both must allocate and free tables alike.

            Module parameters, like a kernel module's, tune every subcommand:
            --param name=value, repeatable; `ptlab info --params` lists them.

            Examples:
              ptlab info                  NUMA nodes, kernel, liburcu, PT_RECLAIM
              ptlab info --params         every module parameter and its default
              ptlab bench                 RCU and allocator speed against raw C
              ptlab bench --json --param page_poison=y
                                          the same as JSON, freed pages poisoned
              ptlab stress collapse --mode immediate
                                          khugepaged retract without pte_free_defer:
                                          the walkers must catch it
              ptlab stress all --duration 2
                                          every safe and unsafe mode, with a verdict
              ptlab compare Tests/PageTableLabTests/Traces/*.trace
                                          model against the live kernel, VmPTE per step
              ptlab numa-check            pages, tables and fallback where move_pages
                                          says they are (two nodes: scripts/numa-vm-check)
              ptlab iommu decode 0x700010036 0xf80000000000002f
                                          a VT-d invalidation descriptor, field by field,
                                          and whether the emulated IOMMU takes it
              ptlab stress iommu-faults --mode per-page --param qi_driver=linux
                                          Linux's qi_check_fault meets an IQE inside a batch:
                                          the queue stops for good (README: the finding)

            Timings need a release build: swift run -c release ptlab bench
            """,
        subcommands: [StressCommand.self, CompareCommand.self, BenchCommand.self, InfoCommand.self, NUMACheckCommand.self,
                      IOMMUCommand.self])
}

extension PTLab {
    /// ArgumentParser's main, but a usage error of `ptlab iommu decode`
    /// exits with 2, the status that command promises for bad input.
    /// (Top-level code would resolve `main()` to the synchronous overload,
    /// which refuses an asynchronous root; an async function picks this.)
    static func start() async {
        if let (topic, known) = unknownHelpTopic(CommandLine.arguments) {
            Diagnostics.warn("no subcommand '\(topic)' to show help for (subcommands: \(known.joined(separator: ", ")))")
            exit(withError: ExitCode.validationFailure)
        }
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            if exitCode(for: error) == .validationFailure, IOMMUDecodeCommand.isInvocation(CommandLine.arguments) {
                Diagnostics.warn(fullMessage(for: error))
                exit(withError: ExitCode(2))
            }
            exit(withError: error)
        }
    }
}

extension PTLab {
    /// The name in `ptlab help NAME ...` that is no subcommand, if one is
    /// not, and the subcommands there are: ArgumentParser shows the
    /// top-level help for it and exits 0, as if the name were known. Past a
    /// command with no subcommands the words are its arguments (`ptlab
    /// help stress race`), and `help` is ArgumentParser's own.
    static func unknownHelpTopic(_ arguments: [String]) -> (String, known: [String])? {
        guard arguments.count > 2, arguments[1] == "help" else { return nil }
        var command: any ParsableCommand.Type = PTLab.self
        for name in arguments.dropFirst(2) where !name.hasPrefix("-") {
            let subcommands = command.configuration.subcommands
            guard !subcommands.isEmpty, name != "help" else { return nil }
            guard let sub = subcommands.first(where: { $0.configuration.commandName == name }) else {
                return (name, subcommands.compactMap { $0.configuration.commandName })
            }
            command = sub
        }
        return nil
    }
}

await PTLab.start()
