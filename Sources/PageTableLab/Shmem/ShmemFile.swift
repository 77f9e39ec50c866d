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
//    builds the huge folio in the cache (ShmemFile.collapse), every mm that
//    maps the range has those PTEs unmapped, and retract_page_tables takes
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
//  - The small pages a collapse replaced go back only after every mm
//    mapping them has had its PTEs unmapped and its table retracted
//    (MM.madviseCollapse frees them; ShmemFile.collapse only returns them).
//  - The cache goes when the last mm that maps the file lets go of it
//    (mapped(by:), unmapped(by:), called by MM). The trace's `mmap shared`
//    closes its memfd at once, so mappings are the file's only references.
//  - Nothing here runs on a path that must not allocate (no RCU callback,
//    no deferred work): it may use Swift collections.
//
// Files:
//   ShmemFile.swift   the page cache, folio lookup and insert, collapse_file's
//                     cache half, the mms that map the file (i_mmap, coarsely)
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
    private let cache = LabMutex<[UInt64: Folio]>([:])
    /// i_mmap, coarsely: the mms with a VMA on this file.
    private let mappers = LabMutex<[ObjectIdentifier: Unmanaged<MM>]>([:])

    public init(size: UInt64, allocator: PageAllocator) {
        self.size = size
        self.allocator = allocator
    }

    deinit { release() }

    /// The folio holding page `index`, if the cache has one.
    public func lookup(_ index: UInt64) -> Folio? {
        cache.withLock { $0[index & ~511].flatMap { $0.huge ? $0 : nil } ?? $0[index] }
    }

    /// shmem_get_folio: the folio for page `index`, allocated zeroed if
    /// missing — huge if `huge` and the 512 pages around it are all holes
    /// (a huge folio cannot overlap small ones), and small otherwise, or
    /// when no huge block can be had (the fallback the kernel counts in
    /// thp_file_fallback).
    func folio(for index: UInt64, huge: Bool) throws(MMError) -> Folio {
        if let found = lookup(index) { return found }
        let base = index & ~511
        if huge, cache.withLock({ cache in !cache.keys.contains { $0 >= base && $0 < base + 512 } }),
           let page = try? allocator.alloc(order: 9, node: .local, zero: true) {
            return insert(Folio(page: page, huge: true), at: base)
        }
        let page: Page
        do {
            page = try allocator.alloc(node: .local, zero: true)
        } catch {
            throw .outOfMemory(error)
        }
        return insert(Folio(page: page, huge: false), at: index)
    }

    /// Keep `folio` unless another thread cached one there first.
    private func insert(_ folio: Folio, at index: UInt64) -> Folio {
        let (kept, lost) = cache.withLock { cache -> (Folio, Bool) in
            if let present = cache[index] { return (present, true) }
            cache[index] = folio
            return (folio, false)
        }
        if lost { PageTables.release(folio.page, allocator: allocator) }
        return kept
    }

    /// collapse_file's page-cache half: one huge folio for the 512 pages
    /// from `base`, holding their contents (holes read as zero). Returns
    /// the small pages it replaced, which the caller frees once no page
    /// table maps them; nil when the range is a huge folio already, and an
    /// error when no huge block can be had (SCAN_ALLOC_HUGE_PAGE_FAIL).
    /// `beforeSwap` runs once the huge folio is had, before the cache is
    /// locked (a test's race window).
    func collapse(at base: UInt64, beforeSwap: () -> Void = {}) throws(MMError) -> [Page]? {
        if let present = lookup(base), present.huge { return nil }
        let huge: Page
        do {
            huge = try allocator.alloc(order: 9, node: .local, zero: true)
        } catch {
            throw .outOfMemory(error)
        }
        beforeSwap()
        let target = allocator.address(of: huge)
        let replaced: [Page]? = cache.withLock { cache in
            // Looked at again under the lock: another collapse of the range
            // may have swapped its huge folio in since the look above (the
            // kernel's collapse_file meets that large folio under the
            // xarray lock and gives up: SCAN_PTE_MAPPED_HUGEPAGE). Taken
            // for a small page here, it would be freed while a PMD maps it.
            if let present = cache[base], present.huge { return nil }
            var old: [Page] = []
            for index in base..<base + 512 {
                guard let small = cache.removeValue(forKey: index) else { continue }
                target.advanced(by: Int(index - base) << 12).copyMemory(from: allocator.address(of: small.page), byteCount: 4096)
                old.append(small.page)
            }
            cache[base] = Folio(page: huge, huge: true)
            return old
        }
        if replaced == nil { PageTables.release(huge, allocator: allocator) }
        return replaced
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
    public var cachedPages: Int { cache.withLock { $0.values.reduce(0) { $0 + ($1.huge ? 512 : 1) } } }

    private func release() {
        let all = cache.withLock { cache -> [Folio] in
            defer { cache.removeAll() }
            return Array(cache.values)
        }
        for folio in all { PageTables.release(folio.page, allocator: allocator) }
    }
}
