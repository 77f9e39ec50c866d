/// The errno MADV_COLLAPSE returns when it cannot collapse every huge page
/// of its range (madvise_collapse_errno).
public enum CollapseErrno: String, Sendable, Equatable {
    /// Intrinsic to the range: VM_NOHUGEPAGE, nothing mapped, no page to keep.
    case einval = "EINVAL"
    /// No huge page could be allocated.
    case enomem = "ENOMEM"
    /// Transient: try again.
    case eagain = "EAGAIN"
    case ebusy = "EBUSY"
}

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
    /// A write to a VMA without PROT_WRITE (SIGSEGV, SEGV_ACCERR).
    case accessDenied(address: UInt64)
    /// mremap's source and destination overlap (EINVAL).
    case overlappingMove(from: UInt64, to: UInt64, length: UInt64)
    /// mremap's source does not start in a VMA, or (before 6.17) is not
    /// inside one (EFAULT).
    case moveAcrossVMAs(address: UInt64, length: UInt64)
    /// MADV_COLLAPSE refused (its errno: EINVAL, ENOMEM, EAGAIN, EBUSY).
    case collapseRefused(address: UInt64, errno: CollapseErrno, why: String)
    case outOfMemory(PageAllocError)
    case mmGone
    /// An anonymous fault in an mm the OOM reaper has reaped (MMF_UNSTABLE):
    /// SIGBUS, since the data that was there is gone.
    case unstableAddressSpace(address: UInt64)
    /// An access to a page a guard marker holds (MADV_GUARD_INSTALL):
    /// SIGSEGV.
    case guardRegion(address: UInt64)
    /// MADV_GUARD_INSTALL or MADV_GUARD_REMOVE refused (EINVAL).
    case guardRefused(address: UInt64, why: String)
    /// A profile no kernel shipped, not asked for as an unsafe mode.
    case unshippedProfile(String)
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
        case .accessDenied(let a): "write fault at 0x\(String(a, radix: 16)) in a mapping without PROT_WRITE (SIGSEGV)"
        case .overlappingMove(let f, let t, let l):
            "mremap from 0x\(String(f, radix: 16)) to 0x\(String(t, radix: 16)) of 0x\(String(l, radix: 16)) bytes: the ranges overlap (EINVAL)"
        case .moveAcrossVMAs(let a, let l):
            "mremap of 0x\(String(a, radix: 16))+0x\(String(l, radix: 16)) does not start in a mapping, or spans more than one on a kernel before 6.17 (EFAULT)"
        case .collapseRefused(let a, let e, let why):
            "MADV_COLLAPSE at 0x\(String(a, radix: 16)) refused (\(e.rawValue)): \(why)"
        case .outOfMemory(let e): if case .outOfMemory = e { "\(e)" } else { "page allocation failed: \(e)" }
        case .mmGone: "the mm has exited"
        case .guardRegion(let a): "access at 0x\(String(a, radix: 16)) hits a guard region (MADV_GUARD_INSTALL): SIGSEGV"
        case .guardRefused(let a, let why): "guard region at 0x\(String(a, radix: 16)) refused (EINVAL): \(why)"
        case .unstableAddressSpace(let a):
            "fault at 0x\(String(a, radix: 16)) in private memory the OOM reaper has reaped (MMF_UNSTABLE): SIGBUS"
        case .unshippedProfile(let why): "refused profile: \(why)"
        case .outsideKernelArea(let a, let l, let op):
            "\(op): 0x\(String(a, radix: 16))+0x\(String(l, radix: 16)) is outside the kernel area it works in (EINVAL)"
        case .pagingModeMismatch(let five):
            "a \(five ? 5 : 4)-level mm cannot share the kernel half of a \(five ? 4 : 5)-level init_mm"
        }
    }
}
