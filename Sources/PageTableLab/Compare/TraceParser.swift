#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Reads the trace format:
///
/// ```
/// mmap ADDR LEN            anonymous private read-write mapping exactly at ADDR
/// touch ADDR LEN STRIDE    write one byte at ADDR, ADDR+STRIDE, ... below ADDR+LEN
/// dontneed ADDR LEN        madvise(MADV_DONTNEED)
/// munmap ADDR LEN
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
            let step = TraceStep(line: line.line, op: try line.op(verb, arguments: Array(words.dropFirst())))
            try validator.check(step)
            steps.append(step)
        }
        return Trace(file: file, steps: steps)
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

    func op(_ verb: Substring, arguments: [Substring]) throws(TraceError) -> TraceOp {
        switch verb {
        case "mmap":
            let n = try numbers(arguments, names: ["ADDR", "LEN"], verb: verb)
            return .mmap(address: n[0], length: n[1])
        case "touch":
            let n = try numbers(arguments, names: ["ADDR", "LEN", "STRIDE"], verb: verb)
            return .touch(address: n[0], length: n[1], stride: n[2])
        case "dontneed":
            let n = try numbers(arguments, names: ["ADDR", "LEN"], verb: verb)
            return .dontneed(address: n[0], length: n[1])
        case "munmap":
            let n = try numbers(arguments, names: ["ADDR", "LEN"], verb: verb)
            return .munmap(address: n[0], length: n[1])
        case "expect":
            return .expect(try expectation(arguments))
        default:
            throw error("unknown op '\(verb)' (expected mmap, touch, dontneed, munmap or expect)")
        }
    }

    func numbers(_ arguments: [Substring], names: [String], verb: Substring) throws(TraceError) -> [UInt64] {
        guard arguments.count == names.count else {
            throw error("\(verb) takes \(names.count) arguments (\(names.joined(separator: " "))), got \(arguments.count)")
        }
        var values: [UInt64] = []
        for (word, name) in zip(arguments, names) {
            guard let value = TraceParser.number(word) else {
                throw error("bad number '\(word)' for \(name): expected decimal or 0x hex, with an optional K, M or G suffix, below 2^64")
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
                guard expectation.kilobytes == nil else { throw error("expect takes one plain kB value, got a second: '\(word)'") }
                expectation.kilobytes = value
            } else {
                let names = CompareProfile.allCases.map(\.rawValue).joined(separator: ", ")
                guard let profile = CompareProfile(rawValue: String(parts[0])) else {
                    throw error("unknown profile '\(parts[0])' in '\(word)' (profiles: \(names))")
                }
                guard expectation.perProfile[profile] == nil else { throw error("expect names profile \(profile.rawValue) twice") }
                expectation.perProfile[profile] = value
            }
        }
        return expectation
    }

    func kilobytes(_ word: Substring) throws(TraceError) -> Int {
        guard !word.isEmpty, word.allSatisfy({ $0.isASCII && $0.isWholeNumber }), let value = Int(word) else {
            throw error("bad kB value '\(word)' for expect: expected a plain decimal number of kB")
        }
        return value
    }
}
