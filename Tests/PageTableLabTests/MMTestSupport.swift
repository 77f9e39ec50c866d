import XCTest
@testable import PageTableLab

/// A loaded allocator and a registered thread for the length of `body`,
/// with every deferred free drained and every page checked back at the end.
func withLab<R>(profile: MMProfile = .v6_14, budgetPages: Int = 16_384,
                _ body: (PageAllocator) throws -> R) throws -> R {
    var params = PageAllocator.Parameters()
    params.nodeBudgetPages = budgetPages
    let allocator = try PageAllocator(parameters: params)
    defer { allocator.unload() }
    return try RCU.withRegisteredThread {
        let result = try body(allocator)
        try RCU.barrier()
        XCTAssertEqual(allocator.totalAllocatedPages, 0, "pages not returned to the allocator")
        return result
    }
}

let tib: UInt64 = 1 << 40
let gib: UInt64 = 1 << 30
let mib: UInt64 = 1 << 20
