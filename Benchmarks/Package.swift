// swift-tools-version: 6.1
// The hot-path micro-benchmarks (ordo-one/benchmark, formerly
// package-benchmark: the legacy identifier draws a rename warning), kept out of
// the root package so that its build and CI stay fast. Run from here:
//   swift package benchmark
import PackageDescription

let package = Package(
    name: "PageTableLabBenchmarks",
    platforms: [.macOS(.v13)],
    dependencies: [
        .package(name: "PageTableLab", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "PageTableLabBenchmarks",
            dependencies: [
                .product(name: "PageTableLab", package: "PageTableLab"),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/PageTableLabBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
