import XCTest
@testable import PageTableLabHarness

/// A /proc file has no size to ask for and comes a page or so per read:
/// what reads one must read to its end, and refuse one it cannot hold
/// rather than hand back a prefix.
final class ProcReaderTests: XCTestCase {
    /// The region check reads /proc/self/maps whole: this thread's stack
    /// lies near its end, past the first page.
    func testProcessMapsSeesThisThreadsStack() throws {
        let maps = try ProcessMaps.current()
        XCTAssertGreaterThan(maps.mappings.reduce(0) { $0 + $1.text.utf8.count + 1 }, 4096,
                             "a test process maps more than a page of lines, or this test proves nothing")
        var local = 0
        let address = withUnsafeMutablePointer(to: &local) { UInt64(UInt(bitPattern: $0)) }
        XCTAssertTrue(maps.mappings.contains { $0.range.contains(address) }, "the stack at \(address.traceHex)")
    }

    func testAFileLargerThanTheBufferIsRefusedNotCut() {
        XCTAssertThrowsError(try ProcReader("/proc/self/maps", capacity: 64).read()) {
            XCTAssertEqual("\($0)", "/proc/self/maps is larger than the 64 bytes read for it")
        }
    }

    func testAFileOfExactlyTheBuffersSizeIsReadWhole() throws {
        let path = NSTemporaryDirectory() + "ptlab-procreader-\(getpid())"
        try String(repeating: "x", count: 100).write(toFile: path, atomically: false, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        XCTAssertEqual(try ProcReader(path, capacity: 100).read().count, 100)
    }
}
