internal import CSupport
import Synchronization

/// How every PTE-level updater reaches its table (pte_offset_map_lock):
/// under rcu_read_lock, read the PMD entry (none or huge: nothing to map),
/// take the PTE table's split lock, then read the PMD again and compare
/// (pmd_same). If it changed, the table was unlinked meanwhile — reclaimed
/// by PT_RECLAIM, retracted by a collapse, moved by mremap — and the
/// updater looks again. RCU keeps the table's memory (and its lock) alive
/// between the read and the lock; the re-check is what keeps the updater
/// out of a table another updater under the same mmap read lock (or the
/// same VMA's read lock) has just taken away.
///
/// The `skipPMDRecheck` profile drops the re-check: an updater may then
/// change an unlinked table, and `staleTableWrites` counts each time one
/// did (the race scenario's unsafe mode, caught by that count).
extension MM {
    /// Run `body` on the PTE table under `pmdSlot`, locked, inside the RCU
    /// read section that found it (pte_offset_map_lock ... pte_unmap_unlock);
    /// nil when the PMD is none or a huge leaf now. `body` must not block on
    /// a grace period: other updaters may be spinning on this lock inside
    /// their own read sections.
    func withPTEOffsetMapLock<R>(_ pmdSlot: UnsafeMutablePointer<UInt64>, _ body: (Page) -> R) -> R? {
        RCU.read {
            while true {
                let pmd = Entry(rawValue: ptlab_pte_read(pmdSlot))
                guard pmd.isPresent, !pmd.isHugeLeaf, let d = allocator.descriptor(pfn: pmd.pfn) else { return nil }
                let table = Page(d)
                lockPTL(table)
                defer { ptlab_ptl_unlock(d) }
                if profile.skipPMDRecheck || ptlab_pte_read(pmdSlot) == pmd.rawValue { return body(table) }
            }
        }
    }

    /// After an updater changed entries of `table` under its lock: if the
    /// PMD no longer links it, the change went into a table another updater
    /// had unlinked (lost, and its pages leaked). Never with the re-check.
    func noteWrite(to table: Page, under pmdSlot: UnsafeMutablePointer<UInt64>) {
        let pmd = Entry(rawValue: ptlab_pte_read(pmdSlot))
        if !pmd.isPresent || pmd.isHugeLeaf || pmd.pfn != UInt64(table.pfn) {
            staleTableWrites.add(1, ordering: .relaxed)
        }
    }
}
