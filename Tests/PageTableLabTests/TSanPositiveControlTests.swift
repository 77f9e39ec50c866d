// Compiled only for scripts/sanitize thread, which builds with
// -DPTLAB_TSAN_POSITIVE_CONTROL, runs this test on its own and fails unless
// ThreadSanitizer reports its race: a TSan run that reports nothing proves
// something only if TSan can see the lab's threads at all.
#if PTLAB_TSAN_POSITIVE_CONTROL
import CSupport
import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

private struct ControlObject {
    var head = rcu_head()
    var value = 0
}

nonisolated(unsafe) private let control: UnsafeMutablePointer<ControlObject> = {
    let p = UnsafeMutablePointer<ControlObject>.allocate(capacity: 1)
    p.initialize(to: ControlObject())
    return p
}()

/// Reads what the queueing thread wrote, on liburcu's worker.
private func readInCallback(_ head: UnsafeMutablePointer<rcu_head>?) {
    let object = UnsafeMutableRawPointer(head!).assumingMemoryBound(to: ControlObject.self)
    object.pointee.value += 1
}

final class TSanPositiveControlTests: XCTestCase {
    /// A call_rcu hand-off without the lab's annotation (CSupport/rcu.c
    /// releases the head before queueing and the trampoline acquires it):
    /// liburcu is not instrumented, so TSan sees no order between the
    /// write here and the callback's read and must call it a race. The
    /// worker is started first, so that its creation orders nothing.
    func testUnannotatedCallRCUHandOffIsReported() throws {
        try RCU.withRegisteredThread {
            ptlab_rcu_prime()
            control.pointee.value = 42
            urcu_memb_call_rcu(&control.pointee.head, readInCallback)
            try RCU.barrier()
        }
        XCTAssertEqual(control.pointee.value, 43)
    }
}
#endif
