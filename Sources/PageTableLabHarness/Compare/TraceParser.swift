#if canImport(Glibc)
import PageTableLab
import Glibc
#endif
import Foundation

/// Reads the trace format:
///
/// ```
/// mmap ADDR LEN [shared]   read-write mapping exactly at ADDR: anonymous private,
///                          or with `shared` MAP_SHARED of a fresh memfd of LEN bytes
/// touch ADDR LEN STRIDE    write one byte at ADDR, ADDR+STRIDE, ... below ADDR+LEN
/// dontneed ADDR LEN        madvise(MADV_DONTNEED)
/// munmap ADDR LEN
/// hugepage ADDR LEN        madvise(MADV_HUGEPAGE)
/// collapse ADDR LEN        madvise(MADV_COLLAPSE)
/// mremap OLD LEN NEW [dontunmap]
///                          mremap(OLD, LEN, LEN, MREMAP_MAYMOVE|MREMAP_FIXED, NEW),
///                          with `dontunmap` also MREMAP_DONTUNMAP; OLD..OLD+LEN
///                          lies in one mapping, or (`profiles 6.14+`, as 6.17+
///                          moves each VMA, gaps kept) starts in one
/// mprotect ADDR LEN PROT   PROT is none, r or rw
/// guard ADDR LEN           madvise(MADV_GUARD_INSTALL) (6.13+)
/// unguard ADDR LEN         madvise(MADV_GUARD_REMOVE)
/// profiles PROFILE ...     before the first op: the trace is for these
///                          profiles only, and a comparison under another
///                          skips it (guard, and an mremap of several
///                          mappings, need `profiles 6.14+`)
/// expect [KB] [PROFILE=KB ...]
///                          compare VmPTE growth since the trace began; the
///                          optional KB (an extension) is the growth the
///                          author expects, PROFILE=KB a value for one profile
/// ```
///
/// `#` starts a comment. Numbers are decimal or `0x` hex with an optional
/// binary `K`, `M` or `G` suffix; kB values are plain decimal. The whole
/// trace is checked (`TraceValidator`) before a runner sees it, so a bad line
/// stops it before anything has run.
public enum TraceParser {
    public static func parse(contentsOf path: String) throws(TraceError) -> Trace {
        guard let data = FileManager.default.contents(atPath: path) else {
            let reason = access(path, R_OK) == 0 ? "not a readable file" : String(cString: strerror(errno))
            throw TraceError(file: path, line: 0, message: "cannot read the trace: \(reason)")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw TraceError(file: path, line: 0, message: "the trace is not UTF-8 text")
        }
        return try parse(text, file: path)
    }

    public static func parse(_ text: String, file: String) throws(TraceError) -> Trace {
        var validator = TraceValidator(file: file)
        var steps: [TraceStep] = []
        // "\r\n" is a single Character in Swift: split at it too, or a trace
        // saved with CRLF line ends reads as one line.
        let lines = text.split(omittingEmptySubsequences: false) { $0 == "\n" || $0 == "\r\n" }
        for (index, raw) in lines.enumerated() {
            let words = raw.prefix { $0 != "#" }.split { $0 == " " || $0 == "\t" || $0 == "\r" }
            guard let verb = words.first else { continue }
            let line = LineParser(file: file, line: index + 1)
            if verb == "profiles" {
                try validator.restrict(to: try line.profiles(Array(words.dropFirst())), line: line.line)
                continue
            }
            let step = TraceStep(line: line.line, op: try line.op(verb, arguments: Array(words.dropFirst())))
            try validator.check(step)
            steps.append(step)
        }
        return Trace(file: file, steps: steps, profiles: validator.profiles, needs: validator.needs)
    }

    /// A number in the trace's syntax, or nil.
    public static func number(_ word: Substring) -> UInt64? {
        var digits = word
        var unit: UInt64 = 1
        switch digits.last {
        case "K": unit = 1 << 10
        case "M": unit = 1 << 20
        case "G": unit = 1 << 30
        default: break
        }
        if unit != 1 { digits = digits.dropLast() }
        let value: UInt64?
        if digits.hasPrefix("0x") || digits.hasPrefix("0X") {
            let hex = digits.dropFirst(2)
            value = hex.allSatisfy(\.isHexDigit) ? UInt64(hex, radix: 16) : nil
        } else {
            value = digits.allSatisfy(\.isASCII) && digits.allSatisfy(\.isWholeNumber) ? UInt64(digits, radix: 10) : nil
        }
        guard let value else { return nil }
        let (scaled, overflow) = value.multipliedReportingOverflow(by: unit)
        return overflow ? nil : scaled
    }
}

/// Turns the words of one line into an op, or an error naming that line.
private struct LineParser {
    let file: String
    let line: Int

    func error(_ message: String) -> TraceError {
        TraceError(file: file, line: line, message: message)
    }

    /// A word of the trace as an error quotes it: control and format
    /// characters (a bidi override, say) escaped, so that a binary file
    /// cannot drive the user's terminal, and the word cut at 40 Unicode
    /// scalars (not characters: one character may carry megabytes of
    /// combining marks), so that junk is not echoed back whole.
    static func quoted(_ word: Substring) -> String {
        let limit = 40
        let scalars = word.unicodeScalars
        let shown = scalars.prefix(limit).map { scalar in
            [.control, .format].contains(scalar.properties.generalCategory) ? scalar.escaped(asASCII: true) : String(scalar)
        }.joined()
        return "'\(shown)'" + (scalars.count > limit ? "… (\(word.utf8.count) bytes)" : "")
    }

    static let verbs = "mmap, touch, dontneed, munmap, hugepage, collapse, mremap, mprotect, guard, unguard, expect or profiles"

    func op(_ verb: Substring, arguments: [Substring]) throws(TraceError) -> TraceOp {
        switch verb {
        case "mmap":
            var words = arguments
            var shared = false
            if words.count == 3 {
                guard words[2] == "shared" else {
                    throw error("mmap's third word may only be 'shared', got \(Self.quoted(words[2]))")
                }
                shared = true
                words.removeLast()
            }
            let n = try numbers(words, names: ["ADDR", "LEN"], verb: verb, optional: "[shared]")
            return .mmap(address: n[0], length: n[1], shared: shared)
        case "touch":
            let n = try numbers(arguments, names: ["ADDR", "LEN", "STRIDE"], verb: verb)
            return .touch(address: n[0], length: n[1], stride: n[2])
        case "dontneed":
            let n = try numbers(arguments, names: ["ADDR", "LEN"], verb: verb)
            return .dontneed(address: n[0], length: n[1])
        case "munmap":
            let n = try numbers(arguments, names: ["ADDR", "LEN"], verb: verb)
            return .munmap(address: n[0], length: n[1])
        case "hugepage":
            let n = try numbers(arguments, names: ["ADDR", "LEN"], verb: verb)
            return .hugepage(address: n[0], length: n[1])
        case "collapse":
            let n = try numbers(arguments, names: ["ADDR", "LEN"], verb: verb)
            return .collapse(address: n[0], length: n[1])
        case "mremap":
            var words = arguments
            var dontUnmap = false
            if words.count == 4 {
                guard words[3] == "dontunmap" else {
                    throw error("mremap's fourth word may only be 'dontunmap', got \(Self.quoted(words[3]))")
                }
                dontUnmap = true
                words.removeLast()
            }
            let n = try numbers(words, names: ["OLD", "LEN", "NEW"], verb: verb, optional: "[dontunmap]")
            return .mremap(old: n[0], length: n[1], new: n[2], dontUnmap: dontUnmap)
        case "mprotect":
            guard arguments.count == 3 else {
                throw error("mprotect takes 3 arguments (ADDR LEN PROT), got \(arguments.count)")
            }
            let n = try numbers(Array(arguments.prefix(2)), names: ["ADDR", "LEN"], verb: verb)
            guard let protection = Protection(rawValue: String(arguments[2])) else {
                throw error("bad PROT \(Self.quoted(arguments[2])) for mprotect: expected none, r or rw")
            }
            return .mprotect(address: n[0], length: n[1], protection: protection)
        case "guard":
            let n = try numbers(arguments, names: ["ADDR", "LEN"], verb: verb)
            return .guardInstall(address: n[0], length: n[1])
        case "unguard":
            let n = try numbers(arguments, names: ["ADDR", "LEN"], verb: verb)
            return .guardRemove(address: n[0], length: n[1])
        case "expect":
            return .expect(try expectation(arguments))
        default:
            throw error("unknown op \(Self.quoted(verb)) (expected \(Self.verbs))")
        }
    }

    /// The names on a `profiles` line.
    func profiles(_ arguments: [Substring]) throws(TraceError) -> Set<CompareProfile> {
        guard !arguments.isEmpty else { throw error("profiles names at least one profile") }
        var profiles = Set<CompareProfile>()
        for word in arguments {
            guard let profile = CompareProfile(rawValue: String(word)) else {
                let names = CompareProfile.allCases.map(\.rawValue).joined(separator: ", ")
                throw error("unknown profile \(Self.quoted(word)) (profiles: \(names))")
            }
            profiles.insert(profile)
        }
        return profiles
    }

    func numbers(_ arguments: [Substring], names: [String], verb: Substring, optional: String = "") throws(TraceError) -> [UInt64] {
        guard arguments.count == names.count else {
            let form = (names + (optional.isEmpty ? [] : [optional])).joined(separator: " ")
            throw error("\(verb) takes \(names.count) arguments (\(form)), got \(arguments.count)")
        }
        var values: [UInt64] = []
        for (word, name) in zip(arguments, names) {
            guard let value = TraceParser.number(word) else {
                throw error("bad number \(Self.quoted(word)) for \(name): expected decimal or 0x hex, with an optional K, M or G suffix, below 2^64")
            }
            values.append(value)
        }
        return values
    }

    func expectation(_ arguments: [Substring]) throws(TraceError) -> TraceExpectation {
        var expectation = TraceExpectation()
        for word in arguments {
            let parts = word.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let value = try kilobytes(parts.last!)
            if parts.count == 1 {
                guard expectation.kilobytes == nil else { throw error("expect takes one plain kB value, got a second: \(Self.quoted(word))") }
                expectation.kilobytes = value
            } else {
                let names = CompareProfile.allCases.map(\.rawValue).joined(separator: ", ")
                guard let profile = CompareProfile(rawValue: String(parts[0])) else {
                    throw error("unknown profile \(Self.quoted(parts[0])) in \(Self.quoted(word)) (profiles: \(names))")
                }
                guard expectation.perProfile[profile] == nil else { throw error("expect names profile \(profile.rawValue) twice") }
                expectation.perProfile[profile] = value
            }
        }
        return expectation
    }

    func kilobytes(_ word: Substring) throws(TraceError) -> Int {
        guard !word.isEmpty, word.allSatisfy({ $0.isASCII && $0.isWholeNumber }), let value = Int(word) else {
            throw error("bad kB value \(Self.quoted(word)) for expect: expected a plain decimal number of kB")
        }
        return value
    }
}
