/// The reverse map, as far as walkers under the rmap lock see it: the
/// ranges whose VMAs are still linked to their anon_vma or file (i_mmap).
/// munmap detaches a VMA from the mm at once, but unlinks it from the rmap
/// only in free_pgtables, under the rmap lock and before any of its tables
/// is freed; an rmap walker holding that lock for read therefore never
/// walks a range whose tables are being torn down by free_pgtables.
struct RmapRanges {
    private(set) var ranges: [Range<UInt64>] = []

    func contains(_ address: UInt64) -> Bool { ranges.contains { $0.contains(address) } }

    mutating func link(_ range: Range<UInt64>) {
        unlink(range)
        ranges.append(range)
    }

    mutating func unlink(_ range: Range<UInt64>) {
        ranges = ranges.flatMap { r -> [Range<UInt64>] in
            guard r.overlaps(range) else { return [r] }
            var left: [Range<UInt64>] = []
            if r.lowerBound < range.lowerBound { left.append(r.lowerBound..<range.lowerBound) }
            if range.upperBound < r.upperBound { left.append(range.upperBound..<r.upperBound) }
            return left
        }
    }
}
