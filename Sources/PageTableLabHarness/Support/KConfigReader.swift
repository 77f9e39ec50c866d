import PageTableLab
import CHarness

extension KConfig {
    /// The running kernel's, read once: it cannot change under a running
    /// process. /proc/config.gz (CONFIG_IKCONFIG_PROC) first, since it is
    /// the running kernel's own; else the distribution's /boot copy for this
    /// release. nil when neither can be read.
    static let running: KConfig? = load(from: ["/proc/config.gz", "/boot/config-\(SystemInfo.uname().release)"])

    /// The first of `paths` that reads whole, in order of trust.
    static func load(from paths: [String]) -> KConfig? {
        for path in paths {
            if let text = read(path) { return KConfig(parsing: text, source: path) }
        }
        return nil
    }

    /// The file's text, decompressed in-process by zlib (see kconfig.c for
    /// why no zcat child), or nil if it cannot be read whole.
    static func read(_ path: String) -> String? {
        var capacity = 1 << 18
        while true {
            var total = -1
            var fits = false
            let text = String(unsafeUninitializedCapacity: capacity) { buffer in
                total = ptlab_kconfig_read(path, buffer.baseAddress, buffer.count)
                fits = (0...buffer.count).contains(total)
                return fits ? total : 0
            }
            if fits { return text }
            if total < 0 { return nil }
            capacity = total
        }
    }
}
