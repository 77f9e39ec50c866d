import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// Which release the model follows: each behaviour it knows switches at the
/// release that brought it, and `ptlab compare` follows the kernel it runs
/// on. Each switch is held here to the trace that shows it, at the last
/// release without it and the first with it.
final class KernelVersionTests: XCTestCase {
    func testAReleaseIsItsMajorAndMinor() {
        XCTAssertEqual(KernelVersion(release: "6.18.44-fc-v1252"), KernelVersion(6, 18))
        XCTAssertEqual(KernelVersion(release: "7.2.12+deb14-amd64"), KernelVersion(7, 2))
        XCTAssertEqual(KernelVersion(release: "6.1.0-57-amd64"), KernelVersion(6, 1))
        XCTAssertEqual(KernelVersion(release: "6.12"), KernelVersion(6, 12))
        for bad in ["", "6", "6-1", "v6.1", "six.one", ".6.1"] {
            XCTAssertNil(KernelVersion(release: bad), bad)
        }
        XCTAssertLessThan(KernelVersion(6, 9), KernelVersion(6, 10))
        XCTAssertLessThan(KernelVersion(6, 19), KernelVersion(7, 0))
        XCTAssertEqual(KernelVersion(6, 7).description, "6.7")
    }

    /// The profiles the lab names are the releases they stand for.
    func testTheNamedProfilesAreTheirReleases() {
        XCTAssertEqual(CompareProfile.prePTReclaim.modelKernel(asked: nil, comparingLive: false), KernelVersion(6, 1))
        XCTAssertEqual(CompareProfile.ptReclaim.modelKernel(asked: nil, comparingLive: false), KernelVersion(6, 18))
        XCTAssertEqual(CompareProfile.ptReclaim.modelKernel(asked: KernelVersion(6, 16), comparingLive: true), KernelVersion(6, 16))
        let pre = MMProfile.pre6_14
        XCTAssertFalse(pre.ptReclaim || pre.mremapRealign || pre.guardRegions || pre.mremapMovesVMAs || pre.perVMALock)
        XCTAssertEqual(pre.dtor, .atUnlink)
        XCTAssertTrue(pre.collapseFree.takesMMapWriteLock, "6.1's retract frees under each mm's mmap write lock")
        let now = MMProfile.forKernel(KernelVersion(6, 18), ptReclaim: true)
        XCTAssertTrue(now.ptReclaim && now.mremapRealign && now.guardRegions && now.guardFileMappings && now.mremapMovesVMAs
                      && now.madviseVMALock && now.perVMALock)
        XCTAssertEqual(now.dtor, .atFree)
        XCTAssertFalse(now.collapseFree.takesMMapWriteLock)
    }

    /// 6.6: MADV_COLLAPSE of shmem retracts every mapping's table
    /// (pte_free_defer); before, only its own (measured on 6.1 and 6.12).
    func testTheRetractOfEveryMappingCameIn66() throws {
        XCTAssertEqual(try kilobytes("mremap-dontunmap-collapse", kernel: KernelVersion(6, 5), line: 24), 20)
        XCTAssertEqual(try kilobytes("mremap-dontunmap-collapse", kernel: KernelVersion(6, 6), line: 24), 16)
    }

    /// 6.7: mremap realigns an equally misaligned move down to the PMD
    /// boundary (measured on 6.1, 6.12 and 6.18).
    func testTheRealignmentCameIn67() throws {
        XCTAssertEqual(try kilobytes("mremap-realign-dontunmap", kernel: KernelVersion(6, 6), line: 17), 28)
        XCTAssertEqual(try kilobytes("mremap-realign-dontunmap", kernel: KernelVersion(6, 7), line: 17), 24)
    }

    /// 6.17: one mremap moves several VMAs; before, the model refuses the
    /// move (EFAULT), and a comparison for such a kernel skips the trace.
    func testMovingSeveralVMAsCameIn617() throws {
        XCTAssertEqual(try kilobytes("mremap-several-vmas", kernel: KernelVersion(6, 17), line: 24, profile: .ptReclaim), 32)
        let before = try run("mremap-several-vmas", kernel: KernelVersion(6, 16), profile: .ptReclaim, skipping: false)
        XCTAssertTrue(before.error?.message.contains("EFAULT") == true, "\(String(describing: before.error))")
        let skipped = try run("mremap-several-vmas", kernel: KernelVersion(6, 16), profile: .ptReclaim, skipping: true)
        XCTAssertEqual(skipped.skipped, "the trace needs 6.17 (an mremap across mappings, line 23), and this comparison is for 6.16")
    }

    /// The model's VmPTE growth at `line` of a shipped trace, the model
    /// following `kernel`.
    private func kilobytes(_ name: String, kernel: KernelVersion, line: Int, profile: CompareProfile = .prePTReclaim) throws -> Int? {
        let run = try run(name, kernel: kernel, profile: profile, skipping: true)
        XCTAssertNil(run.error, "\(name) on \(kernel): \(String(describing: run.error))")
        return run.checkpoints.first { $0.line == line }?.kilobytes.first
    }

    private func run(_ name: String, kernel: KernelVersion, profile: CompareProfile, skipping: Bool) throws -> TraceRun {
        let url = try XCTUnwrap(Bundle.module.url(forResource: name, withExtension: "trace", subdirectory: "Traces"))
        let trace = try TraceParser.parse(contentsOf: url.path)
        let model = try ModelTarget(profile: profile, kernel: kernel, thp: ModelCompareTests.tracesTHP)
        return CompareRunner(targets: [model], profile: profile, kernel: skipping ? kernel : nil, expectationsApply: false).run(trace)
    }
}
