import Foundation
import XCTest

/// "Writing your own freeing scheme" shows Examples/CustomFreePolicy's code,
/// which CI builds and runs: every Swift block of the article must appear
/// in the example's sources word for word, so that the two cannot drift.
final class FreeingSchemeArticleTests: XCTestCase {
    func testArticleCodeIsTheExamplesCode() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let article = try String(contentsOf: root.appendingPathComponent(
            "Sources/PageTableLabHarness/PageTableLabHarness.docc/WritingYourOwnFreeingScheme.md"), encoding: .utf8)
        let sources = root.appendingPathComponent("Examples/CustomFreePolicy/Sources/CustomFreePolicy")
        let example = try FileManager.default.contentsOfDirectory(atPath: sources.path).sorted()
            .map { try String(contentsOf: sources.appendingPathComponent($0), encoding: .utf8) }
            .joined(separator: "\n")
        let blocks = article.components(separatedBy: "```swift\n").dropFirst().map { $0.components(separatedBy: "\n```")[0] }
        XCTAssertGreaterThanOrEqual(blocks.count, 4)
        for block in blocks {
            XCTAssertTrue(example.contains(block), "the article shows code the example does not have:\n\(block.prefix(200))")
        }
    }
}
