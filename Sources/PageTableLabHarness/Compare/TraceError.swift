import PageTableLab
/// A problem with a trace, pinned to the line that causes it, so that the
/// author can jump straight there (`FILE:LINE: message`, as compilers print).
public struct TraceError: Error, Equatable, Sendable, CustomStringConvertible {
    public let file: String
    /// 1-based; 0 when the problem is the file as a whole (it cannot be read).
    public let line: Int
    public let message: String
    /// The live kernel went where the model cannot follow (`NotComparable`):
    /// the trace stopped without a verdict.
    public let notComparable: Bool

    public init(file: String, line: Int, message: String, notComparable: Bool = false) {
        self.file = file
        self.line = line
        self.message = message
        self.notComparable = notComparable
    }

    public var description: String {
        line > 0 ? "\(file):\(line): \(message)" : "\(file): \(message)"
    }
}
