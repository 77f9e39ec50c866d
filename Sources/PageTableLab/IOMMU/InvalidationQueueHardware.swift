internal import CSupport
import Synchronization

/// What invalidation descriptors act on: the remapping unit's caches and
/// the devices' TLBs. The queue hardware decodes and orders; this executes.
protocol InvalidationTarget: AnyObject, Sendable {
    func invalidateContextCache(_ invalidation: ContextCacheInvalidation)
    func invalidateIOTLB(_ invalidation: IOTLBInvalidation)
    func invalidatePASIDIOTLB(_ invalidation: PASIDIOTLBInvalidation)
    func invalidatePASIDCache(_ invalidation: PASIDCacheInvalidation)
    /// Send an ATS invalidation to device `sid`; false when no completion
    /// comes back (no such device, or it is gone): the request times out.
    /// `pasid` nil: translations of every PASID.
    func invalidateDeviceTLB(sid: UInt16, pasid: UInt32?, range: DeviceTLBRange) -> Bool
}

/// The queued-invalidation half of the emulated VT-d unit: its registers
/// and the hardware thread that fetches descriptors from the ring in
/// memory, executes them in order and advances IQH.
///
/// Execution is strictly in order, one descriptor at a time, so every wait
/// behaves as if fenced (FN is decoded and accepted; it changes nothing
/// observable). A device-TLB invalidation that times out does not stop the
/// fetch at once: as in hardware, later descriptors go on, the first wait
/// after it is aborted (no status write, no interrupt), and then ITE is
/// reported and fetching stops until software clears it.
final class InvalidationQueueHardware: @unchecked Sendable {
    let allocator: PageAllocator
    let counters: IOMMUCounters
    let injection: QIFaultInjection
    /// Capability MAMV: the largest address mask page-selective flushes take.
    let maxAddressMask: UInt8
    /// Software wakes the hardware (IQT, GCMD, FSTS writes).
    let doorbell = EventCount()
    /// The hardware wakes software (status writes, errors, idle, GSTS).
    let progress = EventCount()

    private let target: InvalidationTarget
    private let interruptHandler: (@Sendable () -> Void)?
    private let gcmd = Atomic<UInt64>(0)
    private let gsts = Atomic<UInt64>(0)
    private let fsts = Atomic<UInt64>(0)
    private let ics = Atomic<UInt64>(0)
    private let iqa = Atomic<UInt64>(0)
    private let iqh = Atomic<UInt64>(0)
    private let iqt = Atomic<UInt64>(0)
    private let record = LabMutex(QIErrorRecord())
    private let running = Atomic<Bool>(true)
    private var thread: RCUThread?

    /// Hardware-thread-only: a device-TLB invalidation that got no answer,
    /// waiting for the next wait descriptor to abort.
    private var timedOut: (sid: UInt16, index: Int)?

    init(allocator: PageAllocator, target: InvalidationTarget, counters: IOMMUCounters,
         maxAddressMask: UInt8, interruptHandler: (@Sendable () -> Void)?) {
        self.allocator = allocator
        self.target = target
        self.counters = counters
        self.maxAddressMask = maxAddressMask
        self.interruptHandler = interruptHandler
        self.injection = QIFaultInjection(doorbell: doorbell)
    }

    /// Power on: start the hardware thread. It sleeps on the doorbell when
    /// there is nothing to fetch, so an idle unit uses no CPU.
    func start() {
        precondition(thread == nil, "hardware started twice")
        thread = RCUThread { [self] in run() }
    }

    /// Power off: stop the thread (whatever is left in the queue stays).
    func stop() {
        running.store(false, ordering: .releasing)
        doorbell.signal()
        thread?.join()
        thread = nil
    }

    // MARK: - registers (the software side)

    func read(_ register: DMARRegister) -> UInt64 {
        switch register {
        case .gcmd: gcmd.load(ordering: .acquiring)
        case .gsts: gsts.load(ordering: .acquiring)
        case .fsts: fsts.load(ordering: .acquiring)
        case .ics: ics.load(ordering: .acquiring)
        case .iqa: iqa.load(ordering: .acquiring)
        case .iqh: iqh.load(ordering: .acquiring)
        case .iqt: iqt.load(ordering: .acquiring)
        case .iqercd:
            record.withLock { r in
                DMARRegister.iqercd(iqei: r.iqeReason, iteSID: r.iteSID, iceSID: r.iceSID)
            }
        }
    }

    func write(_ register: DMARRegister, _ value: UInt64) throws(DMARRegisterError) {
        switch register {
        case .gsts, .iqh, .iqercd:
            throw .readOnly(register)
        case .gcmd:
            gcmd.store(value, ordering: .releasing)
        case .fsts:
            fsts.bitwiseAnd(~(value & DMARRegister.queueErrors), ordering: .acquiringAndReleasing)
            progress.signal()
        case .ics:
            ics.bitwiseAnd(~(value & DMARRegister.invalidationWaitComplete), ordering: .acquiringAndReleasing)
        case .iqa:
            guard gsts.load(ordering: .acquiring) & DMARRegister.queuedInvalidationEnable == 0 else {
                throw .iqaWhileEnabled
            }
            iqa.store(value, ordering: .releasing)
        case .iqt:
            iqt.store(value & DMARRegister.queueOffsetMask, ordering: .releasing)
        }
        doorbell.signal()
    }

    var errorRecord: QIErrorRecord { record.withLock { $0 } }

    // MARK: - the hardware thread

    private func run() {
        while running.load(ordering: .acquiring) {
            let key = doorbell.prepareWait()
            if step() { continue }
            doorbell.wait(key)
        }
    }

    /// One unit of hardware work; false when there is nothing to do.
    private func step() -> Bool {
        let enable = gcmd.load(ordering: .acquiring) & DMARRegister.queuedInvalidationEnable != 0
        let enabled = gsts.load(ordering: .acquiring) & DMARRegister.queuedInvalidationEnable != 0
        if enable != enabled {
            if enable {
                gsts.bitwiseOr(DMARRegister.queuedInvalidationEnable, ordering: .acquiringAndReleasing)
            } else {
                // Hardware resets IQH whenever QIES clears (VT-d, IQH_REG): it is
                // reset as the queue goes off, not when it comes back on.
                timedOut = nil
                iqh.store(0, ordering: .releasing)
                gsts.bitwiseAnd(~DMARRegister.queuedInvalidationEnable, ordering: .acquiringAndReleasing)
            }
            progress.signal()
            return true
        }
        let stopping = DMARRegister.invalidationQueueError | DMARRegister.invalidationTimeoutError
        guard enabled, fsts.load(ordering: .acquiring) & stopping == 0, !injection.isStalled else { return false }

        let queue = iqa.load(ordering: .acquiring)
        let width: DescriptorWidth = queue & DMARRegister.iqaDescriptorWidth != 0 ? .bits256 : .bits128
        let entries = 1 << (Int(queue & DMARRegister.iqaQueueSizeMask) + 8 - width.rawValue)
        let head = Int(iqh.load(ordering: .relaxed) >> UInt64(width.shift))
        let tail = iqt.load(ordering: .acquiring)
        if width == .bits256, tail & 0x10 != 0 {
            raiseIQE(.tailMisaligned, index: head)
            return true
        }
        guard Int(tail >> UInt64(width.shift)) < entries else {
            raiseIQE(.invalidTail, index: head)
            return true
        }
        if head == Int(tail >> UInt64(width.shift)) {
            // Nothing left to fetch: a pending time-out has now expired.
            guard let t = timedOut else { return false }
            raiseITE(t, abortedWait: nil)
            return true
        }
        process(at: head, entries: entries, width: width, base: queue & ~0xFFF)
        return true
    }

    private func process(at index: Int, entries: Int, width: DescriptorWidth, base: UInt64) {
        counters.descriptorsFetched.add(1, ordering: .relaxed)
        guard let raw = fetch(base + UInt64(index << width.shift), width: width) else {
            raiseIQE(.fetchError, index: index)
            return
        }
        if raw.type != 5, injection.consumeIQE() {
            raiseIQE(.reservedField, index: index, injected: true)
            return
        }
        let descriptor: InvalidationDescriptor
        switch InvalidationDescriptor.decode(raw, width: width, maxAddressMask: maxAddressMask) {
        case .failure(let error):
            raiseIQE(error.reason, index: index, decodeError: error)
            return
        case .success(let d):
            descriptor = d
        }

        let next = UInt64((index + 1) % entries) << UInt64(width.shift)
        switch descriptor {
        case .wait(let wait):
            if let t = timedOut {
                // The device-TLB invalidation this wait covers never completed.
                counters.countExecuted(type: 5)
                counters.waitsAborted.add(1, ordering: .relaxed)
                iqh.store(next, ordering: .releasing)
                raiseITE(t, abortedWait: index)
                return
            }
            // The unit reaches only the lab's memory: a status address
            // outside it lies above the host address width the unit
            // implements, bits the wait descriptor reserves. (Real hardware
            // would send the write and lose it.)
            let word = wait.statusWrite.map { statusWord(at: $0.address) }
            if case .some(nil) = word {
                raiseIQE(.reservedField, index: index)
                return
            }
            // IQH moves past the wait before its status is written: whoever
            // sees the status sees the head past it, so a status seen
            // before the head moved was written by something else.
            counters.countExecuted(type: 5)
            iqh.store(next, ordering: .releasing)
            if let sw = wait.statusWrite, case .some(.some(let w)) = word {
                ptlab_u32_store_release(w, sw.data)
                counters.statusWrites.add(1, ordering: .relaxed)
            }
            if wait.interrupt {
                ics.bitwiseOr(DMARRegister.invalidationWaitComplete, ordering: .acquiringAndReleasing)
                counters.completionInterrupts.add(1, ordering: .relaxed)
                interruptHandler?()
            }
            progress.signal()
            return
        case .contextCache(let inv): target.invalidateContextCache(inv)
        case .iotlb(let inv): target.invalidateIOTLB(inv)
        case .pasidIOTLB(let inv): target.invalidatePASIDIOTLB(inv)
        case .pasidCache(let inv): target.invalidatePASIDCache(inv)
        case .interruptEntryCache: break    // no interrupt remapping in the lab: nothing cached
        case .deviceTLB(let inv): deviceTLB(sid: inv.sid, pasid: nil, range: inv.range, index: index)
        case .pasidDeviceTLB(let inv):
            deviceTLB(sid: inv.sid, pasid: inv.allPASIDs ? nil : inv.pasid, range: inv.range, index: index)
        }
        counters.countExecuted(type: descriptor.typeCode)
        iqh.store(next, ordering: .releasing)
        if next == iqt.load(ordering: .acquiring) { progress.signal() }
    }

    private func deviceTLB(sid: UInt16, pasid: UInt32?, range: DeviceTLBRange, index: Int) {
        if injection.consumeITE() || !target.invalidateDeviceTLB(sid: sid, pasid: pasid, range: range) {
            if timedOut == nil { timedOut = (sid, index) }
            return
        }
        if injection.consumeICE() { raiseICE(sid: sid, index: index) }
    }

    /// Read a descriptor from physical memory; nil when the address is not
    /// memory (IQA pointing nowhere).
    private func fetch(_ address: UInt64, width: DescriptorWidth) -> RawDescriptor? {
        guard let page = allocator.address(pfn: address >> 12) else { return nil }
        let p = UnsafeRawPointer(page + Int(address & 0xFFF))
        var raw = RawDescriptor(qw0: p.load(as: UInt64.self), qw1: p.load(fromByteOffset: 8, as: UInt64.self))
        if width == .bits256 {
            raw.qw2 = p.load(fromByteOffset: 16, as: UInt64.self)
            raw.qw3 = p.load(fromByteOffset: 24, as: UInt64.self)
        }
        return raw
    }

    private func statusWord(at address: UInt64) -> UnsafeMutablePointer<UInt32>? {
        guard let page = allocator.address(pfn: address >> 12) else { return nil }
        return (page + Int(address & 0xFFF)).assumingMemoryBound(to: UInt32.self)
    }

    // MARK: - errors

    private func raiseIQE(_ reason: IQEReason, index: Int, decodeError: DescriptorDecodeError? = nil,
                          injected: Bool = false) {
        record.withLock { r in
            r.iqeReason = reason
            r.iqeIndex = index
            r.iqeDecodeError = decodeError
            r.iqeInjected = injected
        }
        fsts.bitwiseOr(DMARRegister.invalidationQueueError, ordering: .acquiringAndReleasing)
        counters.iqeRaised.add(1, ordering: .relaxed)
        progress.signal()
    }

    private func raiseITE(_ t: (sid: UInt16, index: Int), abortedWait: Int?) {
        timedOut = nil
        injection.raisingITE()
        record.withLock { r in
            r.iteSID = t.sid
            r.iteIndex = t.index
            r.iteAbortedWait = abortedWait
        }
        fsts.bitwiseOr(DMARRegister.invalidationTimeoutError, ordering: .acquiringAndReleasing)
        counters.iteRaised.add(1, ordering: .relaxed)
        progress.signal()
    }

    /// ICE does not stop the queue. While it is set, later ones are not
    /// recorded (first error wins, as for FSTS's other bits).
    private func raiseICE(sid: UInt16, index: Int) {
        let bit = DMARRegister.invalidationCompletionError
        guard fsts.load(ordering: .acquiring) & bit == 0 else { return }
        record.withLock { r in
            r.iceSID = sid
            r.iceIndex = index
        }
        fsts.bitwiseOr(bit, ordering: .acquiringAndReleasing)
        counters.iceRaised.add(1, ordering: .relaxed)
        progress.signal()
    }
}
