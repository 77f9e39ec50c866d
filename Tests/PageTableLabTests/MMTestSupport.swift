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

/// Run a trace against the live kernel, once more if another thread of the
/// test process disturbed VmPTE during a kernel op (`TraceRun.interfered`):
/// interference does not repeat on cue, a disagreement does.
func runTolerantOfInterference(_ trace: Trace, targets: () throws -> [any TraceTarget],
                               profile: CompareProfile) rethrows -> TraceRun {
    let first = CompareRunner(targets: try targets(), profile: profile).run(trace)
    guard first.interfered else { return first }
    return CompareRunner(targets: try targets(), profile: profile).run(trace)
}

/// Hold a grace period open: another thread sits in a read section for the
/// length of `body`, so "not freed yet" can be asserted without a race.
func withGracePeriodHeld<R>(_ body: () throws -> R) rethrows -> R {
    let inside = DispatchSemaphore(value: 0)
    let leave = DispatchSemaphore(value: 0)
    let reader = RCUThread {
        RCU.read {
            inside.signal()
            leave.wait()
        }
    }
    inside.wait()
    defer {
        leave.signal()
        reader.join()
    }
    return try body()
}
