/// Errors from the modelled system calls, named after what the kernel
/// would return, with the offending address in the message.
public enum MMError: Error, Equatable, CustomStringConvertible {
    case misaligned(what: String, value: UInt64)
    case zeroLength(operation: String)
    case outOfUserRange(address: UInt64, length: UInt64)
    /// MAP_FIXED_NOREPLACE found something there (EEXIST).
    case mappingExists(address: UInt64, length: UInt64)
    /// A fault outside every VMA (SIGSEGV).
    case notMapped(address: UInt64)
    case outOfMemory(PageAllocError)
    case mmGone
    /// A kernel operation outside the kernel area it works in.
    case outsideKernelArea(address: UInt64, length: UInt64, operation: String)
    /// An mm and init_mm with different paging modes: the kernel half
    /// copied into the mm's root would point at tables of the wrong level.
    case pagingModeMismatch(mmFiveLevel: Bool)

    public var description: String {
        switch self {
        case .misaligned(let what, let v): "\(what) 0x\(String(v, radix: 16)) is not 4 KiB aligned (EINVAL)"
        case .zeroLength(let op): "\(op) with zero length (EINVAL)"
        case .outOfUserRange(let a, let l): "range 0x\(String(a, radix: 16))+0x\(String(l, radix: 16)) is outside the user address space (EINVAL)"
        case .mappingExists(let a, let l): "MAP_FIXED_NOREPLACE: 0x\(String(a, radix: 16))+0x\(String(l, radix: 16)) overlaps an existing mapping (EEXIST)"
        case .notMapped(let a): "fault at 0x\(String(a, radix: 16)) outside any VMA (SIGSEGV)"
        case .outOfMemory(let e): "out of memory: \(e)"
        case .mmGone: "the mm has exited"
        case .outsideKernelArea(let a, let l, let op):
            "\(op): 0x\(String(a, radix: 16))+0x\(String(l, radix: 16)) is outside the kernel area it works in (EINVAL)"
        case .pagingModeMismatch(let five):
            "a \(five ? 5 : 4)-level mm cannot share the kernel half of a \(five ? 4 : 5)-level init_mm"
        }
    }
}
