internal import CSupport

/// The mapcount of a data page: mm/rmap.c's folio_add_*_rmap_pte/_pmd and
/// folio_remove_rmap_pte/_pmd, as far as counting goes.
///
/// Why the model keeps it: a page freed while an entry still maps it is a
/// use-after-free that no walker can see (walkers check tables, not data
/// pages) and a user store catches only if one lands there before the
/// page is handed out again, as a page table (`MM.userStore`). The kernel
/// checks the count when a page is freed (free_pages_prepare's "Bad page
/// state ... nonzero mapcount") and so does the allocator here, whoever
/// frees the page and whatever happens to it next: the free is refused and
/// counted in `Integrity.badPageStates`.
///
/// Every path that sets a user leaf entry to a page adds, and every path
/// that clears one removes, under the lock of the entry's table (the
/// anonymous collapse removes after it has unlinked the table under the
/// mmap and rmap write locks, where nothing else can reach it). A move
/// (mremap) and a protection change (mprotect) keep the count. A PTE counts
/// on the page it maps, a huge PMD on its folio's head (the kernel's
/// entire_mapcount), so a split moves the head's count to the 512 pages.
/// Kernel mappings (init_mm) are not counted, as the kernel does not count
/// vmalloc's or the direct map's.
extension MM {
    /// set_pte_at / set_pmd_at of a user leaf, counted first, as the
    /// kernel's fault paths add the rmap before they set the entry. A
    /// `new` page (anonymous memory just allocated, which no other entry
    /// can map yet) is counted with a store where others take a locked add,
    /// as folio_add_new_anon_rmap sets _mapcount.
    func setLeaf(_ slot: UnsafeMutablePointer<UInt64>, _ entry: Entry, new: Bool = false) {
        if new { addNewRmap(entry) } else { addRmap(entry) }
        ptlab_pte_write(slot, entry.rawValue)
    }

    /// folio_add_new_anon_rmap: the first entry of a page just allocated,
    /// whose count is zero (the allocator hands out no page it refused to
    /// take back mapped).
    private func addNewRmap(_ entry: Entry) {
        guard let d = dataPage(entry) else { return }
        ptlab_page_mapcount_set(d, 1)
    }

    /// A user entry now maps what `entry` maps.
    func addRmap(_ entry: Entry) {
        guard let d = dataPage(entry) else { return }
        _ = ptlab_page_mapcount_add(d, 1)
    }

    /// A user entry that mapped what `entry` maps has been cleared. A page
    /// unmapped more often than it was mapped is a bad page state too: the
    /// count is put back, so that the one mistake is counted once.
    func removeRmap(_ entry: Entry) {
        guard let d = dataPage(entry) else { return }
        guard ptlab_page_mapcount_add(d, -1) < 0 else { return }
        _ = ptlab_page_mapcount_add(d, 1)
        Integrity.badPageStateCount.add(1, ordering: .relaxed)
    }

    /// The page `entry` maps, if it maps one that can be counted. A user
    /// leaf naming a page table is a model bug too (the count would land in
    /// the table's owning-mm word), counted as a bad page state and not
    /// counted on the table.
    private func dataPage(_ entry: Entry) -> UnsafeMutablePointer<ptdesc>? {
        guard entry.isMapped, let d = allocator.descriptor(pfn: entry.pfn) else { return nil }
        guard ptlab_page_level(d) == PTLAB_PT_NONE.rawValue else {
            Integrity.badPageStateCount.add(1, ordering: .relaxed)
            return nil
        }
        return d
    }
}
