internal import CSupport

/// page_poison (mm/page_poison.c): with `PageAllocator.Parameters.poison`
/// set, a freed page is filled with `PAGE_POISON` so that a reader of a
/// page that was freed under it sees garbage it can recognise, as the
/// kernel's `page_poisoning` debug option does.
public enum PagePoison {
    /// PAGE_POISON (include/linux/poison.h): the byte a freed page is
    /// filled with.
    public static let freeByte = UInt8(PTLAB_POISON_FREE)

    /// Fill `bytes` at `address` as the allocator fills a freed page (the
    /// same code, for measuring it).
    public static func fill(_ address: UnsafeMutableRawPointer, bytes: Int) {
        ptlab_poison_pages(address, bytes)
    }
}
