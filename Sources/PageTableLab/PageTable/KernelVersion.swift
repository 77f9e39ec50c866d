/// A kernel's major and minor release ("6.18.44-fc-v1252" is 6.18): what
/// decides which of the mm's behaviours the model follows
/// (MMProfile.forKernel). Stable and distribution suffixes are ignored;
/// a backport that brings a behaviour to an older release is not seen.
public struct KernelVersion: Comparable, Hashable, Sendable, Codable, CustomStringConvertible {
    public let major: Int
    public let minor: Int

    public init(_ major: Int, _ minor: Int) {
        self.major = major
        self.minor = minor
    }

    /// The leading MAJOR.MINOR of a release string (uname -r, or one a user
    /// typed); nil when it has none.
    public init?(release: String) {
        let numbers = release.split(whereSeparator: { !$0.isNumber }).prefix(2)
        guard numbers.count == 2, release.first?.isNumber == true,
              let major = Int(numbers[numbers.startIndex]), let minor = Int(numbers[numbers.startIndex + 1]),
              release.dropFirst(numbers[numbers.startIndex].count).first == "." else { return nil }
        self.init(major, minor)
    }

    public static func < (a: KernelVersion, b: KernelVersion) -> Bool { (a.major, a.minor) < (b.major, b.minor) }

    public var description: String { "\(major).\(minor)" }
}
