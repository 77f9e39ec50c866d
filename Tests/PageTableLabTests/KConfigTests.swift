import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// The .config parser: every form a kernel writes, and the forms it does not
/// that must not be mistaken for options.
final class KConfigTests: XCTestCase {
    private let sample = """
        #
        # Automatically generated file; DO NOT EDIT.
        # Linux/x86 6.18.44 Kernel Configuration
        #
        CONFIG_PT_RECLAIM=y
        CONFIG_KVM=m
        CONFIG_PGTABLE_LEVELS=5
        CONFIG_CC_IMPLICIT_FALLTHROUGH="-Wimplicit-fallthrough=5"
        CONFIG_LOCALVERSION=""
        # CONFIG_IOMMU_SVA is not set

        # end of General setup
        """

    func testEachFormAKernelWrites() {
        let config = KConfig(parsing: sample, source: "sample")
        XCTAssertEqual(config.source, "sample")
        XCTAssertEqual(config["CONFIG_PT_RECLAIM"], .value("y"))
        XCTAssertEqual(config["CONFIG_KVM"], .value("m"))
        XCTAssertEqual(config["CONFIG_PGTABLE_LEVELS"], .value("5"))
        XCTAssertEqual(config["CONFIG_CC_IMPLICIT_FALLTHROUGH"], .value("\"-Wimplicit-fallthrough=5\""),
                       "a value splits at its first '=' only")
        XCTAssertEqual(config["CONFIG_LOCALVERSION"], .value("\"\""))
        XCTAssertEqual(config["CONFIG_IOMMU_SVA"], .notSet)
        XCTAssertNil(config["CONFIG_ASYNC_KERNEL_PGTABLE_FREE"])
    }

    func testCRLFLinesParseLikeLF() {
        let crlf = KConfig(parsing: sample.replacingOccurrences(of: "\n", with: "\r\n"), source: "crlf")
        XCTAssertEqual(crlf["CONFIG_PT_RECLAIM"], .value("y"), "no \\r left in the value, and lines still split")
        XCTAssertEqual(crlf["CONFIG_KVM"], .value("m"))
        XCTAssertEqual(crlf["CONFIG_IOMMU_SVA"], .notSet)
        XCTAssertEqual(crlf["CONFIG_LOCALVERSION"], .value("\"\""))
    }

    func testALaterAssignmentWins() {
        let config = KConfig(parsing: "CONFIG_A=y\n# CONFIG_A is not set\nCONFIG_B=y\nCONFIG_B=m", source: "")
        XCTAssertEqual(config["CONFIG_A"], .notSet)
        XCTAssertEqual(config["CONFIG_B"], .value("m"))
    }

    func testCommentsAndStrayLinesAreNotOptions() {
        let config = KConfig(parsing: """
            # CONFIG_A=y
            #CONFIG_B is not set
            CONFIG_C
             CONFIG_D=y
            FOO=y
            """, source: "")
        for name in ["CONFIG_A", "CONFIG_B", "CONFIG_C", "CONFIG_D", " CONFIG_D", "FOO", "#CONFIG_B"] {
            XCTAssertNil(config[name], name)
        }
    }

    func testEmptyTextHasNoOptions() {
        XCTAssertNil(KConfig(parsing: "", source: "")["CONFIG_PT_RECLAIM"])
    }
}
