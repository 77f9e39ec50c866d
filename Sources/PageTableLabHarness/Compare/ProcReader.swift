#if canImport(Glibc)
import PageTableLab
import Glibc
#endif

/// Reads a /proc file with plain syscalls into a buffer allocated once: a
/// reading made between two ops must not itself allocate, or the heap
/// could grow a page table of its own and show up in the measurement.
final class ProcReader {
    let path: String
    private let buffer: UnsafeMutableRawBufferPointer

    init(_ path: String, capacity: Int = 16 << 10) {
        self.path = path
        buffer = .allocate(byteCount: capacity, alignment: 16)
    }

    deinit { buffer.deallocate() }

    enum Failure: Error, CustomStringConvertible {
        case unreadable(path: String, errno: Int32)
        case missing(path: String, key: String)
        case tooLarge(path: String, capacity: Int)

        var description: String {
            switch self {
            case .unreadable(let p, let e): "cannot read \(p): \(String(cString: strerror(e)))"
            case .missing(let p, let key): "\(p) has no \(key) line"
            case .tooLarge(let p, let capacity): "\(p) is larger than the \(capacity) bytes read for it"
            }
        }
    }

    /// The whole file, in the buffer. A /proc file has no size to ask for
    /// first and comes a page or so per read: read to end of file, and
    /// refuse one that does not fit rather than hand back a prefix of it.
    func read() throws(Failure) -> UnsafeRawBufferPointer {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .unreadable(path: path, errno: errno) }
        defer { close(fd) }
        var used = 0
        while true {
            var spare: UInt8 = 0
            let n = used < buffer.count ? Glibc.read(fd, buffer.baseAddress! + used, buffer.count - used)
                                        : Glibc.read(fd, &spare, 1)
            if n < 0 {
                if errno == EINTR { continue }
                throw .unreadable(path: path, errno: errno)
            }
            if n == 0 { break }
            guard used < buffer.count else { throw .tooLarge(path: path, capacity: buffer.count) }
            used += n
        }
        return UnsafeRawBufferPointer(rebasing: buffer[0..<used])
    }

    /// The number after `key` (e.g. "VmPTE:" or "thp_fault_fallback ") at
    /// the start of a line.
    func value(_ key: String) throws(Failure) -> Int {
        guard let v = Self.parse(try read(), key: Array(key.utf8)) else { throw .missing(path: path, key: key) }
        return v
    }

    static func parse(_ text: UnsafeRawBufferPointer, key: [UInt8]) -> Int? {
        var found: Int?
        forEachLine(text, startingWith: key.first ?? 0) { line in
            guard let v = parse(line: line, key: key) else { return true }
            found = v
            return false
        }
        return found
    }

    /// The number after each of `keys` at the start of a line (nil where
    /// none starts with it), from one pass over the lines for each first
    /// byte the keys start with (/proc/vmstat's "thp_…", "numa_…").
    static func parse(_ text: UnsafeRawBufferPointer, keys: [[UInt8]]) -> [Int?] {
        var found = [Int?](repeating: nil, count: keys.count)
        for (k, key) in keys.enumerated() {
            guard let first = key.first, !keys[..<k].contains(where: { $0.first == first }) else { continue }
            var left = keys[k...].count { $0.first == first }
            forEachLine(text, startingWith: first) { line in
                for i in found.indices where found[i] == nil && keys[i].first == first {
                    guard let v = parse(line: line, key: keys[i]) else { continue }
                    found[i] = v
                    left -= 1
                    break
                }
                return left > 0
            }
        }
        return found
    }

    /// `body` for each line of `text` that starts with `first`, without its
    /// newline, until it returns false. Lines are found with memchr and
    /// only the first byte of each is looked at here: a reading of
    /// /proc/vmstat (four keys among some 180 lines) brackets every op of a
    /// THP trace, and a closure call and a comparison per line was the
    /// largest part of a debug build's readings.
    private static func forEachLine(_ text: UnsafeRawBufferPointer, startingWith first: UInt8,
                                    _ body: (UnsafeRawBufferPointer) -> Bool) {
        guard var line = text.baseAddress else { return }
        let end = line + text.count
        while line < end {
            let newline = memchr(line, Int32(UInt8(ascii: "\n")), end - line).map { UnsafeRawPointer($0) } ?? end
            if line.load(as: UInt8.self) == first,
               !body(UnsafeRawBufferPointer(start: line, count: newline - line)) { return }
            line = newline + 1
        }
    }

    /// The number after `key` if `line` starts with it.
    static func parse(line: UnsafeRawBufferPointer, key: [UInt8]) -> Int? {
        guard line.count >= key.count,
              key.withUnsafeBytes({ memcmp(line.baseAddress!, $0.baseAddress!, key.count) }) == 0 else { return nil }
        var j = key.count
        while j < line.count, line[j] == UInt8(ascii: " ") || line[j] == UInt8(ascii: "\t") { j += 1 }
        var value = 0
        var digits = 0
        while j < line.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(line[j]) {
            value = value * 10 + Int(line[j] - UInt8(ascii: "0"))
            digits += 1
            j += 1
        }
        return digits > 0 ? value : nil
    }

    /// `body` for each line of `text`, without its newline. Lines are
    /// found with memchr: a /proc file of thousands of lines is read between
    /// every two ops of a THP trace, and byte-by-byte Swift was most of a
    /// debug build's comparison time.
    static func forEachLine(_ text: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> Void) {
        guard var line = text.baseAddress else { return }
        let end = line + text.count
        while line < end {
            let newline = memchr(line, Int32(UInt8(ascii: "\n")), end - line).map { UnsafeRawPointer($0) } ?? end
            body(UnsafeRawBufferPointer(start: line, count: newline - line))
            line = newline + 1
        }
    }
}
