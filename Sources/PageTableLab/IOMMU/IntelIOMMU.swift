// IOMMU/: an emulated Intel VT-d remapping unit, its queued-invalidation
// driver, and SVA.
//
// What it models: the hardware side of queued invalidation as the VT-d
// specification describes it (the ring, IQA/IQH/IQT, descriptor types 1-8,
// IQE/ITE/ICE), and Linux's side of it: drivers/iommu/intel/dmar.c
// (struct q_inval, qi_submit_sync, qi_check_fault), iommu.h and cache.c
// (descriptor layouts, qi_batch, cache_tag_flush_range,
// calculate_psi_aligned_address), svm.c (intel_arch_invalidate_secondary_tlbs,
// intel_mm_release),
// pasid.c (intel_pasid_tear_down_entry), and drivers/iommu/iommu-sva.c
// (iommu_sva_bind_device, and 6.19's iommu_sva_invalidate_kva_range). QEMU's
// intel-iommu stops short of what the SVA bug needs: it runs the queue
// synchronously and has no paging-structure cache.
//
// How the pieces fit. Software writes descriptors into a ring of allocator
// pages and moves IQT; a hardware thread fetches in order, executes each
// against the IOTLB, the paging-structure caches (PML5E..PDE), the PASID and
// context caches and the devices' ATS TLBs, writes wait status words and
// moves IQH. DMA translations go through those caches, else walk the bound
// mm's own page tables from the root or the deepest cached entry. Hardware
// takes no read lock and answers no IPI, so the walk is also the detector:
// a cached or walked frame that is no longer a live table of the expected
// level and generation is a use-after-free, and an A/D write into it a
// write-after-free. An mm reaches the IOMMU only through its mmu notifier:
// SVA.bind registers an SVABond, which turns each TLB flush of the mm into
// cache_tag_flush_range's descriptors and waits for them. An mm that exits
// bound releases the bond first (exit_mmap's mmu_notifier_release), which
// tears the PASID entry down before any table goes: the teardown's own
// flushes reach no notifier.
//
// The rules:
//  - qi_submit_sync allocates nothing (the kernel-table free's work calls
//    it): count + 2 free slots, the descriptors, a wait of its own, IQT,
//    poll. Up to 16 descriptors share one wait (QIBatch, as qi_batch).
//  - A slot is reclaimed only after its owner let it go (QI_FREE), never on
//    another submitter's say (Linux before 3cf74230c139 did).
//  - IH = 1 keeps paging-structure entries, which is legal only when no
//    table was freed. The notifier sends IH = 0 (sva_notifier_ih=linux);
//    leaf-only exists to show what breaks.
//  - A completed invalidation means no translation begun before it still
//    uses what it dropped: a DMA walk holds the cache lock from lookup to fill.
//  - Errors are returned, never a hang: qi_driver=linux runs Linux's
//    qi_check_fault step for step and returns QILockup where Linux would spin.
//
// Files:
//   IntelIOMMU.swift         struct intel_iommu: bring-up, registers, qi_submit_sync, PASIDs
//   QueuedInvalidation.swift struct q_inval: ring, status words, q_lock, post and reclaim
//   QIRobustDriver.swift     the lab's polling and fault handling (qi_driver=robust)
//   QILinuxDriver.swift      Linux's qi_submit_sync and qi_check_fault; QILockup.swift
//   InvalidationQueueHardware.swift   the unit: registers, fetch and execute thread
//   InvalidationDescriptor.swift, DescriptorEncoding.swift, DescriptorDecoding.swift
//                            types 1-8, their fields, reserved bits and IQE reasons
//   DescriptorReport.swift   `ptlab iommu decode`
//   DMARRegister.swift, QIError.swift, QIFaultInjection.swift, QIBatch.swift, QIDriver.swift
//   RemappingHardware.swift  PASID table, context entries, the DMA walk and its detector
//   TranslationCaches.swift, IOTLB.swift, PagingStructureCache.swift, PagingMode.swift
//   DMADevice.swift, DMATranslation.swift, DMAWalkers.swift   ATS devices, requests, threads
//   SVA.swift                iommu-sva binding, SVABond, iommu_sva_invalidate_kva_range
//   SVAInvalidation.swift    intel_arch_invalidate_secondary_tlbs, cache_tag_flush_range
//   EventCount.swift, IOMMUCounters.swift, IOMMUError.swift

import Histogram
import Synchronization

/// One emulated VT-d remapping unit (struct intel_iommu) with its driver:
/// the queued-invalidation hardware and its thread, the translation caches
/// and DMA walk, and the kernel-side queue (qi_submit_sync).
///
/// Bring-up allocates the ring and status words from the lab's allocator,
/// powers the hardware on and enables queued invalidation; `shutdown`
/// drains, disables, powers off and gives the pages back.
public final class IntelIOMMU: @unchecked Sendable {
    public struct Parameters: Sendable, Equatable, Codable {
        /// IQA.DW. Scalable mode (PASID-granular descriptors, SVA) needs 256.
        public var descriptorWidth: DescriptorWidth = .bits256
        /// IQA.QS: the ring is 2^QS pages. nil: 256 slots, Linux's QI_LENGTH.
        public var queueSizeOrder: Int?
        /// Capability MAMV: the largest address mask of a type-2
        /// page-selective IOTLB flush (PASID-IOTLB flushes take any).
        public var maxAddressMask: UInt8 = 18
        /// Node of the ring and status words; nil: the caller's node.
        public var node: Int?
        /// Whose qi_submit_sync polls the queue (module parameter qi_driver).
        public var driver: QIDriver = .robust
        /// The invalidation hint the SVA mm notifier sends (module parameter
        /// sva_notifier_ih).
        public var notifierHint: SVANotifierHint = .linux
        /// What the SVA notifier's release does at exit_mmap (module
        /// parameter sva_mm_release).
        public var mmRelease: SVAMMRelease = .teardown

        public init() {}
    }

    public let parameters: Parameters
    public let counters = IOMMUCounters()
    let remapping: RemappingHardware
    let hardware: InvalidationQueueHardware
    let queue: QueuedInvalidation
    private let down = Atomic<Bool>(false)
    /// PASID entries cleared whose flush failed (unbindPASID).
    private let unflushedTeardowns = LabMutex<[UInt32: PASIDTableEntry]>([:])

    /// `interruptHandler` is the invalidation-completion interrupt (a wait
    /// descriptor with IF = 1). It runs on the hardware thread, like a hard
    /// IRQ: it must not submit to the queue (the hardware would wait for
    /// itself).
    public init(allocator: PageAllocator, parameters: Parameters = Parameters(),
                interruptHandler: (@Sendable () -> Void)? = nil) throws(IOMMUError) {
        let order = parameters.queueSizeOrder ?? parameters.descriptorWidth.rawValue
        guard (0...7).contains(order) else { throw .invalidParameter("queue_size_order \(order) is outside 0...7") }
        guard parameters.maxAddressMask <= 63 else {
            throw .invalidParameter("max_address_mask \(parameters.maxAddressMask) is outside 0...63")
        }
        self.parameters = parameters
        remapping = RemappingHardware(allocator: allocator, counters: counters)
        hardware = InvalidationQueueHardware(
            allocator: allocator, target: remapping, counters: counters,
            maxAddressMask: parameters.maxAddressMask, interruptHandler: interruptHandler)
        let remapping = self.remapping
        do {
            queue = try QueuedInvalidation(
                hardware: hardware, width: parameters.descriptorWidth, queueSizeOrder: order,
                node: parameters.node.map { .node($0) } ?? .local, driver: parameters.driver,
                counters: counters, isDevicePresent: { remapping.isDevicePresent(sid: $0) })
        } catch {
            throw .allocation(error)
        }
        hardware.start()
        queue.enable()
    }

    /// Drain and disable the queue, stop the hardware thread, free the ring.
    /// Returns the descriptors left unprocessed (non-zero only when the
    /// queue was stopped on an error nobody cleared). Idempotent.
    @discardableResult
    public func shutdown() -> Int {
        guard !down.exchange(true, ordering: .acquiringAndReleasing) else { return 0 }
        hardware.injection.resumeFetching()
        let left = queue.disable()
        hardware.stop()
        queue.release()
        return left
    }

    deinit { shutdown() }

    // MARK: - registers and faults

    public func read(_ register: DMARRegister) -> UInt64 { hardware.read(register) }

    /// Write a register as software would (writel/dmar_writeq). For tools
    /// and tests that drive the queue by hand; the driver below does it right.
    public func write(_ register: DMARRegister, _ value: UInt64) throws(DMARRegisterError) {
        try hardware.write(register, value)
    }

    public var errorRecord: QIErrorRecord { hardware.errorRecord }
    public var faultInjection: QIFaultInjection { hardware.injection }

    /// QI_LENGTH: slots in the ring.
    public var queueLength: Int { queue.entries }
    public var freeSlots: Int { queue.freeSlots }
    /// Physical address of ring slot `index` (IQA base + index << 4|5).
    public func slotAddress(_ index: Int) -> UInt64 {
        UInt64(queue.ring.pfn) << 12 + UInt64(index << queue.width.shift)
    }

    /// dmar_enable_qi / dmar_disable_qi, for tests of the protocol.
    public func enableQueuedInvalidation() { queue.enable() }
    @discardableResult
    public func disableQueuedInvalidation() -> Int { queue.disable() }

    // MARK: - qi_submit_sync

    /// Submit descriptors with one wait and return when the hardware has
    /// executed them, as Linux's qi_submit_sync. Safe from any number of
    /// threads; allocation-free.
    public func qiSubmitSync(_ descriptors: UnsafeBufferPointer<RawDescriptor>) throws(QIError) {
        try queue.submitSync(descriptors)
    }

    public func qiSubmitSync(_ descriptors: [RawDescriptor]) throws(QIError) {
        try descriptors.withUnsafeBufferPointer { (buffer) throws(QIError) in try queue.submitSync(buffer) }
    }

    public func qiSubmitSync(_ descriptors: [InvalidationDescriptor]) throws(QIError) {
        try qiSubmitSync(descriptors.map { $0.encode() })
    }

    /// The first qi_submit_sync that would never have returned
    /// (qi_driver=linux); nil while none has.
    public var lockup: QILockup? { queue.firstLockup.withLock { $0 } }

    /// qi_wait_us: how long each qi_submit_sync took, in microseconds.
    public var qiWaitMicroseconds: Histogram<UInt64> { queue.waitMicroseconds.withLock { $0 } }

    // MARK: - devices and PASIDs (what software programs in memory)

    /// Program a context entry for device `sid` in domain `did`.
    public func attachDevice(sid: UInt16, did: UInt16, ats: Bool) throws(IOMMUError) -> DMADevice {
        let device = DMADevice(sid: sid, did: did, ats: ats)
        let added = remapping.devices.withLock { devices -> Bool in
            guard devices[sid] == nil else { return false }
            devices[sid] = device
            return true
        }
        guard added else { throw .deviceAlreadyAttached(sid: sid) }
        remapping.contextTable.withLock { $0[sid] = did }
        return device
    }

    /// Clear the device's context entry, flush what may be cached of it
    /// (its context-cache entry and, with ATS, its own TLB), then forget it.
    public func detachDevice(_ device: DMADevice) throws(IOMMUError) {
        _ = remapping.contextTable.withLock { $0.removeValue(forKey: device.sid) }
        defer { _ = remapping.devices.withLock { $0.removeValue(forKey: device.sid) } }
        var descriptors = [InvalidationDescriptor.contextCache(.device(did: device.did, sid: device.sid, functionMask: 0))]
        if device.ats, device.isPresent {
            descriptors.append(.deviceTLB(DeviceTLBInvalidation(sid: device.sid, range: DeviceTLBRange(base: 0, sizeOrder: 52))))
        }
        do { try qiSubmitSync(descriptors) } catch { throw .queue(error) }
    }

    /// Point PASID `pasid` at the page tables rooted at `root` (the PFN of
    /// an mm's PGD), in domain `did`. `devices` are the ATS devices that will
    /// issue requests with it. A new entry needs no invalidation: nothing
    /// can have cached a not-present PASID entry.
    public func bindPASID(_ pasid: UInt32, root: UInt64, did: UInt16, mode: PagingMode = .fourLevel,
                          devices: [DMADevice] = []) throws(IOMMUError) {
        guard (1...0xF_FFFF).contains(pasid) else { throw .invalidPASID(pasid) }
        // Cleared, but its flush never completed: the caches may still hold
        // the old entry, which a new one must not meet.
        guard unflushedTeardowns.withLock({ $0[pasid] == nil }) else { throw .pasidTeardownPending(pasid) }
        for device in devices where remapping.devices.withLock({ $0[device.sid] }) !== device {
            throw .deviceNotAttached(sid: device.sid)
        }
        let added = remapping.pasidTable.withLock { table -> Bool in
            guard table[pasid] == nil else { return false }
            table[pasid] = PASIDTableEntry(root: root, did: did, mode: mode, devices: devices)
            return true
        }
        guard added else { throw .pasidAlreadyBound(pasid) }
    }

    /// intel_pasid_tear_down_entry: clear the PASID entry, then flush the
    /// PASID cache, the PASID's IOTLB and paging-structure entries, and its
    /// devices' TLBs, and wait. Afterwards the IOMMU holds nothing of the
    /// mm: its page tables may be freed.
    ///
    /// The entry goes before the flush, so a flush that fails leaves it gone
    /// and the caches full: the PASID is kept aside, refused to bindPASID,
    /// until an unbind of it sends the flush again and it completes.
    public func unbindPASID(_ pasid: UInt32) throws(IOMMUError) {
        guard let entry = remapping.pasidTable.withLock({ $0.removeValue(forKey: pasid) })
                ?? unflushedTeardowns.withLock({ $0.removeValue(forKey: pasid) }) else {
            throw .pasidNotBound(pasid)
        }
        var descriptors: [InvalidationDescriptor] = [
            .pasidCache(.pasid(did: entry.did, pasid: pasid)),
            .pasidIOTLB(PASIDIOTLBInvalidation(did: entry.did, pasid: pasid, granularity: .pasid)),
        ]
        for device in entry.devices where device.ats && device.isPresent {
            descriptors.append(.pasidDeviceTLB(PASIDDeviceTLBInvalidation(
                sid: device.sid, pasid: pasid, range: DeviceTLBRange(base: 0, sizeOrder: 52))))
        }
        do {
            try qiSubmitSync(descriptors)
        } catch {
            unflushedTeardowns.withLock { $0[pasid] = entry }
            throw .queue(error)
        }
    }

    /// The PASID's binding: root PFN, domain and paging mode.
    public func binding(of pasid: UInt32) -> (root: UInt64, did: UInt16, mode: PagingMode)? {
        remapping.pasidTable.withLock { $0[pasid].map { ($0.root, $0.did, $0.mode) } }
    }

    /// Every bound PASID, for flushes that cover them all.
    public var boundPASIDs: [UInt32] { remapping.pasidTable.withLock { $0.keys.sorted() } }

    // MARK: - DMA

    /// Translate one DMA access, synchronously, as the hardware would.
    public func translate(_ request: DMARequest) -> DMATranslation {
        remapping.translate(request)
    }

    /// Translate on behalf of `device`: context cache, then its TLB (ATS).
    public func translate(_ request: DMARequest, device: DMADevice) -> DMATranslation {
        remapping.translate(request, device: device)
    }

    /// How many entries each cache holds now.
    public var cachedEntries: (iotlb: Int, pagingStructures: Int, pasids: Int, contexts: Int) {
        remapping.caches.withLock { c in
            (c.iotlb.count, c.pagingStructures.count, c.pasids.count, c.contexts.count)
        }
    }
}
