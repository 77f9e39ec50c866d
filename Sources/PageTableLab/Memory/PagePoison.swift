internal import CSupport

/// page_poison (mm/page_poison.c): with `PageAllocator.Parameters.poison`
/// set, a freed page is filled with a known byte so that a reader of a
/// page freed under it sees garbage it can recognise, as the kernel's
/// page_poisoning debug option does.
public enum PagePoison {
    /// The byte a freed page is filled with: 0x6b, the slab's POISON_FREE
    /// (include/linux/poison.h), where page poisoning uses PAGE_POISON
    /// (0xaa); an entry of all 0x6b bytes is what walkers recognise.
    public static let freeByte = UInt8(PTLAB_POISON_FREE)

    /// Fill `bytes` at `address` as the allocator fills a freed page (the
    /// same code, for measuring it).
    public static func fill(_ address: UnsafeMutableRawPointer, bytes: Int) {
        ptlab_poison_pages(address, bytes)
    }
}
