import ArgumentParser
import Foundation
import PageTableLab
import PageTableLabHarness

/// `ptlab iommu`: the emulated VT-d unit, from the command line.
struct IOMMUCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "iommu",
        abstract: "Look at the emulated VT-d IOMMU: decode invalidation descriptors.",
        discussion: """
            The lab's IOMMU is an emulated Intel VT-d unit: an invalidation queue of \
            128- or 256-bit descriptors (types 1-8), an asynchronous hardware thread that \
            executes them, IOTLB, paging-structure and PASID caches, and DMA walkers that \
            use them. Its driver is the lab's robust qi_submit_sync by default, or Linux's \
            step for step with --param qi_driver=linux (see `ptlab help stress` and \
            README.md, "The IOMMU model").
            """,
        subcommands: [IOMMUDecodeCommand.self])
}

/// `ptlab iommu decode`: what a raw descriptor says, and whether the unit
/// takes it. Exit status 0: accepted; 1: the unit would raise IQE; 2: the
/// input is not a descriptor.
struct IOMMUDecodeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "decode",
        abstract: "Decode a raw invalidation descriptor and say whether the emulated unit accepts it.",
        discussion: """
            QW0 [QW1 [QW2 QW3]] are the descriptor's quadwords in hexadecimal (0x optional), \
            as Linux's qi_submit tracepoint prints them; missing ones are zero. The unit is \
            the lab's default: a 256-bit queue (scalable mode) and MAMV 18, the largest \
            address mask of a type-2 page-selective IOTLB flush (PASID-IOTLB flushes take \
            any mask, as the VT-d specification requires).

            Printed: the type, its name and every field by name; for a device-selective \
            context-cache flush the source-ids it reaches after the function mask \
            (source_ids), for page-selective and device-TLB flushes the range covered \
            (first_address, last_address). Then the verdict: accepted, or the IQE the unit \
            would raise: its IQEI reason code and why.

            --json prints one object: {"type":N,"name":...,"accepted":bool,"iqe_reason":N|null,"fields":{...}} \
            (addresses as hexadecimal strings).

            Exit status: 0 accepted, 1 the unit would raise IQE, 2 bad input.

            Examples:
              ptlab iommu decode 0x700010036 0xf80000000000002f
                                          page-selective PASID-IOTLB, AM=47: accepted
              ptlab iommu decode --json 0x1001000040031
                                          context-cache, device-selective, SID 0x10, FM=1:
                                          source_ids [16, 20]
              ptlab iommu decode 0x10000000000000031 0
                                          not a 64-bit number: exit 2
            """)

    @Argument(help: ArgumentHelp("The descriptor's quadwords, hexadecimal.", valueName: "QW0 [QW1 [QW2 QW3]]"))
    var quadwords: [String] = []

    @Flag(help: "Print one JSON object.")
    var json = false

    @Option(help: "Descriptor width of the queue: 128 or 256.")
    var width: Int = 256

    @Option(help: "The unit's MAMV (0...63).")
    var mamv: Int = Int(IntelIOMMU.Parameters().maxAddressMask)

    /// Is `arguments` (the process's) an invocation of this command? Its
    /// usage errors exit with 2, not ArgumentParser's 64.
    static func isInvocation(_ arguments: [String]) -> Bool {
        Array(arguments.dropFirst().prefix(2)) == ["iommu", "decode"]
    }

    func run() throws {
        let report: DescriptorReport
        do {
            guard let w = DescriptorWidth(rawValue: width == 128 ? 0 : width == 256 ? 1 : -1) else {
                throw BadInput("--width must be 128 or 256, not \(width)")
            }
            guard (0...63).contains(mamv) else { throw BadInput("--mamv must be 0...63, not \(mamv)") }
            do {
                report = try DescriptorReport(parsing: quadwords, width: w, maxAddressMask: UInt8(mamv))
            } catch {
                throw BadInput(error.description)
            }
        } catch let bad as BadInput {
            Diagnostics.warn("iommu decode: \(bad.message)")
            throw ExitCode(2)
        }
        if json {
            try JSONOutput.print(report)
        } else {
            print("type \(report.type)  \(report.name)")
            for (k, v) in report.fields.sorted(by: { $0.key < $1.key }) {
                print("  \(k.padding(toLength: 26, withPad: " ", startingAt: 0)) \(v)")
            }
            print(report.accepted ? "accepted" : "refused: IQE, IQEI \(report.iqeReason ?? 0): \(report.why ?? "")")
        }
        if !report.accepted { throw ExitCode(1) }
    }

    private struct BadInput: Error {
        let message: String
        init(_ message: String) { self.message = message }
    }
}
