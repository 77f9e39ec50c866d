// swift-tools-version: 6.0
import PackageDescription

// A prototype's own package, depending on PageTableLab as a user's would:
// by path here (the lab's checkout, two levels up), or by URL and version
// (see the README). It imports only the two library products.
//
// `name:` matters for a path dependency: without it SwiftPM names the
// package after the directory it is in (the clone's name, "main" or
// "PageTableLab" or whatever it was cloned as), and `.product(package:)`
// would have to spell that.
let package = Package(
    name: "CustomFreePolicy",
    dependencies: [
        .package(name: "PageTableLab", path: "../.."),
    ],
    targets: [
        .executableTarget(
            name: "CustomFreePolicy",
            dependencies: [
                .product(name: "PageTableLab", package: "PageTableLab"),
                .product(name: "PageTableLabHarness", package: "PageTableLab"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
