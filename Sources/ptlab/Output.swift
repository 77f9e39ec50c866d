#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization

/// Machine-readable output: one JSON object on stdout, keys sorted so that
/// two runs can be diffed line by line.
enum JSONOutput {
    static func print<T: Encodable>(_ value: T) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let data = try encoder.encode(value)
        FileHandle.standardOutput.write(data)
        FileHandle.standardOutput.write(Data("\n".utf8))
    }
}

/// Human-facing notes go to stderr so that stdout stays clean for --json
/// and for pipes.
enum Diagnostics {
    static func warn(_ message: String) {
        FileHandle.standardError.write(Data("ptlab: \(message)\n".utf8))
    }

    /// Timings from an unoptimised build are meaningless: say so before
    /// anyone records them.
    static func warnIfDebugBuild(_ command: String) {
        #if DEBUG
        warn("warning: this is a debug build; its numbers mean nothing. Use `swift run -c release ptlab \(command)`.")
        #endif
    }
}

/// A one-line progress display on stderr, redrawn in place, for runs longer
/// than a few seconds. Silent unless stderr is a terminal, so logs and
/// captured output never fill with redraws. Safe to call from any thread.
final class ProgressLine: Sendable {
    private let enabled: Bool
    private let prefix: String
    private let state = Mutex<Int>(0)   // width of the line on screen

    init(_ prefix: String) {
        self.prefix = prefix
        enabled = isatty(STDERR_FILENO) != 0
    }

    func update(_ status: String) {
        guard enabled else { return }
        state.withLock { width in
            let line = "\(prefix): \(status)"
            let pad = String(repeating: " ", count: max(0, width - line.count))
            FileHandle.standardError.write(Data("\r\(line)\(pad)".utf8))
            width = line.count
        }
    }

    /// Erase the line so that what follows starts clean.
    func finish() {
        guard enabled else { return }
        state.withLock { width in
            guard width > 0 else { return }
            FileHandle.standardError.write(Data("\r\(String(repeating: " ", count: width))\r".utf8))
            width = 0
        }
    }
}
