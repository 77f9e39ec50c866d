#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import XCTest

/// Waiting for what another thread will make true, without sleeping and
/// without hanging: a regression fails the test with its message after a
/// bound far above any correct run, instead of running into CI's timeout.
struct WaitTimedOut: Error, CustomStringConvertible {
    let message: String
    let seconds: Double
    var description: String { "timed out after \(seconds) s: \(message)" }
}

/// Yield until `condition` holds; throw (naming `message`) after `seconds`.
func waitUntil(_ message: @autoclosure () -> String, seconds: Double = 30,
               file: StaticString = #filePath, line: UInt = #line,
               _ condition: () -> Bool) throws {
    let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(seconds * 1e9)
    while !condition() {
        if DispatchTime.now().uptimeNanoseconds > deadline {
            let error = WaitTimedOut(message: message(), seconds: seconds)
            XCTFail("\(error)", file: file, line: line)
            throw error
        }
        sched_yield()
    }
}

/// For checks that something must NOT happen while the test holds it off:
/// whether `condition` became true within `milliseconds` of watching. A
/// correct build never makes it true, so the watch can only fail a broken one.
func holdsWithin(milliseconds: Int, _ condition: () -> Bool) -> Bool {
    let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(milliseconds) * 1_000_000
    while DispatchTime.now().uptimeNanoseconds < deadline {
        if condition() { return true }
        sched_yield()
    }
    return condition()
}
