/// The reverse map, as far as walkers under the rmap lock see it: the
/// ranges whose VMAs are still linked to their anon_vma or file (i_mmap).
/// munmap detaches a VMA from the mm at once, but unlinks it from the rmap
/// only in free_pgtables, under the rmap lock and before any of its tables
/// is freed; an rmap walker holding that lock for read therefore never
/// walks a range whose tables are being torn down by free_pgtables.
///
/// It also keeps the file VMAs munmap, mremap and exit have taken out of
/// the mm's tree but free_pgtables has not yet unlinked: they are still in
/// their file's i_mmap, so an rmap walk (collapse_file's unmap,
/// retract_page_tables) must still find them and their entries, which the
/// zap of the unmap may not have reached yet.
struct RmapRanges {
    private(set) var ranges: [Range<UInt64>] = []
    private(set) var detached: [VMA] = []

    func contains(_ address: UInt64) -> Bool { ranges.contains { $0.contains(address) } }

    mutating func link(_ range: Range<UInt64>) {
        unlink(range)
        ranges.append(range)
    }

    /// VMAs taken out of the tree: the file ones stay linked to their file.
    mutating func detach(_ vmas: [VMA]) {
        detached += vmas.filter { $0.file != nil }
    }

    /// unlink_file_vma, for VMAs free_pgtables is done with.
    mutating func unlinkDetached(_ vmas: [VMA]) {
        detached.removeAll { d in vmas.contains { $0.linkOrder == d.linkOrder && $0.start == d.start } }
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

extension MM {
    /// This mm's VMAs in `file`'s i_mmap, in rmap order: those in the tree
    /// and those detached from it that free_pgtables has not unlinked yet.
    /// Read in that order (see detachVMAs), a VMA being detached meanwhile
    /// is found at least once; found twice, its second walk finds nothing
    /// left to do. The caller holds the rmap lock for read, which keeps
    /// free_pgtables from unlinking any of them during the walk.
    func fileRmap(_ file: ShmemFile) -> [VMA] {
        let attached = vmaTree.withLock { $0.vmas.filter { $0.file === file } }
        let detached = rmap.withLock { $0.detached.filter { $0.file === file } }
        return VMATree.inRmapOrder(attached + detached)
    }
}
