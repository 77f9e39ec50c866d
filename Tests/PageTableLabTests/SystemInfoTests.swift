import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// `ptlab info`'s kernel-config table: every option answered, in the words
/// and JSON keys reports already carry.
final class SystemInfoTests: XCTestCase {
    func testEachSettingHasItsWord() {
        let config = KConfig(parsing: "CONFIG_PT_RECLAIM=y\nCONFIG_PGTABLE_LEVELS=5\n# CONFIG_IOMMU_SVA is not set\n",
                             source: "/boot/config-6.1.0")
        let report = SystemInfo.kernelConfig(options: SystemInfo.pageTableOptions, from: config)
        XCTAssertEqual(report.source, "/boot/config-6.1.0")
        XCTAssertEqual(report.options, [
            "CONFIG_PT_RECLAIM": "y",
            "CONFIG_ASYNC_KERNEL_PGTABLE_FREE": "absent",
            "CONFIG_MMU_GATHER_RCU_TABLE_FREE": "absent",
            "CONFIG_SPLIT_PTE_PTLOCKS": "absent",
            "CONFIG_SPLIT_PMD_PTLOCKS": "absent",
            "CONFIG_PGTABLE_LEVELS": "5",
            "CONFIG_IOMMU_SVA": "not set",
        ])
    }

    func testAnUnreadableConfigStillAnswersEveryOption() {
        let report = SystemInfo.kernelConfig(options: ["CONFIG_PT_RECLAIM", "CONFIG_IOMMU_SVA"], from: nil)
        XCTAssertEqual(report.source, "unreadable")
        XCTAssertEqual(report.options, ["CONFIG_PT_RECLAIM": "unreadable", "CONFIG_IOMMU_SVA": "unreadable"])
    }

    func testKernelConfigJSONKeys() throws {
        let report = SystemInfo.KernelConfig(source: "/proc/config.gz", options: ["CONFIG_PT_RECLAIM": "y"])
        let object = try JSONSerialization.jsonObject(with: JSONEncoder().encode(report)) as? [String: Any]
        XCTAssertEqual(object?["source"] as? String, "/proc/config.gz")
        XCTAssertEqual(object?["options"] as? [String: String], ["CONFIG_PT_RECLAIM": "y"])
        XCTAssertEqual(Set(object?.keys.map { $0 } ?? []), ["source", "options"])
    }
}
