internal import CSupport

/// MADV_COLLAPSE (mm/khugepaged.c's madvise_collapse): every 2 MiB of the
/// range becomes a huge PMD, synchronously, whatever the THP sysfs
/// settings say (VM_NOHUGEPAGE still refuses).
///
/// Anonymous memory (collapse_huge_page): under the mmap *write* lock the
/// PMD is cleared and flushed (pmdp_collapse_flush), GUP-fast is waited out
/// (tlb_remove_table_sync_one), the small pages are copied into a huge
/// folio and freed, and the old PTE table is *deposited* for the huge PMD:
/// VmPTE does not move.
///
/// Shared memory (collapse_file, then collapse_pte_mapped_thp): the huge
/// folio is built in the page cache, the small pages are unmapped
/// everywhere, and the PTE table of every mapping of those pages is
/// retracted — cleared under the PMD and PTE locks, flushed, uncounted, and
/// freed with pte_free_defer (6.6+), since a pte_offset_map walker holding
/// no lock at all may still be inside it. The caller's own mapping then
/// gets a huge PMD. Before 6.6 the retract held each mm's mmap write lock
/// and freed after tlb_remove_table_sync_one.
extension MM {
    /// What one 2 MiB of a collapse came to (enum scan_result, the part the
    /// lab reaches).
    enum CollapseResult: Equatable {
        case succeeded
        /// Already a huge PMD (SCAN_PMD_MAPPED): counts as done.
        case pmdMapped
        /// No PTE table (SCAN_PMD_NULL).
        case pmdNull
        /// No present, writable page to keep (SCAN_PAGE_RO).
        case pageReadOnly
        /// Nothing in the page cache there (shmem).
        case pageNull
        /// Small pages in the page cache there, not a huge folio
        /// (SCAN_PAGE_COMPOUND).
        case pageCompound
        /// A small folio of the range is locked: a fault is mapping it
        /// (SCAN_PAGE_LOCK: EAGAIN, and madvise_collapse goes on).
        case pageLocked
        /// The file's pages there went meanwhile (SCAN_TRUNCATED).
        case truncated
        /// No huge page to be had (SCAN_ALLOC_HUGE_PAGE_FAIL: ENOMEM).
        case allocFailed
        /// The VMA cannot take a huge PMD there.
        case vmaCheck
        /// collapse_pte_mapped_thp gave up (SCAN_FAIL): the PTE table there
        /// maps a page that is not the huge folio's, or went meanwhile; or
        /// the PMD was filled again before the huge PMD could go in.
        case fail
        /// A PTE there is not present: a guard marker in the table
        /// collapse_pte_mapped_thp would retract (SCAN_PTE_NON_PRESENT,
        /// which madvise_collapse goes on past).
        case pteNonPresent
        /// A guard marker in the PTE table: the scan counts it as a swap
        /// entry, and the swap-in faults SIGSEGV on it (SCAN_FAIL, which
        /// ends the call, up to 6.18). 6.19 stops at the scan instead
        /// (SCAN_PTE_NON_PRESENT), which madvise_collapse goes on past to
        /// the next 2 MiB. The guard stays either way.
        case guardMarker

        /// madvise_collapse goes on past the results it lists as worth
        /// going on from (SCAN_PMD_NULL, SCAN_PAGE_RO, SCAN_PAGE_NULL,
        /// SCAN_PAGE_LOCK, SCAN_PAGE_COMPOUND, ...) and stops at any other,
        /// and madvise with it.
        var endsTheCall: Bool {
            switch self {
            case .allocFailed, .vmaCheck, .fail, .truncated, .guardMarker: true
            default: false
            }
        }

        var errno: CollapseErrno {
            switch self {
            case .allocFailed: .enomem
            case .pageLocked: .eagain
            default: .einval
            }
        }

        var why: String {
            switch self {
            case .succeeded, .pmdMapped: "collapsed"
            case .pmdNull: "no page table maps it (SCAN_PMD_NULL)"
            case .pageReadOnly: "no present writable page to collapse (SCAN_PAGE_RO)"
            case .pageNull: "the file has no page there (SCAN_PAGE_NULL)"
            case .pageCompound: "the file has no huge page there (SCAN_PAGE_COMPOUND)"
            case .pageLocked: "a page there is locked (SCAN_PAGE_LOCK)"
            case .truncated: "the file's pages there went meanwhile (SCAN_TRUNCATED)"
            case .allocFailed: "no huge page could be allocated (SCAN_ALLOC_HUGE_PAGE_FAIL)"
            case .vmaCheck: "the mapping cannot hold a huge PMD there (SCAN_VMA_CHECK)"
            case .fail: "a page table there maps pages other than the huge page's, or came back (SCAN_FAIL)"
            case .guardMarker: "a guard marker there, which the swap-in faults on (SCAN_FAIL)"
            case .pteNonPresent: "a guard marker in the page table there (SCAN_PTE_NON_PRESENT)"
            }
        }
    }

    /// madvise(MADV_COLLAPSE) over [address, address + length): each VMA in
    /// turn, each whole 2 MiB inside it; an error when any was not
    /// collapsed, with the errno of the last failure after doing the rest,
    /// or of the first that ends the call (CollapseResult.endsTheCall), as
    /// the kernel does.
    public func madviseCollapse(address: UInt64, length: UInt64) throws(MMError) {
        try validate("madvise", address, length)
        let end = address + length
        let slices = mmapLock.withReadLock { vmaTree.withLock { $0.clipped(address, end) } }
        var lastFail: (UInt64, CollapseResult)?
        for slice in slices {
            guard !slice.flags.contains(.noHugepage), profile.thp.shmemEnabled != .deny || slice.isAnonymous else {
                throw .collapseRefused(address: slice.start, errno: .einval, why: "the mapping has VM_NOHUGEPAGE")
            }
            var at = (slice.start + Self.pmdSize - 1) & ~(Self.pmdSize - 1)
            while at + Self.pmdSize <= slice.end {
                let result = slice.isAnonymous ? collapseAnonymous(at) : collapseShmem(at)
                if result != .succeeded && result != .pmdMapped {
                    if result.endsTheCall { throw .collapseRefused(address: at, errno: result.errno, why: result.why) }
                    lastFail = (at, result)
                }
                at += Self.pmdSize
            }
        }
        if let (at, result) = lastFail { throw .collapseRefused(address: at, errno: result.errno, why: result.why) }
        let hole = mmapLock.withReadLock { vmaTree.withLock { $0.covers(address, end) ? nil : firstHole($0, address, end) } }
        if let hole { throw .notMapped(address: hole) }
    }

    /// The VMA for a collapse at `at` still fits it (hugepage_vma_revalidate).
    private func revalidate(_ at: UInt64, anonymous: Bool) -> VMA? {
        guard let vma = vmaTree.withLock({ $0.find(at) }), vma.isAnonymous == anonymous,
              !vma.flags.contains(.noHugepage), vma.suitsHugePMD(at: at) else { return nil }
        return vma
    }

    // MARK: - anonymous

    /// collapse_huge_page for the 2 MiB at `at`: the mmap write lock and
    /// the VMA's (vma_start_write), then the PMD checked
    /// (check_pmd_still_valid), and the anon_vma write lock for the copy.
    /// The `collapseChecksBeforeVMAWrite` profile checks the PMD before
    /// taking the VMA's lock, as 6.17-rc1 did (fixed in -rc2, "mm: fix the
    /// race between collapse and PT_RECLAIM under per-vma lock"): a
    /// MADV_DONTNEED holding that VMA's lock alone may reclaim the PTE table
    /// in between, and vma_start_write only waits for it to finish.
    private func collapseAnonymous(_ at: UInt64) -> CollapseResult {
        let range = at..<at + Self.pmdSize
        guard profile.collapseChecksBeforeVMAWrite else {
            return withWriteLock(vmasOf: [range], merging: .none) {
                checkPMDStillValid(at).then { slot, pmdTable in
                    raceWindow(.collapseChecked, at)
                    return rmapLock.withWriteLock { collapseHugePage(at, slot, in: pmdTable) }
                }
            }
        }
        return withWriteLock(vmasOf: [], merging: .none) {
            checkPMDStillValid(at).then { slot, pmdTable in
                raceWindow(.collapseChecked, at)
                vmaStartWrite([range], merging: .none)
                return rmapLock.withWriteLock { collapseHugePage(at, slot, in: pmdTable) }
            }
        }
    }

    /// What hugepage_vma_revalidate and check_pmd_still_valid found.
    private enum PMDCheck {
        /// The slot that links the PTE table to collapse, in its PMD table.
        case valid(UnsafeMutablePointer<UInt64>, in: Page)
        /// Nothing to collapse: the result for this 2 MiB.
        case done(CollapseResult)

        func then(_ collapse: (UnsafeMutablePointer<UInt64>, Page) -> CollapseResult) -> CollapseResult {
            switch self {
            case .valid(let slot, let pmdTable): collapse(slot, pmdTable)
            case .done(let result): result
            }
        }
    }

    private func checkPMDStillValid(_ at: UInt64) -> PMDCheck {
        guard revalidate(at, anonymous: true) != nil else { return .done(.vmaCheck) }
        guard let (pmdTable, slot) = findPMD(at) else { return .done(.pmdNull) }
        let pmd = Entry(rawValue: ptlab_pte_read(slot))
        if pmd.isHugeLeaf { return .done(.pmdMapped) }
        guard pmd.isPresent else { return .done(.pmdNull) }
        return .valid(slot, in: pmdTable)
    }

    /// The collapse itself, from pmdp_collapse_flush on, which reads the
    /// PMD again. Only a check made before vma_start_write can find it
    /// changed here: a DONTNEED reclaimed the table, or a fault then put a
    /// huge PMD there. The kernel went on to put back the none entry's
    /// page 0 as the PTE table, and the next zap there crashed taking its
    /// lock (or flushed a huge PMD as a table's); the model counts a stale
    /// table write and stops.
    private func collapseHugePage(_ at: UInt64, _ slot: UnsafeMutablePointer<UInt64>, in pmdTable: Page) -> CollapseResult {
        let pmd = Entry(rawValue: ptlab_pte_read(slot))
        guard pmd.isPresent, !pmd.isHugeLeaf, let d = allocator.descriptor(pfn: pmd.pfn) else {
            staleTableWrites.add(1, ordering: .relaxed)
            return .pmdNull
        }
        let table = Page(d)
        let ptes = allocator.address(of: table).assumingMemoryBound(to: UInt64.self)
        guard (0..<512).contains(where: { Entry(rawValue: ptlab_pte_read(ptes + $0)).has(Entry.writable) }) else {
            return .pageReadOnly
        }
        guard !(0..<512).contains(where: { Entry(rawValue: ptlab_pte_read(ptes + $0)).isGuardMarker }) else { return .guardMarker }
        guard let folio = try? allocator.alloc(order: 9, node: tableNode, zero: true) else { return .allocFailed }
        // pmdp_collapse_flush under the PMD lock (PTE lock nested).
        lockPTL(pmdTable)
        lockPTL(table)
        ptlab_pte_write(slot, 0)
        ptlab_ptl_unlock(table.desc)
        ptlab_ptl_unlock(pmdTable.desc)
        tlb.flush()
        invalidateSecondaryTLBs(start: at, end: at + Self.pmdSize)
        tlb.syncOne()
        // __collapse_huge_page_copy: each small page into the folio, then freed.
        let target = allocator.address(of: folio)
        for i in 0..<512 {
            let e = Entry(rawValue: ptlab_pte_xchg(ptes + i, 0))
            removeRmap(e)
            guard e.isMapped, let small = allocator.descriptor(pfn: e.pfn) else { continue }
            (target + i << 12).copyMemory(from: allocator.address(of: Page(small)), byteCount: 4096)
            PageTables.release(Page(small), allocator: allocator)
        }
        lockPTL(pmdTable)
        deposit(table, under: pmdTable)
        setLeaf(slot, Self.hugeEntry(folio, writable: true), new: true)
        ptlab_ptl_unlock(pmdTable.desc)
        thpEvents.collapseAlloc.add(1, ordering: .relaxed)
        return .succeeded
    }

    // MARK: - shared memory

    /// hpage_collapse_scan_file + collapse_file, then collapse_pte_mapped_thp
    /// for this mm, for the 2 MiB at `at`.
    ///
    /// collapse_file's order is what makes the retract safe: the huge
    /// folio goes into the page cache locked, with the old small folios
    /// locked (ShmemFile.lockForCollapse), so faults on the range wait;
    /// the old pages are unmapped from every mapping before their contents
    /// are copied, so no store made through a mapping is lost; and the
    /// huge folio stays locked until every mapper's table is retracted, so
    /// those tables hold nothing of the range when they go.
    private func collapseShmem(_ at: UInt64) -> CollapseResult {
        guard let vma = mmapLock.withReadLock({ revalidate(at, anonymous: false) }), let file = vma.file else {
            return .vmaCheck
        }
        let base = vma.pgoff(at: at)
        if file.lookup(base)?.huge != true {
            guard (base..<base + 512).contains(where: { file.lookup($0) != nil }) else { return .pageNull }
            let locked: ShmemFile.CollapseLock
            do {
                locked = try file.lockForCollapse(at: base) { raceWindow(.collapseFileBeforeSwap, at) }
            } catch {
                return .allocFailed
            }
            switch locked {
            case .huge:
                break
            case .truncated:
                return .truncated
            case .pageLocked:
                return .pageLocked
            case .locked(let huge, let old):
                thpEvents.collapseAlloc.add(1, ordering: .relaxed)
                raceWindow(.collapseFileBeforeUnmap, at)
                for mm in file.mappingMMs { mm.unmapFilePages(file, base) }
                file.copy(old, into: huge)
                raceWindow(.collapseFileBeforeRetract, at)
                for mm in file.mappingMMs { mm.retractPageTables(file, base, target: (self, at)) }
                file.unlock(huge)
                for page in old.values { PageTables.release(page, allocator: allocator) }
            }
        }
        raceWindow(.collapseMmapUnlocked, at)
        return collapsePTEMappedTHP(at)
    }

    /// try_to_unmap of the range's old folios, this mm's share
    /// (unmap_mapping_pages for the 512 file pages from `base`): their PTEs
    /// in every VMA of this mm that maps them are cleared (the tables
    /// stay). Found as retract_page_tables finds them, through the rmap
    /// lock (i_mmap_lock_read), not this mm's mmap lock: a fault of this mm
    /// may hold that for read while it waits for a folio the collapse has
    /// locked, with a writer queued behind it that would keep the collapse
    /// from taking it for read too.
    func unmapFilePages(_ file: ShmemFile, _ base: UInt64) {
        rmapLock.withReadLock {
            for vma in fileRmap(file) {
                let first = max(vma.start, vma.start &+ (base &- vma.pgoff) << 12)
                let last = min(vma.end, vma.start &+ (base + 512 &- vma.pgoff) << 12)
                guard base + 512 > vma.pgoff, base < vma.pgoff + vma.length >> 12, first < last else { continue }
                let tlb = MMUGather(mm: self)
                unmapPageRange(tlb, vma, first, last, .none)
                tlb.finish()
            }
        }
    }

    /// retract_page_tables, this mm's share: every VMA mapping file page
    /// `base` with a whole 2 MiB a huge PMD could map loses the PTE table
    /// there. Since 6.6 it takes no mmap lock: the rmap lock
    /// (i_mmap_lock_read) keeps free_pgtables from tearing down a range
    /// still linked, and the PMD and PTE locks serialise with the other
    /// updaters; RCU covers the walkers still inside the table. Before 6.6
    /// (a policy that `takesMMapWriteLock`) each retract trylocks the mm's
    /// mmap write lock, since the huge folio's lock is held and a fault
    /// holding the mmap lock may be waiting for it; where another holds
    /// the lock the table stays (the kernel queues it for khugepaged,
    /// khugepaged_add_pte_mapped_thp, which the lab does not run). Before
    /// 6.6 MADV_COLLAPSE retracts only its `target` mapping, the mm and
    /// address it collapses at ("it's not MADV_COLLAPSE's job to collapse
    /// other mappings - let khugepaged take care of them later"); since 6.6
    /// every mapping's table goes.
    func retractPageTables(_ file: ShmemFile, _ base: UInt64, target: (mm: MM, at: UInt64)) {
        let exclusive = profile.collapseFree.takesMMapWriteLock
        rmapLock.withReadLock {
            // A VMA with an anon_vma is left alone: here, one with guard
            // markers (Guard.swift), whose table the retract would free
            // with them.
            for vma in fileRmap(file) where base >= vma.pgoff && vma.anonVMA == 0 {
                let at = vma.start &+ (base - vma.pgoff) << 12
                guard vma.contains(at), vma.suitsHugePMD(at: at), rmap.withLock({ $0.contains(at) }) else { continue }
                guard exclusive else {
                    retract(at)
                    continue
                }
                guard target.mm === self && target.at == at else { continue }
                guard tryWriteLock(vmasOf: at..<at + Self.pmdSize) else { continue }
                retract(at)
                writeUnlock()
            }
        }
    }

    /// Clear the PMD at `at` if it maps a PTE table, and free that table the
    /// profile's way. The entry is read under the PMD lock, which every
    /// updater that unlinks a PTE table holds. True when a table went.
    ///
    /// With `folio`, collapse_pte_mapped_thp's steps 1, 2 and 4: under the
    /// PTE lock every entry left in the table must map the page of `folio`
    /// at its own index, or be none; those are cleared, then the PMD. An
    /// entry mapping any other page (a uprobe's or a debugger's copy, a
    /// fault that raced the collapse) keeps the table where it is, and so
    /// does a PMD that no longer maps a table: false, and nothing freed.
    /// (The kernel checks under the PTE lock alone first, then again as it
    /// clears under both; here both locks are held throughout.)
    @discardableResult
    private func retract(_ at: UInt64, mapping folio: Page? = nil) -> Retract {
        guard let (pmdTable, slot) = findPMD(at) else { return .kept }
        lockPTL(pmdTable)
        let pmd = Entry(rawValue: ptlab_pte_read(slot))
        guard pmd.isPresent, !pmd.isHugeLeaf, let d = allocator.descriptor(pfn: pmd.pfn) else {
            ptlab_ptl_unlock(pmdTable.desc)
            return .kept
        }
        let table = Page(d)
        lockPTL(table)
        if let folio {
            let ptes = allocator.address(of: table).assumingMemoryBound(to: UInt64.self)
            // The first entry that is neither none nor the folio's page at
            // its index decides, as the kernel's scan meets it.
            for i in 0..<512 {
                let e = Entry(rawValue: ptlab_pte_read(ptes + i))
                guard !e.isNone, !(e.isMapped && e.pfn == UInt64(folio.pfn) + UInt64(i)) else { continue }
                ptlab_ptl_unlock(table.desc)
                ptlab_ptl_unlock(pmdTable.desc)
                return e.isMapped ? .kept : .nonPresent
            }
            for i in 0..<512 { removeRmap(Entry(rawValue: ptlab_pte_xchg(ptes + i, 0))) }
        }
        // pmdp_collapse_flush: clear the PMD and flush the range.
        ptlab_pte_write(slot, 0)
        tlb.flush()
        invalidateSecondaryTLBs(start: at, end: at + Self.pmdSize)
        ptlab_ptl_unlock(table.desc)
        ptlab_ptl_unlock(pmdTable.desc)
        accountTable(.pte, -1)
        profile.collapseFree.free(table, mm: self)
        return .retracted
    }

    /// What `retract` did.
    private enum Retract {
        case retracted
        /// The table stays: no table there, or one mapping other pages.
        case kept
        /// The table stays: an entry in it is not present (a guard marker).
        case nonPresent
    }

    /// collapse_pte_mapped_thp with install_pmd: the huge folio now in the
    /// page cache gets a PMD in this mm, after any PTE table still there
    /// is retracted, all under the folio's lock, as faults map it.
    ///
    /// madvise_collapse dropped the mmap lock for collapse_file and takes
    /// it again for this, so the VMA is looked up again and the folio taken
    /// through the file that VMA maps now, at its offset there
    /// (vma->vm_file->f_mapping, linear_page_index): a munmap and an mmap
    /// meanwhile may have put another file there, and the collapsed file's
    /// folio mapped over it would be freed with that file's page cache
    /// while still mapped.
    ///
    /// Under the mmap read lock since 6.6; before, madvise_collapse took the
    /// write lock for it (a policy that `takesMMapWriteLock`).
    private func collapsePTEMappedTHP(_ at: UInt64) -> CollapseResult {
        profile.collapseFree.takesMMapWriteLock
            ? withWriteLock(vmasOf: [at..<at + Self.pmdSize], merging: .none) { collapsePTEMappedTHPLocked(at) }
            : mmapLock.withReadLock { collapsePTEMappedTHPLocked(at) }
    }

    private func collapsePTEMappedTHPLocked(_ at: UInt64) -> CollapseResult {
        guard let vma = revalidate(at, anonymous: false), let file = vma.file else { return .vmaCheck }
        let pmd = findPMD(at)
        if let (_, slot) = pmd, Entry(rawValue: ptlab_pte_read(slot)).isHugeLeaf { return .pmdMapped }
        // filemap_lock_folio: a collapse_file still at work on the
        // range holds it until its contents are in and every other
        // mapper's table is retracted.
        guard let folio = file.lockFolio(at: vma.pgoff(at: at)) else { return .pageNull }
        defer { file.unlock(folio) }
        guard folio.huge else { return .pageCompound }
        guard let (pmdTable, slot) = pmd else { return .pmdNull }
        // find_pmd_or_thp_or_none again, now that the folio is had.
        let now = Entry(rawValue: ptlab_pte_read(slot))
        if now.isHugeLeaf { return .pmdMapped }
        if !now.isNone {
            switch retract(at, mapping: folio.page) {
            case .retracted: break
            case .kept: return .fail
            case .nonPresent: return .pteNonPresent
            }
        }
        raceWindow(.collapseBeforeInstall, at)
        // set_huge_pmd: do_set_pmd maps the folio only where the PMD is
        // still none under the PMD lock, and fails otherwise (SCAN_FAIL,
        // not success): what a fault put there meanwhile stays. It is not
        // a write fault, so the entry has the VMA's protection
        // (mk_huge_pmd with vm_page_prot): read-only or PROT_NONE where
        // mprotect made the range so.
        lockPTL(pmdTable)
        let installed = ptlab_pte_read(slot) == 0
        if installed {
            setLeaf(slot, Self.protected(Self.hugeEntry(folio.page, writable: true), Protection(vma.flags)))
        }
        ptlab_ptl_unlock(pmdTable.desc)
        return installed ? .succeeded : .fail
    }

    /// The PMD table, the PMD entry and the PTE table mapping `address`.
    func findPTETable(_ address: UInt64) -> (Page, UnsafeMutablePointer<UInt64>, Page)? {
        guard let (pmdTable, slot) = findPMD(address) else { return nil }
        let e = Entry(rawValue: ptlab_pte_read(slot))
        guard e.isPresent, !e.isHugeLeaf, let d = allocator.descriptor(pfn: e.pfn) else { return nil }
        return (pmdTable, slot, Page(d))
    }
}
