// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "PageTableLab",
    products: [
        .library(name: "PageTableLab", targets: ["PageTableLab"]),
        .library(name: "PageTableLabHarness", targets: ["PageTableLabHarness"]),
        .executable(name: "ptlab", targets: ["ptlab"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.1.0"),
        // `swift package generate-documentation` (the DocC catalogs in
        // Sources/*/*.docc); a plugin only, linked into nothing.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.4.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CURCU",
            path: "include/CURCU",
            pkgConfig: "liburcu-memb",
            providers: [.apt(["liburcu-dev"])]
        ),
        .systemLibrary(
            name: "CNUMA",
            path: "include/CNUMA",
            pkgConfig: "numa",
            providers: [.apt(["libnuma-dev"])]
        ),
        // No optimisation flags (SwiftPM refuses unsafe flags in a package
        // required by version): a release build compiles the C at -O2
        // already, and the hot paths are static inlines in the headers that
        // Swift compiles into its callers (BENCHMARKS.md, "CSupport without
        // -O2").
        // The model's C, internal to the package: every library it calls,
        // liburcu-memb (rcu.c and the read-side inlines in CSupport/rcu.h)
        // and libnuma (system.c), comes from its dependencies.
        .target(
            name: "CSupport",
            dependencies: ["CURCU", "CNUMA"],
            path: "CSupport",
            exclude: ["Harness"]
        ),
        // The harness's C: the raw liburcu baselines (on CSupport's thread
        // registration and TSan hooks, so that they nest with the Swift
        // side's), the kernel config through zlib, compare's system calls.
        .target(
            name: "CHarness",
            dependencies: ["CSupport", "CURCU"],
            path: "CSupport/Harness",
            linkerSettings: [.linkedLibrary("z")]
        ),
        .target(
            name: "PageTableLab",
            dependencies: [
                "CURCU", "CNUMA", "CSupport",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        .target(
            name: "PageTableLabHarness",
            dependencies: [
                "PageTableLab", "CHarness", "CNUMA",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        .executableTarget(
            name: "ptlab",
            dependencies: [
                "PageTableLab", "PageTableLabHarness",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(
            name: "PageTableLabTests",
            dependencies: ["PageTableLab", "PageTableLabHarness", "CSupport"],
            resources: [.copy("Traces")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
