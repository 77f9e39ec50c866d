import ArgumentParser
import Foundation
import PageTableLab
import PageTableLabHarness

/// `ptlab numa-check`: asks the kernel (move_pages) where the lab's pages,
/// page tables and fallback allocations really are, so "NUMA-aware" is
/// checked on the machine rather than believed.
struct NUMACheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "numa-check",
        abstract: "Check with move_pages that the lab's pages and page tables land on the NUMA nodes they claim.",
        discussion: """
            Loads a small allocator (node_budget_pages=1024, chunk_order=10) and checks:
              placement    pages allocated for each node are resident there
              page tables  an mm faulted by a thread pinned to the last node's first
                           CPU, with node-local tables, has every table on that node
              fallback     past the last node's budget, allocations come from the
                           nearest other node and count as numa_foreign / numa_miss
              counters     after every step, each node's allocated_pages,
                           nr_page_table_pages, numa_hit, numa_miss, numa_foreign
                           equal a ledger of the pages the check holds

            On one node the fallback cannot happen: it is reported as not applicable
            (null in JSON), and the other checks prove only that node 0 is node 0.
            scripts/numa-vm-check runs this in a two-node VM.

            Exit status: 0 when every check that could run held (numa_proven in the
            JSON says whether that was on two nodes or more); 1 otherwise; 2 when the
            check could not start.
            """)

    @Flag(help: "Print one JSON object instead of a summary.")
    var json = false

    func run() throws {
        let result: NUMACheckResult
        do {
            result = try NUMACheck.run()
        } catch {
            FileHandle.standardError.write(Data("ptlab: numa-check: \(error)\n".utf8))
            throw ExitCode(2)
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            print(String(decoding: try encoder.encode(result), as: UTF8.self))
        } else {
            print(NUMACheckSummary(result: result).text)
        }
        if !result.checksPassed { throw ExitCode(1) }
    }
}

/// The human form of a result: one line per check.
struct NUMACheckSummary {
    let result: NUMACheckResult

    var text: String {
        let topology = result.topology
        var lines = ["NUMA check on \(result.nodes) node(s): "
            + topology.nodes.map { "node \($0.id) cpus \($0.cpus.map(String.init).joined(separator: ","))" }
                .joined(separator: "; ")]
        if let placement = result.placement {
            let detail = placement.map { "node \($0.node): \($0.resident[$0.node] ?? 0)/\($0.pages) frames resident there" }
            lines.append(row("placement", result.placementOK, detail.joined(separator: "; ")))
        }
        if let tables = result.pageTables {
            let detail = tables.error.map { "error: \($0)" }
                ?? "cpu \(tables.cpu ?? -1) (node \(tables.cpuNode ?? -1)): \(tables.tables.count) tables on nodes "
                + Set(tables.tables.map(\.resident)).sorted().map(String.init).joined(separator: ",")
            lines.append(row("page tables", result.pagetablesNodeLocal, detail))
        }
        if let fallback = result.fallback {
            let detail = fallback.error.map { "error: \($0)" }
                ?? (fallback.applicable
                    ? "node \(fallback.node) full after \(fallback.allocatedOnNode) pages; \(fallback.fallbackAllocations) of \(fallback.requested) "
                        + "from node \(fallback.expectedNode ?? -1) (numa_foreign \(fallback.numaForeign), numa_miss \(fallback.numaMiss ?? 0))"
                    : fallback.note ?? "")
            lines.append(row("fallback", fallback.applicable ? fallback.ok : nil, detail))
        }
        let failed = result.counters.filter { !$0.ok }.map(\.phase)
        lines.append(row("counters", result.countersOK,
                         failed.isEmpty ? "\(result.counters.count) checkpoints" : "mismatch at " + failed.joined(separator: ", ")))
        lines += result.notApplicable.map { "not applicable: \($0)" }
        lines.append(result.numaProven ? "NUMA placement proven on \(result.nodes) nodes"
                     : result.checksPassed ? "every check that could run held; NUMA not proven (fewer than two nodes)"
                     : "FAILED")
        return lines.joined(separator: "\n")
    }

    private func row(_ name: String, _ ok: Bool?, _ detail: String) -> String {
        "  " + name.padding(toLength: 12, withPad: " ", startingAt: 0)
            + (ok.map { $0 ? "ok    " : "FAIL  " } ?? "n/a   ") + detail
    }
}
