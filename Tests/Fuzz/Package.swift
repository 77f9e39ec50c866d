// swift-tools-version: 5.4
// libFuzzer targets for PageTableLab's two parsers of untrusted input: the
// trace parser and the VT-d invalidation descriptor decoder. A package of
// its own because every target here is built with -sanitize=fuzzer, whose
// libFuzzer supplies main(); scripts/fuzz builds and runs them.
//
// Tools 5.4 on purpose: from 5.5 on, SwiftPM renames an executable's entry
// point to <target>_main and links main to it, which leaves nothing for
// libFuzzer's main (the link fails on Swift 6.3.1). The harnesses are still
// compiled in the Swift 6 language mode, as the lab is.
import PackageDescription

let swift6: [SwiftSetting] = [.unsafeFlags(["-swift-version", "6"])]

let package = Package(
    name: "PageTableLabFuzz",
    dependencies: [
        .package(name: "PageTableLab", path: "../.."),
    ],
    targets: [
        .executableTarget(
            name: "FuzzTraceParser",
            dependencies: [.product(name: "PageTableLabHarness", package: "PageTableLab")],
            swiftSettings: swift6
        ),
        .executableTarget(
            name: "FuzzDescriptorDecoder",
            dependencies: [.product(name: "PageTableLab", package: "PageTableLab")],
            swiftSettings: swift6
        ),
    ]
)
