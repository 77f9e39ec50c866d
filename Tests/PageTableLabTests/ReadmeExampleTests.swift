import Foundation
import XCTest
import PageTableLab

/// The README's library example, compiled and run here, and checked to be
/// the README's text verbatim, so that the README cannot drift from a
/// program that works. Plain `import PageTableLab`: only public API.
final class ReadmeExampleTests: XCTestCase {
    func testReadmeExampleRuns() throws {
        // One allocator per process: it is the memmap, as in the kernel.
        let allocator = try PageAllocator()
        defer { allocator.unload() }

        // Threads that use RCU are registered "CPUs"; the scope undoes it.
        try RCU.withRegisteredThread {
            // A page on this CPU's node; move_pages(2) confirms where it landed.
            let table = try allocator.alloc(node: .local, zero: true)
            precondition(allocator.verifyPlacement([table]))

            // A lockless walker reads it inside a read section...
            let seen = RCU.read { table.generation }

            // ...so the updater waits out every such reader before freeing it.
            try RCU.synchronize()
            try allocator.free(table)    // generation bumped (and 0x6b if page_poison)
            precondition(table.generation == seen &+ 1)
        }
    }

    func testReadmeShowsThisExample() throws {
        let here = URL(fileURLWithPath: #filePath)
        let readmeURL = here.deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("README.md")
        let readme = try String(contentsOf: readmeURL, encoding: .utf8)
        let test = try String(contentsOf: here, encoding: .utf8)
        guard let start = readme.range(of: "```swift\n"),
              let end = readme.range(of: "\n```", range: start.upperBound..<readme.endIndex) else {
            return XCTFail("README.md has no ```swift block")
        }
        func lines(_ text: Substring) -> [String] {
            text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        }
        let example = lines(readme[start.upperBound..<end.lowerBound]).filter { !$0.hasPrefix("import ") }
        let body = lines(test[...])
        let found = body.indices.contains { i in body[i...].starts(with: example) }
        XCTAssertTrue(found, "README.md's swift example differs from testReadmeExampleRuns; keep them the same")
    }
}
