import ArgumentParser
import PageTableLab
import PageTableLabHarness

/// What the lab runs on, and what it is set to: the two things a report
/// must carry to be reproducible.
struct InfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Show the machine the lab runs on: NUMA nodes, kernel, libraries, page-table config.",
        discussion: """
            Without options: NUMA nodes and their CPUs, the node distance matrix, the \
            kernel release, the liburcu and libnuma versions, and the kernel options that \
            decide how page tables are freed (CONFIG_PT_RECLAIM, \
            CONFIG_ASYNC_KERNEL_PGTABLE_FREE, CONFIG_MMU_GATHER_RCU_TABLE_FREE, ...) read \
            from /proc/config.gz.

            With --params: every module parameter, its value (after any --param), its \
            default, the values it accepts, and what it does.
            """)

    @Flag(help: "Print one JSON object instead of a table.")
    var json = false

    @Flag(help: "List the module parameters instead of the machine.")
    var params = false

    @OptionGroup var module: ModuleParameterOptions

    func run() throws {
        let parameters = try module.resolve()
        if params {
            let rows = ParameterRow.rows(parameters)
            if json { try JSONOutput.print(rows) } else { printParameters(rows) }
            return
        }
        let info = SystemInfo.probe()
        if json { try JSONOutput.print(info) } else { printSystem(info) }
    }

    private func printSystem(_ info: SystemInfo) {
        let k = info.kernel
        print("kernel      \(k.sysname) \(k.release) \(k.machine) (\(k.version))")
        print("liburcu     \(info.liburcuVersion) (\(info.liburcuFlavour) flavour)")
        print("libnuma     \(info.libnumaVersion)")
        let t = info.topology
        print("NUMA        \(t.available ? "available" : "not available (one pseudo-node)"), \(t.nodes.count) node(s)")
        for node in t.nodes {
            print("  node \(node.id): cpus \(cpuList(node.cpus)), \(node.sizeBytes >> 20) MiB")
        }
        print("distances")
        let width = max(6, (t.nodeIDs.map { "node\($0)".count }.max() ?? 0) + 1)
        print("  " + pad("", width) + t.nodeIDs.map { pad("node\($0)", width) }.joined())
        for (i, row) in t.distances.enumerated() {
            print("  " + pad("node\(t.nodeIDs[i])", width) + row.map { pad(String($0), width) }.joined())
        }
        print("kernel config (\(info.kernelConfig.source))")
        for name in SystemInfo.pageTableOptions {
            print("  \(name.padding(toLength: 36, withPad: " ", startingAt: 0)) \(info.kernelConfig.options[name] ?? "absent")")
        }
    }

    private func printParameters(_ rows: [ParameterRow]) {
        let nameWidth = rows.map(\.name.count).max() ?? 0
        for row in rows {
            let marker = row.value == row.default ? "" : "   (default \(row.default))"
            print("\(row.name.padding(toLength: nameWidth, withPad: " ", startingAt: 0)) = \(row.value)\(marker)")
            print("    \(row.type): \(row.help)")
        }
    }

    private func pad(_ s: String, _ width: Int) -> String {
        String(repeating: " ", count: max(0, width - s.count)) + s
    }

    /// "0-3,8-11", as /sys/devices/system/node/node*/cpulist writes it.
    private func cpuList(_ cpus: [Int]) -> String {
        var ranges: [(first: Int, last: Int)] = []
        for cpu in cpus.sorted() {
            if let r = ranges.last, cpu == r.last + 1 { ranges[ranges.count - 1].last = cpu } else { ranges.append((cpu, cpu)) }
        }
        return ranges.isEmpty ? "none" : ranges.map { $0 == $1 ? "\($0)" : "\($0)-\($1)" }.joined(separator: ",")
    }
}

/// One module parameter as `info --params` shows it.
struct ParameterRow: Encodable {
    let name, value, `default`, type, help: String

    static func rows(_ parameters: ModuleParameters) -> [ParameterRow] {
        ModuleParameters.table.map {
            ParameterRow(name: $0.name, value: parameters.value($0.name).description,
                         default: $0.defaultValue.description, type: $0.typeDescription, help: $0.help)
        }
    }
}
