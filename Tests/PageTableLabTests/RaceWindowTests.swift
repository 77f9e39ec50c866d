import Synchronization
import XCTest
@testable import PageTableLab

/// The windows where an updater acts on what it saw before taking (or
/// retaking) the lock that guards it. Another updater's change is made in
/// the window, on another thread, every time (MM.raceWindowHook), and the
/// updater must find it as the kernel does: by looking again under the lock.
final class RaceWindowTests: XCTestCase {
    /// zap_huge_pmd looks at the PMD again under its lock
    /// (__pmd_trans_huge_lock): a huge PMD that a partial MADV_DONTNEED on
    /// another thread split after zap_pmd_range saw it is zapped as the PTE
    /// table it now is (and PT_RECLAIM frees that table), not unlinked with
    /// its 511 pages still mapped and leaked.
    func testAZapGoesOnToThePTETableOfAHugePMDSplitMeanwhile() throws {
        try withLab { allocator in
            var profile = MMProfile.v6_14
            profile.thp = THPSettings(enabled: .always, shmemEnabled: .never)
            let mm = try MM(allocator: allocator, profile: profile)
            try mm.mmap(address: tib, length: 2 * mib)
            try mm.touch(address: tib, length: 4096)
            XCTAssertTrue(mm.isHugePMD(tib))
            XCTAssertEqual(mm.vmPTEKilobytes, 12, "PUD + PMD + the deposit")
            let split = RacingChange(mm, in: .zapHugePMDUnlocked) { address in
                try mm.madviseDontneed(address: address, length: 4096)
            }
            try mm.madviseDontneed(address: tib, length: 2 * mib)
            mm.raceWindowHook = nil
            XCTAssertEqual(split.passes, 1)
            XCTAssertEqual(mm.thpEvents.splitPMD.load(ordering: .relaxed), 1, "the racing DONTNEED split the huge PMD")
            XCTAssertFalse(mm.isHugePMD(tib))
            XCTAssertNil(mm.findPTETable(tib))
            XCTAssertEqual(mm.vmPTEKilobytes, 8, "the split's table was zapped and reclaimed, not unlinked and lost")
            XCTAssertEqual(mm.exit(), 0)
        }
    }
}

/// A change another thread makes the first time an updater of `mm` passes
/// `window`; the updater waits there until it is made, as one preempted in
/// the window would.
final class RacingChange: Sendable {
    private let passed = Atomic<Int>(0)
    /// How many times an updater passed the window.
    var passes: Int { passed.load(ordering: .relaxed) }

    init(_ mm: MM, in window: RaceWindow, _ change: @escaping @Sendable (UInt64) throws -> Void) {
        mm.raceWindowHook = { [self] at, address in
            guard at == window, passed.add(1, ordering: .relaxed).newValue == 1 else { return }
            let other = RCUThread {
                do {
                    try change(address)
                } catch {
                    XCTFail("the racing change failed: \(error)")
                }
            }
            other.join()
        }
    }
}
