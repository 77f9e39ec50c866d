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

            Timings need a release build: swift run -c release ptlab bench
            """,
        subcommands: [StressCommand.self, CompareCommand.self, BenchCommand.self, InfoCommand.self, NUMACheckCommand.self])
}

extension PTLab {
    /// Top-level code resolves `main()` to the synchronous overload, which
    /// refuses an asynchronous root; an async function picks the async one.
    static func start() async { await main() }
}

await PTLab.start()
