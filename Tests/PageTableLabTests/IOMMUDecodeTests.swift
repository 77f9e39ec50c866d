import Foundation
import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// `ptlab iommu decode`: DescriptorReport, and the command it backs.
final class IOMMUDecodeTests: XCTestCase {
    /// The JSON object the command prints, read back.
    private func json(_ report: DescriptorReport) throws -> [String: Any] {
        let data = try JSONEncoder().encode(report)
        return try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    func testAPageSelectivePASIDIOTLBWithAM47IsAcceptedWithItsRange() throws {
        let report = try DescriptorReport(parsing: ["0x700010036", "f80000000000002f"])
        XCTAssertTrue(report.accepted)
        XCTAssertEqual(report.type, 6)
        XCTAssertEqual(report.name, "pasid-iotlb")
        XCTAssertEqual(report.fields["address_mask"], .number(47))
        XCTAssertEqual(report.fields["pasid"], .number(7))
        XCTAssertEqual(report.fields["first_address"], .address(0xF800_0000_0000_0000))
        XCTAssertEqual(report.fields["last_address"], .address(.max))
        let object = try json(report)
        XCTAssertEqual(Set(object.keys), ["type", "name", "accepted", "iqe_reason", "fields"])
        XCTAssertTrue(object["iqe_reason"] is NSNull, "iqe_reason is null when accepted")
        let fields = try XCTUnwrap(object["fields"] as? [String: Any])
        XCTAssertEqual(fields["first_address"] as? String, "0xf800000000000000")
    }

    func testAPageSelectiveIOTLBNamesItsRangeAndMAMVBoundsIt() throws {
        let qw0 = "0x50032"                      // type 2, G=3, DID 5
        let ok = try DescriptorReport(parsing: [qw0, "0x40000012"])      // address 0x40000000, AM 18
        XCTAssertTrue(ok.accepted)
        XCTAssertEqual(ok.fields["first_address"], .address(0x4000_0000))
        XCTAssertEqual(ok.fields["last_address"], .address(0x7FFF_FFFF))
        let wide = try DescriptorReport(parsing: [qw0, "0x13"])
        XCTAssertFalse(wide.accepted)
        XCTAssertEqual(wide.iqeReason, 4)
        XCTAssertEqual(wide.fields["address_mask"], .number(19), "the fields of a refused descriptor still show")
        XCTAssertTrue(try DescriptorReport(parsing: [qw0, "0x13"], maxAddressMask: 19).accepted)
    }

    /// Device-selective context-cache: the source-ids reached after the
    /// function mask, for every FM, of SID 0x1234 (function 4).
    func testSourceIDsUnderEveryFunctionMask() throws {
        let expected: [[UInt64]] = [
            [0x1234],
            [0x1230, 0x1234],
            [0x1230, 0x1232, 0x1234, 0x1236],
            Array(0x1230...0x1237),
        ]
        for fm in 0..<4 {
            let qw0 = UInt64(fm) << 48 | 0x1234 << 32 | 9 << 16 | 3 << 4 | 1
            let report = DescriptorReport(RawDescriptor(qw0: qw0))
            XCTAssertTrue(report.accepted)
            XCTAssertEqual(report.fields["source_ids"], .list(expected[fm]), "FM=\(fm)")
            let object = try json(report)
            let fields = try XCTUnwrap(object["fields"] as? [String: Any])
            XCTAssertEqual(fields["source_ids"] as? [UInt64], expected[fm])
        }
    }

    func testRefusedDescriptorsGiveTheIQEReasonAndWhy() throws {
        let reserved = try DescriptorReport(parsing: ["0x137"])                 // PASID-cache global, bit 8 set
        XCTAssertEqual(reserved.iqeReason, 4)
        XCTAssertEqual(reserved.why, "reserved field set: reserved bits 0x100 set in qw0")
        let unknown = try DescriptorReport(parsing: ["0x9"])
        XCTAssertEqual([unknown.iqeReason, unknown.type], [3, 9])
        XCTAssertEqual(unknown.name, "unknown")
        XCTAssertEqual(unknown.fields, [:])
        let legacy = try DescriptorReport(parsing: ["0x76"], width: .bits128)
        XCTAssertEqual(legacy.iqeReason, 3)
        XCTAssertEqual(try json(legacy)["iqe_reason"] as? Int, 3)
        let qw2 = try DescriptorReport(parsing: ["0x37", "0", "1", "0"])
        XCTAssertEqual(qw2.iqeReason, 4, "qw2 is reserved in every type")
    }

    func testBadInputIsAnErrorNamingIt() {
        for (args, error) in [
            (["1", "2", "3"], DescriptorInputError.count(3)),
            ([], .count(0)),
            (["0xz"], .notHex(quadword: 0, text: "0xz")),
            (["1", "0x10000000000000000"], .notHex(quadword: 1, text: "0x10000000000000000")),
            (["0x"], .notHex(quadword: 0, text: "0x")),
        ] {
            XCTAssertThrowsError(try DescriptorReport(parsing: args)) { XCTAssertEqual($0 as? DescriptorInputError, error) }
        }
        XCTAssertThrowsError(try DescriptorReport(parsing: ["0x37", "0", "1", "0"], width: .bits128)) {
            XCTAssertEqual($0 as? DescriptorInputError, .wideInNarrowQueue)
        }
    }

    /// The built command: its exit status says accepted (0), IQE (1), bad
    /// input (2), whatever the failure.
    func testTheCommandsExitStatus() throws {
        let ptlab = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("ptlab")
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: ptlab.path), "ptlab is not built next to the tests")
        func run(_ args: [String]) throws -> (Int32, String) {
            let p = Process()
            p.executableURL = ptlab
            p.arguments = ["iommu", "decode"] + args
            let out = Pipe()
            p.standardOutput = out
            p.standardError = FileHandle.nullDevice
            try p.run()
            let data = out.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            return (p.terminationStatus, String(decoding: data, as: UTF8.self))
        }
        let (ok, text) = try run(["--json", "0x700010036", "0xf80000000000002f"])
        XCTAssertEqual(ok, 0)
        XCTAssertTrue(text.contains("\"address_mask\" : 47"), text)
        XCTAssertEqual(try run(["0x137"]).0, 1)
        XCTAssertEqual(try run(["0xq"]).0, 2)
        XCTAssertEqual(try run(["1", "2", "3"]).0, 2)
        XCTAssertEqual(try run(["--no-such-flag", "1"]).0, 2)
        XCTAssertEqual(try run(["--width", "64", "1"]).0, 2)
    }
}
