import PageTableLab
/// A kernel's build configuration, as its `.config` says it. Parsed once into
/// names so that every question asked of it — `ptlab info`'s table, the
/// compare profile — gets the same answer from the same reading.
struct KConfig: Sendable, Equatable {
    enum Setting: Sendable, Equatable {
        /// "y", "m", a number, or a string with its quotes, as written.
        case value(String)
        /// `# CONFIG_X is not set`: the option exists in this kernel and is
        /// off, which is not the same as a kernel that lacks it.
        case notSet
    }

    /// Where the text came from, for reports.
    let source: String
    private let settings: [String: Setting]

    init(parsing text: String, source: String) {
        var settings: [String: Setting] = [:]
        // isNewline: a "\r\n" is one Character, so splitting on "\n" alone
        // would leave a CRLF file as a single line.
        for line in text.split(whereSeparator: \.isNewline) {
            if line.hasPrefix("# CONFIG_"), line.hasSuffix(" is not set") {
                settings[String(line.dropFirst(2).dropLast(" is not set".count))] = .notSet
            } else if line.hasPrefix("CONFIG_"), let eq = line.firstIndex(of: "=") {
                // Kconfig lets a later assignment override an earlier one.
                settings[String(line[..<eq])] = .value(String(line[line.index(after: eq)...]))
            }
        }
        self.source = source
        self.settings = settings
    }

    /// nil when this kernel has no such option.
    subscript(name: String) -> Setting? { settings[name] }
}
