// Shmem/: a shmem file's page cache, shared by the mms that map it.
//
// What it models: the part of mm/shmem.c (a memfd_create file) that page-
// table freeing meets. The file's pages live only in its page cache
// (shmem_get_folio), and one or more mms map it MAP_SHARED. A folio is one
// small page, or one huge 2 MiB folio at an index that is a multiple of
// 512: from MADV_COLLAPSE, or from a fault that shmem_enabled allows.
//
// Why it matters to page tables:
//  - Zapping a shmem mapping clears PTEs but frees no data page: the cache
//    holds them (unmap_page_range hands only anonymous pages to the
//    gather). Its PTE tables count in VmPTE as anonymous ones do, and
//    PT_RECLAIM frees the ones MADV_DONTNEED emptied here too.
//  - The shared file is why pte_free_defer exists (seed 004). collapse_file
//    builds the huge folio in the cache (ShmemFile.lockForCollapse), every
//    mm that maps the range has those PTEs unmapped, and retract_page_tables takes
//    the PTE table from each of them holding only the rmap lock (i_mmap),
//    not their mmap locks. A pte_offset_map walker in another process may
//    be in that table with nothing but rcu_read_lock.
//  - A shmem huge PMD has no deposited PTE table on x86: splitting it clears
//    the PMD, and later faults build a PTE table or map the folio again.
//
// The rules:
//  - The cache is one lock, a LabMutex over index -> folio (the i_pages
//    lock's job). Two faults may race to fill an index: the one that loses
//    frees its fresh folio at once, since nothing mapped it.
//  - Each folio has a sleeping lock (PG_locked), kept under the same
//    LabMutex. A fault maps a folio only while it holds it locked
//    (shmem_get_folio, finish_fault), and waits for one someone else holds,
//    then looks the cache up again. collapse_file holds the range's old
//    folios and the huge one locked from before the old pages are unmapped
//    until after retract_page_tables, so no fault puts a PTE for the range
//    back in a table about to be retracted. Whoever holds a folio lock
//    takes no mmap lock; faults wait holding only their mmap read lock,
//    never a spinlock or an RCU read section.
//  - The small pages a collapse replaced go back only after every mm
//    mapping them has had its PTEs unmapped and its table retracted
//    (MM.madviseCollapse frees them; ShmemFile.lockForCollapse only hands
//    them over).
//  - The cache goes when the last mm that maps the file lets go of it
//    (mapped(by:), unmapped(by:), called by MM). The trace's `mmap shared`
//    closes its memfd at once, so mappings are the file's only references.
//  - Nothing here runs on a path that must not allocate (no RCU callback,
//    no deferred work): it may use Swift collections.
//
// Files:
//   ShmemFile.swift   the page cache, folio lookup, insert and lock,
//                     collapse_file's cache half, the mms that map the file
//                     (i_mmap, coarsely)
// Elsewhere: VMA.file and the shared fault (PageTable/Fault.swift), the
// retract (PageTable/Collapse.swift), shmem_enabled (PageTable/THPSettings.swift).

import Synchronization

/// A shmem inode, as memfd_create makes one: the page cache of a file that
/// lives only in memory, shared by every mapping of it. Its pages are the
/// allocator's real pages; a huge folio (from MADV_COLLAPSE, or a fault
/// where shmem_enabled allows one) stands for 512 small ones.
///
/// Unmapping a page of it frees nothing: the page cache holds it. The
/// cache goes when the last mm mapping the file lets go of it (the lab
/// closes the memfd right after mapping it, as the trace's `mmap shared`
/// does), which `MM` reports through `unmapped(by:)`.
public final class ShmemFile: @unchecked Sendable {
    /// One entry of the page cache: a small page, or a huge folio at an
    /// index that is a multiple of 512.
    public struct Folio: Sendable {
        public let page: Page
        public let huge: Bool
    }

    public let size: UInt64
    let allocator: PageAllocator
    private let cache = LabMutex(Cache())
    /// Wakes the sleepers in folio_lock when a folio is unlocked (the
    /// folio wait queue, one for the whole file here).
    private let folioUnlocked = EventCount()
    /// i_mmap, coarsely: the mms with a VMA on this file.
    private let mappers = LabMutex<[ObjectIdentifier: Unmanaged<MM>]>([:])

    /// The page cache (i_pages) and, under the same lock, PG_locked of the
    /// folios in it.
    private struct Cache {
        var folios: [UInt64: Folio] = [:]
        /// The folios someone holds locked, by the PFN of their first page.
        var locked: Set<UInt32> = []

        /// The folio holding page `index`: a huge one at its 512-aligned
        /// base, or a small one at `index`.
        func find(_ index: UInt64) -> Folio? {
            folios[index & ~511].flatMap { $0.huge ? $0 : nil } ?? folios[index]
        }

        /// Whether any folio is cached in the 512 pages from `base`: a huge
        /// folio there would overlap it.
        func holdsAny(from base: UInt64) -> Bool {
            folios.keys.contains { $0 >= base && $0 < base + 512 }
        }
    }

    /// What collapse_file's first half came to (`lockForCollapse`).
    enum CollapseLock {
        /// The huge folio is in the cache for the whole range, locked; the
        /// small folios it replaced, by index, are out of the cache and
        /// locked, still mapped wherever they were, their contents not yet
        /// copied.
        case locked(huge: Folio, old: [UInt64: Page])
        /// The range is a huge folio already (SCAN_PTE_MAPPED_HUGEPAGE).
        case huge
        /// Nothing of the range is cached any more: the file was let go
        /// meanwhile (SCAN_TRUNCATED).
        case truncated
        /// A small folio of the range is locked: a fault is mapping it
        /// (SCAN_PAGE_LOCK: collapse_file's folio_trylock failed).
        case pageLocked
    }

    public init(size: UInt64, allocator: PageAllocator) {
        self.size = size
        self.allocator = allocator
    }

    deinit { release() }

    /// The folio holding page `index`, if the cache has one (a look, with
    /// no folio lock: what it finds may be replaced at once).
    public func lookup(_ index: UInt64) -> Folio? {
        cache.withLock { $0.find(index) }
    }

    /// shmem_get_folio as the fault calls it: the folio for page `index`,
    /// locked, allocated zeroed if missing — huge if `huge` and the 512
    /// pages around it are all holes (a huge folio cannot overlap small
    /// ones), and small otherwise, or when no huge block can be had (the
    /// fallback the kernel counts in thp_file_fallback). The caller maps it
    /// and then unlocks it (`unlock`): a collapse that locks the folio
    /// knows no fault is between its lookup and its PTE.
    ///
    /// A folio someone else holds locked (a collapse of its range) is
    /// waited for — `contended` runs first, a test's race window — and the
    /// cache looked at again, since the folio may have left it meanwhile.
    /// `missed` runs when there was none, before the new one goes in
    /// (another). The caller holds its mmap read lock and no spinlock or
    /// RCU read section: the holder of a folio lock takes no mmap lock.
    func lockFolio(for index: UInt64, huge: Bool, contended: () -> Void = {},
                   missed: () -> Void = {}) throws(MMError) -> Folio {
        while true {
            if let found = lockCached(index, contended: contended) { return found }
            missed()
            let base = index & ~511
            if huge, cache.withLock({ !$0.holdsAny(from: base) }),
               let page = try? allocator.alloc(order: 9, node: .local, zero: true) {
                if let kept = insertLocked(Folio(page: page, huge: true), at: base) { return kept }
                continue
            }
            let page: Page
            do {
                page = try allocator.alloc(node: .local, zero: true)
            } catch {
                throw .outOfMemory(error)
            }
            if let kept = insertLocked(Folio(page: page, huge: false), at: index) { return kept }
        }
    }

    /// filemap_lock_folio: the folio caching page `index`, locked (waiting
    /// for it as `lockFolio(for:huge:)` does); nil when none is cached.
    func lockFolio(at index: UInt64) -> Folio? {
        lockCached(index, contended: {})
    }

    /// folio_unlock: wakes whoever waits for it.
    func unlock(_ folio: Folio) {
        cache.withLock { _ = $0.locked.remove(folio.page.pfn) }
        folioUnlocked.signal()
    }

    /// folio_lock on the folio caching page `index`, sleeping while another
    /// holds it, then looking again: nil when nothing is cached there.
    private func lockCached(_ index: UInt64, contended: () -> Void) -> Folio? {
        while true {
            let key = folioUnlocked.prepareWait()
            let (folio, busy) = cache.withLock { cache -> (Folio?, Bool) in
                guard let folio = cache.find(index) else { return (nil, false) }
                return (folio, !cache.locked.insert(folio.page.pfn).inserted)
            }
            guard busy else { return folio }
            contended()
            folioUnlocked.wait(key)
        }
    }

    /// Keep `folio`, locked, unless another thread cached one there first:
    /// then it is freed (nothing mapped it) and nil returned, to look again.
    /// A huge folio holds all 512 slots of its range (shmem_add_to_page_cache
    /// fails with EEXIST on any of them): one a collapse put there since the
    /// look keeps a small folio out of its range, which a fault would map
    /// behind the collapse's back into a table about to be retracted.
    private func insertLocked(_ folio: Folio, at index: UInt64) -> Folio? {
        let won = cache.withLock { cache -> Bool in
            if cache.find(index) != nil { return false }
            if folio.huge, cache.holdsAny(from: index) { return false }
            cache.folios[index] = folio
            cache.locked.insert(folio.page.pfn)
            return true
        }
        if won { return folio }
        PageTables.release(folio.page, allocator: allocator)
        return nil
    }

    /// collapse_file's page-cache half, up to the unmap: a huge folio,
    /// allocated zeroed (holes read as zero), goes into the cache for the
    /// 512 pages from `base`, locked, and the small folios it replaces
    /// come out, locked too. From here until `unlock(huge)`, a fault on
    /// the range waits, so once the caller has unmapped the old pages
    /// everywhere no PTE can map them again, nor any page of the range
    /// before retract_page_tables has run. A small folio already locked
    /// fails the collapse (the kernel's folio_trylock), as does a huge
    /// folio in the cache, taken under the lock too: another collapse may
    /// have put it there since the unlocked look, and taken for a small
    /// page it would be freed while a PMD maps it. An error when no huge
    /// block can be had (SCAN_ALLOC_HUGE_PAGE_FAIL). `beforeSwap` runs once
    /// the huge folio is had, before the cache is locked (a test's window).
    func lockForCollapse(at base: UInt64, beforeSwap: () -> Void = {}) throws(MMError) -> CollapseLock {
        if let present = lookup(base), present.huge { return .huge }
        let page: Page
        do {
            page = try allocator.alloc(order: 9, node: .local, zero: true)
        } catch {
            throw .outOfMemory(error)
        }
        beforeSwap()
        let huge = Folio(page: page, huge: true)
        let result = cache.withLock { cache -> CollapseLock in
            if let present = cache.folios[base], present.huge { return .huge }
            let old = (base..<base + 512).compactMap { index in cache.folios[index].map { (index, $0.page) } }
            if old.isEmpty { return .truncated }
            if old.contains(where: { cache.locked.contains($0.1.pfn) }) { return .pageLocked }
            for (index, small) in old {
                cache.folios[index] = nil
                cache.locked.insert(small.pfn)
            }
            cache.folios[base] = huge
            cache.locked.insert(page.pfn)
            return .locked(huge: huge, old: Dictionary(uniqueKeysWithValues: old))
        }
        if case .locked = result { return result }
        PageTables.release(page, allocator: allocator)
        return result
    }

    /// collapse_file's copy, once the old pages are mapped nowhere: each
    /// into its place in `huge`, so that no store made through a mapping
    /// of it is lost; then the old folios are unlocked (a fault that waited
    /// for one finds the huge folio instead). The caller frees them once
    /// every table that mapped them is retracted.
    func copy(_ old: [UInt64: Page], into huge: Folio) {
        let target = allocator.address(of: huge.page)
        for (index, small) in old {
            target.advanced(by: Int(index & 511) << 12).copyMemory(from: allocator.address(of: small), byteCount: 4096)
        }
        cache.withLock { cache in
            for small in old.values { cache.locked.remove(small.pfn) }
        }
        folioUnlocked.signal()
    }

    /// An mm now maps the file.
    func mapped(by mm: MM) {
        mappers.withLock { $0[ObjectIdentifier(mm)] = Unmanaged.passUnretained(mm) }
    }

    /// An mm has no VMA on the file any more; the last one to go takes the
    /// page cache with it.
    func unmapped(by mm: MM) {
        let last = mappers.withLock { m -> Bool in
            m[ObjectIdentifier(mm)] = nil
            return m.isEmpty
        }
        if last { release() }
    }

    /// The mms that map the file now (retract_page_tables walks them).
    var mappingMMs: [MM] { mappers.withLock { $0.values.map { $0.takeUnretainedValue() } } }

    /// Pages the cache holds, counting a huge folio as 512.
    public var cachedPages: Int { cache.withLock { $0.folios.values.reduce(0) { $0 + ($1.huge ? 512 : 1) } } }

    /// The page cache goes (truncate_inode_pages): once no folio of it is
    /// locked, as truncation locks each folio it takes out. A collapse
    /// still at work on the file holds its folios locked, and takes no
    /// mmap lock meanwhile, so the munmap that lets the file go waits for
    /// it instead of freeing the huge folio under its copy.
    private func release() {
        while true {
            let key = folioUnlocked.prepareWait()
            let all = cache.withLock { cache -> [Folio]? in
                guard cache.locked.isEmpty else { return nil }
                defer { cache.folios.removeAll() }
                return Array(cache.folios.values)
            }
            if let all {
                for folio in all { PageTables.release(folio.page, allocator: allocator) }
                return
            }
            folioUnlocked.wait(key)
        }
    }
}
