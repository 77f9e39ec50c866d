import PageTableLab
import Foundation

/// The mappings of this process as /proc/self/maps lists them.
struct ProcessMaps {
    struct Mapping {
        let range: Range<UInt64>
        /// The whole maps line, to show the user what is in the way.
        let text: String
    }

    let mappings: [Mapping]

    /// Read to end of file: Foundation's file reading takes a short read
    /// for the end, and /proc hands the file over a page at a time, so it
    /// saw the first 4 KiB of mappings and never the stack above them.
    static func current() throws(TraceError) -> ProcessMaps {
        let reader = ProcReader("/proc/self/maps", capacity: 4 << 20)
        let text: String
        do {
            text = String(decoding: try reader.read(), as: UTF8.self)
        } catch {
            throw TraceError(file: reader.path, line: 0, message: "\(error)")
        }
        return ProcessMaps(mappings: text.split(separator: "\n").compactMap { line in
            let bounds = line.prefix { $0 != " " }.split(separator: "-")
            guard bounds.count == 2, let start = UInt64(bounds[0], radix: 16), let end = UInt64(bounds[1], radix: 16),
                  start < end else { return nil }
            return Mapping(range: start..<end, text: line.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " "))
        })
    }

    /// Refuses a trace any of whose ops lies in a 512 GiB region (one PGD
    /// entry, so one PUD table) that already holds a mapping of this
    /// process: that mapping keeps the region's upper tables alive and
    /// allocates its own, so the kernel's VmPTE growth would not be the
    /// trace's alone and a comparison would mean nothing.
    func checkRegionsFree(for trace: Trace) throws(TraceError) {
        for step in trace.steps {
            for range in step.op.ranges {
                for region in TraceAddressSpace.regions(of: range) {
                    if let other = mappings.first(where: { $0.range.overlaps(region) }) {
                    throw TraceError(file: trace.file, line: step.line, message:
                        "\(step.op.name) \(range.traceDescription) lies in the 512 GiB region \(region.traceDescription), which already holds a mapping of this process (\(other.text)); the kernel's VmPTE would not be the trace's alone — use an empty region")
                    }
                }
            }
        }
    }
}
