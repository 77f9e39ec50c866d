import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

final class TraceParserTests: XCTestCase {
    private let base: UInt64 = 0x100_0000_0000

    private func parse(_ text: String) throws(TraceError) -> Trace {
        try TraceParser.parse(text, file: "t.trace")
    }

    /// Parses `text` expecting an error on `line` whose message contains `fragment`.
    private func assertError(_ text: String, line: Int, _ fragment: String, file: StaticString = #filePath, at: UInt = #line) {
        do {
            _ = try parse(text)
            XCTFail("parsed without error", file: file, line: at)
        } catch {
            XCTAssertEqual(error.file, "t.trace", file: file, line: at)
            XCTAssertEqual(error.line, line, "\(error)", file: file, line: at)
            XCTAssertTrue(error.message.contains(fragment), "\(error.message) lacks '\(fragment)'", file: file, line: at)
        }
    }

    func testParsesEveryOpWithItsLineNumber() throws {
        let trace = try parse("""
            # header comment

            mmap 0x10000000000 1G      # trailing comment
            \ttouch 0x10000000000\t2M 4K
            dontneed 0x10000000000 0x200000
            expect
            munmap 1024G 1073741824
            """)
        XCTAssertEqual(trace.file, "t.trace")
        XCTAssertEqual(trace.steps, [
            TraceStep(line: 3, op: .mmap(address: base, length: 1 << 30, shared: false)),
            TraceStep(line: 4, op: .touch(address: base, length: 2 << 20, stride: 4096)),
            TraceStep(line: 5, op: .dontneed(address: base, length: 2 << 20)),
            TraceStep(line: 6, op: .expect(TraceExpectation())),
            TraceStep(line: 7, op: .munmap(address: base, length: 1 << 30)),
        ])
        XCTAssertEqual(trace.checkpoints.map(\.line), [6])
    }

    /// Found by fuzzing (Tests/Fuzz): Swift reads "\r\n" as one Character, so
    /// a trace saved with CRLF line ends was one long line and its first op
    /// "took 2 arguments, got 4". CRLF must read exactly as LF does.
    func testCRLFLineEndsReadAsLF() throws {
        let lf = "mmap 0x10000000000 2M\n\ntouch 0x10000000000 2M 4K # c\nexpect 12\nmunmap 0x10000000000 2M\n"
        let crlf = lf.replacingOccurrences(of: "\n", with: "\r\n")
        XCTAssertEqual(try parse(crlf).steps, try parse(lf).steps)
        XCTAssertEqual(try parse(crlf).steps.map(\.line), [1, 3, 4, 5])
        assertError("mmap 0x10000000000 2M\r\nmunmap 0x10000000000\r\n", line: 2, "munmap takes 2 arguments")
    }

    func testNumbersTakeDecimalHexAndBinarySuffixes() {
        XCTAssertEqual(TraceParser.number("4096"), 4096)
        XCTAssertEqual(TraceParser.number("0x1000"), 4096)
        XCTAssertEqual(TraceParser.number("0X1f"), 31)
        XCTAssertEqual(TraceParser.number("4K"), 4096)
        XCTAssertEqual(TraceParser.number("2M"), 2 << 20)
        XCTAssertEqual(TraceParser.number("0x10G"), 16 << 30)
        XCTAssertEqual(TraceParser.number("1024G"), base)
        for bad in ["", "K", "0x", "0xG", "-4096", "+4096", "4k", "4KB", "12Q", "0x1g", "1_000", "٣", "99999999999999999999",
                    "0xFFFFFFFFFFFFFFFFK", "17179869184G"] {
            XCTAssertNil(TraceParser.number(Substring(bad)), bad)
        }
    }

    func testExpectTakesOptionalValues() throws {
        let trace = try parse("expect\nexpect 2056\nexpect 8 pre-6.14=2056\nexpect 6.14+=4\n")
        let values = trace.steps.map { step -> TraceExpectation in
            guard case .expect(let e) = step.op else { fatalError() }
            return e
        }
        XCTAssertEqual(values[0].kilobytes(for: .ptReclaim), nil)
        XCTAssertEqual(values[1].kilobytes(for: .ptReclaim), 2056)
        XCTAssertEqual(values[1].kilobytes(for: .prePTReclaim), 2056)
        XCTAssertEqual(values[2].kilobytes(for: .ptReclaim), 8)
        XCTAssertEqual(values[2].kilobytes(for: .prePTReclaim), 2056)
        XCTAssertEqual(values[3].kilobytes(for: .ptReclaim), 4)
        XCTAssertEqual(values[3].kilobytes(for: .prePTReclaim), nil)
    }

    func testSyntaxErrorsNameFileLineAndProblem() {
        assertError("mmap 0x10000000000 4K\nmapp 0x10000000000 4K", line: 2, "unknown op 'mapp'")
        assertError("\n\nmmap 0x10000000000 4Q", line: 3, "bad number '4Q' for LEN")
        assertError("mmap 0x1000000000g 4K", line: 1, "bad number '0x1000000000g' for ADDR")
        assertError("mmap 0x10000000000", line: 1, "mmap takes 2 arguments (ADDR LEN [shared]), got 1")
        assertError("mmap 0x10000000000 4K 4K", line: 1, "mmap's third word may only be 'shared', got '4K'")
        assertError("mmap 0x10000000000 4K shared 1", line: 1, "mmap takes 2 arguments (ADDR LEN [shared]), got 4")
        assertError("mmap 0x10000000000 4K\ntouch 0x10000000000 4K", line: 2, "touch takes 3 arguments (ADDR LEN STRIDE), got 2")
        assertError("munmap", line: 1, "munmap takes 2 arguments")
        assertError("dontneed 1", line: 1, "dontneed takes 2 arguments")
        assertError("expect -4", line: 1, "bad kB value '-4'")
        assertError("expect 0x10", line: 1, "bad kB value '0x10'")
        assertError("expect 4 5", line: 1, "a second")
        assertError("expect 6.13=4", line: 1, "unknown profile '6.13'")
        assertError("expect pre-6.14=4 pre-6.14=8", line: 1, "twice")
        assertError("expect pre-6.14=", line: 1, "bad kB value ''")
    }

    /// A word quoted in an error has its control and format characters
    /// escaped and is cut at 40 scalars, so that binary junk cannot reach
    /// the terminal raw and a megabyte of it is not echoed back.
    func testErrorsQuoteWordsEscapedAndCut() {
        assertError("\u{1B}[31mmap 0x10000000000 4K", line: 1, "unknown op '\\u{1B}[31mmap'")
        assertError("mmap 0x10000000000 4\u{0}K", line: 1, "bad number '4\\0K' for LEN")
        assertError("mmap 0x10000000000 4\u{202E}K", line: 1, "bad number '4\\u{202E}K' for LEN")
        let marks = "x" + String(repeating: "\u{301}", count: 1_000)
        assertError("mmap 0x10000000000 \(marks)", line: 1, "… (2001 bytes) for LEN")
        let long = String(repeating: "x", count: 100_000)
        assertError("mmap 0x10000000000 \(long)", line: 1, "bad number '\(String(repeating: "x", count: 40))'… (100000 bytes) for LEN")
    }

    func testRangeErrors() {
        assertError("mmap 0x10000000800 4K", line: 1, "ADDR 0x10000000800 is not 4 KiB aligned")
        assertError("mmap 0x10000000000 6000", line: 1, "LEN 0x1770 is not a multiple of 4 KiB")
        assertError("mmap 0x10000000000 0", line: 1, "LEN is zero")
        assertError("munmap 0x10000000000 0", line: 1, "LEN is zero")
        assertError("mmap 0xfffff000 4K", line: 1, "below 4 GiB")
        assertError("mmap 0x7ffffffff000 4K", line: 1, "past the end of 47-bit user space")
        assertError("munmap 0x7fffffff0000 1M", line: 1, "past the end of 47-bit user space")
        assertError("munmap 0xfffffffffffff000 8K", line: 1, "past the end")
        XCTAssertNoThrow(try parse("mmap 0x7fffffffe000 4K"))
        XCTAssertNoThrow(try parse("mmap 0x100000000 4K"))
    }

    func testOpsOutsideTheTracesMappingsAreRefused() {
        assertError("touch 0x10000000000 4K 1", line: 1, "reaches 0x10000000000, which the trace has not mapped")
        assertError("mmap 0x10000000000 8K\ntouch 0x10000000000 12K 4K", line: 2, "reaches 0x10000002000")
        assertError("mmap 0x10000000000 8K\nmunmap 0x10000001000 4K\ndontneed 0x10000000000 8K", line: 3, "reaches 0x10000001000")
        assertError("mmap 0x10000000000 1G\nmunmap 0x10000000000 1G\ntouch 0x10000000000 4K 4K", line: 3, "not mapped")
        assertError("mmap 0x10000000000 8K\ntouch 0x10000000000 8K 0", line: 2, "STRIDE is zero")
        // Two adjacent mappings together cover a range.
        XCTAssertNoThrow(try parse("mmap 0x10000000000 4K\nmmap 0x10000001000 4K\ntouch 0x10000000000 8K 1\ndontneed 0x10000000000 8K"))
        // munmap may cover memory the trace never mapped, as the syscall may.
        XCTAssertNoThrow(try parse("mmap 0x10000000000 4K\nmunmap 0x10000000000 1G"))
    }

    func testTheNewOpsParse() throws {
        let base: UInt64 = 0x100_0000_0000
        let trace = try parse("""
            mmap 0x10000000000 4M shared
            hugepage 0x10000000000 4M
            collapse 0x10000000000 2M
            mprotect 0x10000000000 1M r
            mremap 0x10000200000 2M 0x10040000000
            """)
        XCTAssertEqual(trace.steps.map(\.op), [
            .mmap(address: base, length: 4 << 20, shared: true),
            .hugepage(address: base, length: 4 << 20),
            .collapse(address: base, length: 2 << 20),
            .mprotect(address: base, length: 1 << 20, protection: .r),
            .mremap(old: base + (2 << 20), length: 2 << 20, new: base + (1 << 30)),
        ])
    }

    func testTheNewOpsBadInputIsAnErrorBeforeAnythingRuns() {
        let mapped = "mmap 0x10000000000 4M\n"
        assertError(mapped + "mprotect 0x10000000000 4K rwx", line: 2, "bad PROT 'rwx' for mprotect: expected none, r or rw")
        assertError(mapped + "mprotect 0x10000000000 4K", line: 2, "mprotect takes 3 arguments (ADDR LEN PROT), got 2")
        assertError(mapped + "mprotect 0x10000000000 1M r\ntouch 0x10000000000 8K 4K", line: 3,
                    "writes to 0x10000000000-0x10000002000, which is mapped PROT r: the write would fault (SIGSEGV)")
        assertError(mapped + "mprotect 0x10000100000 1M none\ntouch 0x10000000000 4M 1M", line: 3, "mapped PROT none")
        XCTAssertNoThrow(try parse(mapped + "mprotect 0x10000100000 1M none\nmprotect 0x10000100000 1M rw\ntouch 0x10000000000 4M 1M"))
        assertError(mapped + "hugepage 0x10000000000 8M", line: 2, "reaches 0x10000400000, which the trace has not mapped")
        assertError(mapped + "collapse 0x10000400000 2M", line: 2, "not mapped")
        assertError(mapped + "mremap 0x10000000000 2M 0x10000100000", line: 2, "NEW 0x10000100000-0x10000300000 overlaps its source")
        assertError(mapped + "mmap 0x10040000000 4K\nmremap 0x10000000000 2M 0x1003fe01000", line: 3,
                    "overlaps memory the trace mapped at line 2")
        assertError(mapped + "mremap 0x10000000000 8M 0x10040000000", line: 2, "reaches 0x10000400000")
        assertError(mapped + "mremap 0x10000000000 2M 0x10040000800", line: 2, "NEW 0x10040000800 is not 4 KiB aligned")
        assertError(mapped + "mprotect 0x10000000000 1M r\nmremap 0x10000000000 2M 0x10040000000", line: 3,
                    "spans mappings of different kinds, protections or MADV_HUGEPAGE")
        assertError("mmap 0x10000000000 4M shared\nmmap 0x10000400000 4M\nmremap 0x10000000000 8M 0x10040000000", line: 3,
                    "spans mappings of different kinds, protections or MADV_HUGEPAGE, which are separate VMAs: EFAULT before 6.17")
        // 6.17+ moves each VMA, gaps kept: a 6.14+ trace may, as long as
        // OLD itself is mapped.
        let several = "profiles 6.14+\nmmap 0x10000000000 1M shared\nmmap 0x10000100000 1M\nmmap 0x10000300000 1M\n"
        XCTAssertNoThrow(try parse(several + "mremap 0x10000000000 8M 0x10040000000\ntouch 0x10040000000 2M 4K\ntouch 0x10040300000 1M 4K"))
        assertError(several + "mremap 0x10000000000 8M 0x10040000000\ntouch 0x10040200000 4K 4K", line: 6, "not mapped")
        assertError(several + "mremap 0x10000200000 2M 0x10040000000", line: 5, "mremap's OLD 0x10000200000 is not mapped (EFAULT)")
        // What moved is where the trace may touch next, not where it was.
        assertError(mapped + "mremap 0x10000000000 2M 0x10040000000\ntouch 0x10000000000 4K 4K", line: 3, "not mapped")
        XCTAssertNoThrow(try parse(mapped + "mremap 0x10000000000 2M 0x10040000000\ntouch 0x10040000000 2M 4K"))
    }

    func testOverlappingMmapNamesTheEarlierLine() {
        assertError("mmap 0x10000000000 1M\n\nmmap 0x100000ff000 8K", line: 3,
                    "overlaps memory the trace mapped at line 1 (0x10000000000-0x10000100000)")
        XCTAssertNoThrow(try parse("mmap 0x10000000000 1M\nmunmap 0x10000000000 4K\nmmap 0x10000000000 4K"))
    }

    func testErrorPrintsAsFileColonLine() {
        XCTAssertEqual(TraceError(file: "a/b.trace", line: 7, message: "bad").description, "a/b.trace:7: bad")
        XCTAssertEqual(TraceError(file: "a/b.trace", line: 0, message: "cannot read").description, "a/b.trace: cannot read")
    }

    func testUnreadableFile() {
        XCTAssertThrowsError(try TraceParser.parse(contentsOf: "/nonexistent/x.trace")) { error in
            let e = error as! TraceError
            XCTAssertEqual(e.description, "/nonexistent/x.trace: cannot read the trace: No such file or directory")
        }
    }

    func testMappingsSplitOnUnmapAndFindHoles() {
        var m = TraceMappings()
        m.map(0x1000..<0x5000, line: 1)
        m.map(0x8000..<0x9000, line: 2)
        m.unmap(0x2000..<0x3000)
        XCTAssertEqual(m.pieces.map(\.range), [0x1000..<0x2000, 0x3000..<0x5000, 0x8000..<0x9000])
        XCTAssertEqual(m.pieces.map(\.line), [1, 1, 2])
        XCTAssertNil(m.firstHole(in: 0x3000..<0x5000))
        XCTAssertEqual(m.firstHole(in: 0x1000..<0x4000), 0x2000)
        XCTAssertEqual(m.firstHole(in: 0x4000..<0x9000), 0x5000)
        XCTAssertEqual(m.firstHole(in: 0xa000..<0xb000), 0xa000)
        XCTAssertEqual(m.overlap(with: 0x4fff..<0x8001)?.line, 1)
        XCTAssertNil(m.overlap(with: 0x5000..<0x8000))
        m.map(0x5000..<0x8000, line: 3)
        XCTAssertEqual(m.pieces.map(\.line), [1, 1, 3, 2])
        XCTAssertNil(m.firstHole(in: 0x3000..<0x9000))
    }

    func testRegionsOfARange() {
        let span = TraceAddressSpace.regionSpan
        XCTAssertEqual(span, 512 << 30)
        XCTAssertEqual(TraceAddressSpace.regions(of: 0x17fffe00000..<0x18000200000), [2 * span..<3 * span, 3 * span..<4 * span])
        XCTAssertEqual(TraceAddressSpace.regions(of: 2 * span..<3 * span), [2 * span..<3 * span])
    }

    /// The shipped traces are the comparison's test set: there must be at
    /// least a dozen, each valid, each with values on its `expect` lines.
    func testShippedTracesParseAndStateTheirValues() throws {
        let urls = try Self.shippedTraces()
        XCTAssertGreaterThanOrEqual(urls.count, 12)
        for url in urls {
            let trace = try TraceParser.parse(contentsOf: url.path)
            XCTAssertFalse(trace.checkpoints.isEmpty, url.lastPathComponent)
            for step in trace.checkpoints {
                guard case .expect(let e) = step.op else { continue }
                for profile in CompareProfile.allCases where trace.skipReason(under: profile, kernel: nil) == nil {
                    XCTAssertNotNil(e.kilobytes(for: profile), "\(url.lastPathComponent):\(step.line)")
                }
            }
        }
    }

    func testMremapTakesDontunmap() throws {
        let trace = try parse("mmap 0x10000000000 2M\nmremap 0x10000000000 2M 0x10040000000 dontunmap\ntouch 0x10000000000 4K 4K\ntouch 0x10040000000 4K 4K")
        XCTAssertEqual(trace.steps[1].op, .mremap(old: base, length: 2 << 20, new: base + (1 << 30), dontUnmap: true))
        assertError("mmap 0x10000000000 2M\nmremap 0x10000000000 2M 0x10040000000 keep", line: 2, "may only be 'dontunmap'")
        // The copy beside its source is a VMA of its own: a move across both
        // is refused (EFAULT before 6.17, which the model follows).
        assertError("mmap 0x10000000000 2M\nmremap 0x10000000000 2M 0x10000200000 dontunmap\nmremap 0x10000000000 4M 0x10040000000",
                    line: 3, "spans mappings made at lines 1 and 2")
        // Without it the old range is gone.
        assertError("mmap 0x10000000000 2M\nmremap 0x10000000000 2M 0x10040000000\ntouch 0x10000000000 4K 4K", line: 3, "has not mapped")
    }

    // MARK: - guard regions and profiles

    /// An op a kernel before some release cannot do makes the trace need
    /// that release, and a comparison for an older one skips it.
    func testAnOpNeedsTheReleaseThatBroughtIt() throws {
        let prefix = "profiles 6.14+\nmmap 0x10000000000 1M\nmmap 0x10000100000 1M shared\n"
        let several = try parse(prefix + "mremap 0x10000000000 2M 0x10040000000")
        XCTAssertEqual(several.needs, Trace.KernelNeed(release: KernelVersion(6, 17), why: "an mremap across mappings, line 4"))
        XCTAssertNil(several.skipReason(under: .ptReclaim, kernel: KernelVersion(6, 17)))
        XCTAssertEqual(several.skipReason(under: .ptReclaim, kernel: KernelVersion(6, 16)),
                       "the trace needs 6.17 (an mremap across mappings, line 4), and this comparison is for 6.16")
        XCTAssertEqual(try parse(prefix + "mremap 0x10000000000 1M 0x10040000000\nguard 0x10040000000 4K").needs?.release,
                       KernelVersion(6, 13))
        XCTAssertEqual(try parse(prefix + "guard 0x10000100000 4K\nguard 0x10000000000 4K").needs?.release, KernelVersion(6, 15),
                       "the newest need stays")
        XCTAssertNil(try parse("mmap 0x10000000000 1M\nmremap 0x10000000000 1M 0x10040000000").needs)
        // MADV_HUGEPAGE on part of a mapping splits its VMA.
        let split = "mmap 0x10000000000 4M\nhugepage 0x10000000000 2M\nmremap 0x10000000000 4M 0x10040000000"
        assertError(split, line: 3, "MADV_HUGEPAGE, which are separate VMAs")
        XCTAssertEqual(try parse("profiles 6.14+\n" + split).needs?.release, KernelVersion(6, 17))
    }

    func testGuardOpsAndTheProfilesLine() throws {
        let trace = try parse("""
            profiles 6.14+
            mmap 0x10000000000 2M
            guard 0x10000000000 64K
            unguard 0x10000000000 4K
            touch 0x10000000000 4K 4K
            """)
        XCTAssertEqual(trace.profiles, [.ptReclaim])
        XCTAssertNil(trace.skipReason(under: .ptReclaim, kernel: nil))
        XCTAssertNotNil(trace.skipReason(under: .prePTReclaim, kernel: nil))
        XCTAssertEqual(trace.steps.map(\.op), [
            .mmap(address: base, length: 2 << 20, shared: false),
            .guardInstall(address: base, length: 64 << 10),
            .guardRemove(address: base, length: 4096),
            .touch(address: base, length: 4096, stride: 4096),
        ])
        XCTAssertNil(try parse("mmap 0x10000000000 4K").profiles, "a trace without the line runs under every profile")
    }

    func testTheProfilesLineIsChecked() {
        assertError("profiles 6.15", line: 1, "unknown profile '6.15'")
        assertError("profiles", line: 1, "at least one profile")
        assertError("mmap 0x10000000000 4K\nprofiles 6.14+", line: 2, "before the first op")
        assertError("profiles 6.14+\nprofiles pre-6.14", line: 2, "a second `profiles` line")
    }

    func testGuardRegionsAreChecked() {
        assertError("mmap 0x10000000000 2M\nguard 0x10000000000 4K", line: 2, "needs `profiles 6.14+`")
        assertError("profiles 6.14+ pre-6.14\nmmap 0x10000000000 2M\nguard 0x10000000000 4K", line: 3, "needs `profiles 6.14+`")
        XCTAssertNoThrow(try parse("profiles 6.14+\nmmap 0x10000000000 2M shared\nguard 0x10000000000 4K"), "shmem takes guards (6.15+)")
        assertError("profiles 6.14+\nguard 0x10000000000 4K", line: 2, "has not mapped")
        let guarded = "profiles 6.14+\nmmap 0x10000000000 4M\nguard 0x10000100000 8K\n"
        assertError(guarded + "touch 0x10000000000 2M 4K", line: 4, "0x10000100000-0x10000102000, a guard region")
        assertError(guarded + "collapse 0x10000000000 2M", line: 4, "MADV_COLLAPSE refuses it")
        // Removed in part, unmapped in part, moved: the guards follow.
        XCTAssertNoThrow(try parse(guarded + "unguard 0x10000100000 4K\ntouch 0x10000100000 4K 4K"))
        assertError(guarded + "unguard 0x10000100000 4K\ntouch 0x10000101000 4K 4K", line: 5, "a guard region")
        XCTAssertNoThrow(try parse(guarded + "munmap 0x10000100000 2M\nmmap 0x10000100000 2M\ntouch 0x10000100000 8K 4K"))
        assertError(guarded + "mremap 0x10000000000 4M 0x10040000000\ntouch 0x10040101000 4K 4K", line: 5, "a guard region")
        XCTAssertNoThrow(try parse(guarded + "mremap 0x10000000000 4M 0x10040000000\ntouch 0x10040000000 1M 4K"))
    }

    static func shippedTraces() throws -> [URL] {
        let folder = try XCTUnwrap(Bundle.module.url(forResource: "Traces", withExtension: nil))
        return try FileManager.default.contentsOfDirectory(at: folder, includingPropertiesForKeys: nil)
            .filter { $0.pathExtension == "trace" }
            .sorted { $0.lastPathComponent < $1.lastPathComponent }
    }
}
