#if canImport(Glibc)
import Glibc
#endif

/// Reads VmPTE (`mm->pgtables_bytes` in kB) from /proc/self/status with
/// plain syscalls into a buffer allocated once: a reading made between two
/// ops must not itself allocate, or the heap could grow a page table of its
/// own and show up in the measurement.
final class VmPTEReader {
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16 << 10, alignment: 16)

    deinit { buffer.deallocate() }

    enum Failure: Error, CustomStringConvertible {
        case unreadable(errno: Int32)
        case noVmPTE

        var description: String {
            switch self {
            case .unreadable(let e): "cannot read /proc/self/status: \(String(cString: strerror(e)))"
            case .noVmPTE: "/proc/self/status has no VmPTE line"
            }
        }
    }

    func kilobytes() throws(Failure) -> Int {
        let fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .unreadable(errno: errno) }
        defer { close(fd) }
        var used = 0
        while used < buffer.count {
            let n = read(fd, buffer.baseAddress! + used, buffer.count - used)
            if n < 0 {
                if errno == EINTR { continue }
                throw .unreadable(errno: errno)
            }
            if n == 0 { break }
            used += n
        }
        return try Self.parse(UnsafeRawBufferPointer(rebasing: buffer[0..<used]))
    }

    /// The number after "VmPTE:" at the start of a line.
    static func parse(_ status: UnsafeRawBufferPointer) throws(Failure) -> Int {
        let key = Array("VmPTE:".utf8)
        var i = 0
        while i + key.count <= status.count {
            if (i == 0 || status[i - 1] == UInt8(ascii: "\n")) && status[i..<i + key.count].elementsEqual(key) {
                var j = i + key.count
                while j < status.count, status[j] == UInt8(ascii: " ") || status[j] == UInt8(ascii: "\t") { j += 1 }
                var value = 0
                var digits = 0
                while j < status.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(status[j]) {
                    value = value * 10 + Int(status[j] - UInt8(ascii: "0"))
                    digits += 1
                    j += 1
                }
                guard digits > 0 else { throw .noVmPTE }
                return value
            }
            i += 1
        }
        throw .noVmPTE
    }
}
