#if canImport(Glibc)
import Glibc
#endif
import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// Reading a config file whole, gzip or plain, and the running kernel's
/// config agreeing with what zcat makes of it.
final class KConfigReaderTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("kconfig-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try FileManager.default.removeItem(at: directory)
    }

    private func file(_ name: String, _ bytes: [UInt8]) throws -> String {
        let url = directory.appendingPathComponent(name)
        try Data(bytes).write(to: url)
        return url.path
    }

    /// Bigger than the reader's first buffer, so the retry with the size the
    /// C side reports is exercised.
    private let bigText = (0..<20_000).map { "CONFIG_OPTION_\($0)=\($0 % 3 == 0 ? "y" : "m")\n" }.joined()
        + "CONFIG_PT_RECLAIM=y\n# CONFIG_IOMMU_SVA is not set\n"

    func testGzipAndPlainFilesReadWhole() throws {
        XCTAssertGreaterThan(bigText.utf8.count, 1 << 18)
        XCTAssertEqual(KConfig.read(try file("config.gz", gzipStored(Array(bigText.utf8)))), bigText)
        XCTAssertEqual(KConfig.read(try file("config", Array(bigText.utf8))), bigText)
        XCTAssertEqual(KConfig.read(try file("small.gz", gzipStored(Array("CONFIG_A=y\n".utf8)))), "CONFIG_A=y\n")
        XCTAssertEqual(KConfig.read(try file("empty", [])), "")
    }

    func testAnythingShortOfAWholeFileIsUnreadable() throws {
        let gz = gzipStored(Array(bigText.utf8))
        XCTAssertNil(KConfig.read(try file("truncated.gz", Array(gz.prefix(gz.count / 2)))), "half a config")
        var badCRC = gz
        badCRC[badCRC.count - 5] ^= 0xff
        XCTAssertNil(KConfig.read(try file("badcrc.gz", badCRC)), "corrupt data")
        XCTAssertNil(KConfig.read(directory.appendingPathComponent("missing").path))
        XCTAssertNil(KConfig.read(directory.path), "a directory")
    }

    func testLoadTakesTheFirstReadablePath() throws {
        let missing = directory.appendingPathComponent("missing").path
        let plain = try file("config-6.1", Array("# CONFIG_PT_RECLAIM is not set\n".utf8))
        let gz = try file("config.gz", gzipStored(Array("CONFIG_PT_RECLAIM=y\n".utf8)))
        XCTAssertEqual(KConfig.load(from: [missing, plain])?.source, plain)
        XCTAssertEqual(KConfig.load(from: [missing, plain])?["CONFIG_PT_RECLAIM"], .notSet)
        XCTAssertEqual(KConfig.load(from: [gz, plain])?.source, gz)
        XCTAssertEqual(KConfig.load(from: [gz, plain])?["CONFIG_PT_RECLAIM"], .value("y"))
        XCTAssertNil(KConfig.load(from: [missing]))
        XCTAssertNil(KConfig.load(from: []))
    }

    /// The in-process reader and the profile must say what zcat says.
    func testRunningKernelAgreesWithZcat() throws {
        guard access("/proc/config.gz", R_OK) == 0 else { throw XCTSkip("/proc/config.gz is unreadable here") }
        let out = directory.appendingPathComponent("zcat.out").path
        // system(3), not Foundation's Process: the latter leaves threads
        // behind that would disturb live VmPTE tests later in this process.
        guard system("zcat /proc/config.gz > '\(out)'") == 0 else { throw XCTSkip("zcat cannot run here") }
        let zcat = try String(contentsOfFile: out, encoding: .utf8)
        let zcatSaysPTReclaim = zcat.split(separator: "\n").contains("CONFIG_PT_RECLAIM=y")

        XCTAssertEqual(KConfig.read("/proc/config.gz"), zcat)
        XCTAssertEqual(KConfig.running?.source, "/proc/config.gz")
        XCTAssertEqual(KConfig.running?["CONFIG_PT_RECLAIM"] == .value("y"), zcatSaysPTReclaim)
        XCTAssertEqual(CompareProfile.kernelHasPTReclaim(), zcatSaysPTReclaim)
        XCTAssertEqual(SystemInfo.kernelConfig(options: ["CONFIG_PT_RECLAIM"]).options["CONFIG_PT_RECLAIM"] == "y",
                       zcatSaysPTReclaim)
    }
}

/// A gzip member (RFC 1952) of stored deflate blocks (RFC 1951 §3.2.4):
/// real gzip framing with a real CRC, built without a tool.
private func gzipStored(_ data: [UInt8]) -> [UInt8] {
    var out: [UInt8] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]
    var chunks = stride(from: 0, to: data.count, by: 0xffff).map { data[$0..<min($0 + 0xffff, data.count)] }
    if chunks.isEmpty { chunks = [[]] }
    for (i, chunk) in chunks.enumerated() {
        let length = UInt16(chunk.count)
        out.append(i == chunks.count - 1 ? 1 : 0)
        out += [UInt8(length & 0xff), UInt8(length >> 8), UInt8(~length & 0xff), UInt8(~length >> 8)]
        out += chunk
    }
    var crc: UInt32 = 0xffff_ffff
    for byte in data {
        crc ^= UInt32(byte)
        for _ in 0..<8 { crc = crc & 1 == 1 ? (crc >> 1) ^ 0xedb8_8320 : crc >> 1 }
    }
    crc = ~crc
    let size = UInt32(truncatingIfNeeded: data.count)
    for value in [crc, size] { out += (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) } }
    return out
}
