internal import CSupport
import Synchronization

/// A PASID-table entry as software programs it: the mm's PGD and domain.
struct PASIDTableEntry: Sendable {
    var root: UInt64
    var did: UInt16
    var mode: PagingMode
    /// ATS devices bound to this PASID: they need device-TLB invalidations.
    var devices: [DMADevice]
}

/// The translation half of the emulated VT-d unit: the PASID table and the
/// context entries software programs, the caches filled from them, and the
/// DMA walk through the CPU's page tables.
///
/// The walk does not use RCU: hardware cannot take a read lock. What keeps
/// it safe is only the kernel's promise to invalidate (and wait) before a
/// table is freed. When that promise is broken the walk is the detector: a
/// cached or walked frame that is no longer a live table of the level it
/// should be counts as a use-after-free, and an accessed/dirty update that
/// lands in it as a write-after-free (written for real, as the hardware
/// would: poison already has A and D set, so a freed page that was not
/// reused takes no write).
final class RemappingHardware: InvalidationTarget, @unchecked Sendable {
    let allocator: PageAllocator
    let counters: IOMMUCounters
    let caches = LabMutex(TranslationCaches())
    let pasidTable = LabMutex<[UInt32: PASIDTableEntry]>([:])
    /// Context entries: source ID → domain of each attached device.
    let contextTable = LabMutex<[UInt16: UInt16]>([:])
    /// The devices on the bus behind this unit, by source ID: where ATS
    /// invalidation requests go, attached or not.
    let devices = LabMutex<[UInt16: DMADevice]>([:])

    init(allocator: PageAllocator, counters: IOMMUCounters) {
        self.allocator = allocator
        self.counters = counters
    }

    // MARK: - invalidation (called by the queue hardware, in queue order)

    func invalidateContextCache(_ invalidation: ContextCacheInvalidation) {
        caches.withLock { $0.invalidate(invalidation) }
    }

    func invalidateIOTLB(_ invalidation: IOTLBInvalidation) {
        caches.withLock { $0.invalidate(invalidation) }
    }

    func invalidatePASIDIOTLB(_ invalidation: PASIDIOTLBInvalidation) {
        caches.withLock { $0.invalidate(invalidation) }
    }

    func invalidatePASIDCache(_ invalidation: PASIDCacheInvalidation) {
        caches.withLock { $0.invalidate(invalidation) }
    }

    func invalidateDeviceTLB(sid: UInt16, pasid: UInt32?, range: DeviceTLBRange) -> Bool {
        guard let device = devices.withLock({ $0[sid] }) else { return false }
        return device.invalidate(pasid: pasid, range: range)
    }

    /// Is device `sid` attached and still there (pci_device_is_present)?
    func isDevicePresent(sid: UInt16) -> Bool {
        devices.withLock { $0[sid]?.isPresent ?? false }
    }

    // MARK: - translation

    /// Translate for a device: its context entry (through the context
    /// cache), its own TLB if it has ATS, then the IOMMU.
    func translate(_ request: DMARequest, device: DMADevice) -> DMATranslation {
        let attached = caches.withLock { c -> Bool in
            if c.contexts[device.sid] != nil {
                counters.contextCacheHits.add(1, ordering: .relaxed)
                return true
            }
            counters.contextCacheMisses.add(1, ordering: .relaxed)
            guard let did = contextTable.withLock({ $0[device.sid] }) else { return false }
            c.contexts[device.sid] = did
            return true
        }
        guard attached else {
            counters.faults.add(1, ordering: .relaxed)
            return .fault(.deviceNotAttached(sid: device.sid))
        }
        if device.ats, let p = device.cachedTranslation(pasid: request.pasid, address: request.address, write: request.write) {
            counters.deviceTLBHits.add(1, ordering: .relaxed)
            return .translated(physical: p, level: .pte)
        }
        let result = translate(request)
        if device.ats, case .translated(let p, _) = result {
            device.cache(pasid: request.pasid, address: request.address, physical: p, writable: request.write)
        }
        return result
    }

    /// Translate one access of `request.pasid`: IOTLB, else the walk from
    /// the deepest paging-structure-cache hit, else from the PASID's root.
    /// Holds the cache lock throughout (see TranslationCaches).
    func translate(_ request: DMARequest) -> DMATranslation {
        let result = caches.withLock { walk(&$0, request) }
        switch result {
        case .translated: break
        case .fault: counters.faults.add(1, ordering: .relaxed)
        case .useAfterFree(let uaf):
            counters.useAfterFree.add(1, ordering: .relaxed)
            if uaf.source != .walk { counters.useAfterFreeFromCache.add(1, ordering: .relaxed) }
            if uaf.wroteAccessedDirty { counters.writeAfterFree.add(1, ordering: .relaxed) }
        }
        return result
    }

    private func walk(_ c: inout TranslationCaches, _ r: DMARequest) -> DMATranslation {
        var source = DMAUseAfterFree.Source.pasidCache
        let context: PASIDCacheEntry
        if let cached = c.pasids[r.pasid] {
            counters.pasidCacheHits.add(1, ordering: .relaxed)
            context = cached
        } else {
            counters.pasidCacheMisses.add(1, ordering: .relaxed)
            guard let entry = pasidTable.withLock({ $0[r.pasid] }) else { return .fault(.pasidNotBound(r.pasid)) }
            let generation = allocator.descriptor(pfn: entry.root).map { ptlab_page_generation($0) } ?? 0
            context = PASIDCacheEntry(did: entry.did, root: entry.root, rootGeneration: generation, mode: entry.mode)
            c.pasids[r.pasid] = context
            source = .walk
        }
        guard context.mode.isCanonical(r.address) else { return .fault(.nonCanonical(r.address)) }

        if let e = c.iotlb.lookup(pasid: r.pasid, address: r.address), e.did == context.did,
           !r.write || (e.writable && e.dirty) {
            counters.iotlbHits.add(1, ordering: .relaxed)
            return .translated(physical: e.pfn << 12 | (r.address & (e.bytes - 1)), level: e.level)
        }
        counters.iotlbMisses.add(1, ordering: .relaxed)
        counters.walks.add(1, ordering: .relaxed)

        let tables = context.mode.tables
        var i = 0
        var pfn = context.root
        var generation = context.rootGeneration
        if let hit = c.pagingStructures.lookupDeepest(pasid: r.pasid, address: r.address, shifts: context.mode.cachedShifts),
           hit.entry.did == context.did, let at = tables.firstIndex(where: { $0.shift == hit.shift }) {
            counters.pscHits.add(1, ordering: .relaxed)
            i = at + 1
            pfn = hit.entry.next
            generation = hit.entry.generation
            source = .pagingStructureCache
        }
        let kernelHalf = PagingMode.isKernelHalf(r.address)

        while true {
            let (level, shift) = tables[i]
            let live = isLiveTable(pfn: pfn, level: level, kernel: kernelHalf && i > 0, generation: generation)
            guard let page = allocator.address(pfn: pfn) else {
                return .fault(.badFrame(pfn: pfn, level: i > 0 ? tables[i - 1].level : level))
            }
            let slot = (page + (Int(r.address >> UInt64(shift)) & 511) * 8).assumingMemoryBound(to: UInt64.self)
            let entry = Entry(rawValue: ptlab_pte_read(slot))
            func useAfterFree(_ wrote: Bool) -> DMATranslation {
                .useAfterFree(DMAUseAfterFree(pfn: pfn, expected: level, source: source, wroteAccessedDirty: wrote))
            }
            guard entry.isPresent else { return live ? .fault(.notPresent(level: level)) : useAfterFree(false) }
            guard !r.write || entry.has(Entry.writable) else {
                return live ? .fault(.writeProtected(level: level)) : useAfterFree(false)
            }
            let leaf = level == .pte || (entry.has(Entry.huge) && (level == .pmd || level == .pud))
            var wrote = false
            if !entry.has(Entry.accessed) {
                ptlab_pte_or(slot, Entry.accessed.rawValue)
                counters.accessedBitsSet.add(1, ordering: .relaxed)
                wrote = true
            }
            if leaf, r.write, !entry.has(Entry.dirty) {
                ptlab_pte_or(slot, Entry.dirty.rawValue)
                counters.dirtyBitsSet.add(1, ordering: .relaxed)
                wrote = true
            }
            guard live else { return useAfterFree(wrote) }

            if leaf {
                let bytes = level.entrySpan
                let base = entry.pfn & ~((bytes >> 12) - 1)
                c.iotlb.fill(pasid: r.pasid, address: r.address, entry: IOTLBEntry(
                    did: context.did, pfn: base, level: level, writable: entry.has(Entry.writable),
                    dirty: entry.has(Entry.dirty) || r.write))
                return .translated(physical: base << 12 | (r.address & (bytes - 1)), level: level)
            }
            let next = entry.pfn
            guard let d = allocator.descriptor(pfn: next) else { return .fault(.badFrame(pfn: next, level: level)) }
            generation = ptlab_page_generation(d)
            c.pagingStructures.fill(pasid: r.pasid, address: r.address, shift: shift, entry: PagingStructureEntry(
                did: context.did, next: next, generation: generation))
            pfn = next
            source = .walk
            i += 1
        }
    }

    /// A live table of `level`: not yet freed (allocated, or unlinked and
    /// waiting on a deferred free, whose memory is still the table), that
    /// level, a kernel table where the kernel half is walked, and the
    /// generation it had when the IOMMU took its frame number. PG_table is
    /// not asked: before 6.14 the destructor ran at unlink, memory intact.
    private func isLiveTable(pfn: UInt64, level: Level, kernel: Bool, generation: UInt32) -> Bool {
        guard let d = allocator.descriptor(pfn: pfn) else { return false }
        let flags = ptlab_page_flags(d)
        let state = ptlab_page_state(d)
        return (state == PTLAB_PAGE_ALLOCATED.rawValue || state == PTLAB_PAGE_DEFERRED.rawValue)
            && ptlab_page_level(d) == UInt32(level.rawValue)
            && (!kernel || flags & PTLAB_PT_KERNEL != 0)
            && ptlab_page_generation(d) == generation
    }
}
