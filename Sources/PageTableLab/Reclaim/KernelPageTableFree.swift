internal import CSupport
import Synchronization

/// Freeing kernel page tables when an IOMMU may have cached them (seeds
/// 000–002, fixed in 6.19): pagetable_free_kernel and its work.
///
/// With SVA an IOMMU walks the kernel half of every bound mm and caches
/// intermediate entries. A kernel table freed without telling it can be
/// reused while the IOMMU still walks through it. The fix puts the table on
/// one list through the ptdesc's own list node (no allocation: "you have
/// to allocate memory or you are dead"), schedules a work item
/// unconditionally, and the work invalidates the whole kernel range once
/// for the batch, waits, and only then frees every page on the list.
public final class KernelPageTableFree: @unchecked Sendable {
    /// How kernel tables are freed: `.deferred` (the fix), `.perPage`, or
    /// `.noInvalidate` (the kernel before it), or a prototype's own.
    public let policy: any KernelTableFreePolicy
    let allocator: PageAllocator
    /// Invalidates every SVA-bound mm's kernel range and waits: true once
    /// the IOMMU has done it. nil when no IOMMU shares the tables.
    let invalidateKVA: (@Sendable () -> Bool)?
    private let lock = LabMutex<Void>(())
    private let list: UnsafeMutablePointer<cds_list_head>
    /// Only the work touches this: the batch being freed.
    private let batch: UnsafeMutablePointer<cds_list_head>
    /// Tables whose invalidation never completed (the queue locked up):
    /// never freed while the lab runs, as in Linux, whose freeing work
    /// would still be waiting. Under `lock`.
    private let stranded: UnsafeMutablePointer<cds_list_head>
    public private(set) var work: Work!

    public let tablesQueued = Atomic<Int>(0)
    public let tablesFreed = Atomic<Int>(0)
    public let invalidations = Atomic<Int>(0)
    public let batches = Atomic<Int>(0)
    /// Tables left waiting on an invalidation that never completed.
    public let tablesStranded = Atomic<Int>(0)

    /// `workCPU`: the CPU the freeing thread runs on, to bind the work there
    /// as schedule_work does (nil: unbound).
    public init(policy: any KernelTableFreePolicy, allocator: PageAllocator, workCPU: Int? = nil, invalidateKVA: (@Sendable () -> Bool)?) {
        self.policy = policy
        self.allocator = allocator
        self.invalidateKVA = invalidateKVA
        list = .allocate(capacity: 1)
        batch = .allocate(capacity: 1)
        stranded = .allocate(capacity: 1)
        ptlab_list_init(list)
        ptlab_list_init(batch)
        ptlab_list_init(stranded)
        work = Work(cpu: workCPU) { [unowned self] in self.workFunction() }
    }

    /// Drain and stop the work: every table queued so far is freed. Then
    /// the stranded ones too: the lab is unloading and the caller has
    /// stopped everything that walks kernel tables (DMA walkers included),
    /// the only thing an invalidation would have protected them from.
    public func shutdown() {
        work.shutdown()
        _ = lock.withLock { _ in freeAll(stranded) }
    }

    deinit {
        list.deallocate()
        batch.deallocate()
        stranded.deallocate()
    }

    /// pagetable_free: a kernel table (ptdesc kernel bit) takes the policy's
    /// path; any other page is freed at once.
    ///
    /// The kernel clears the bit here (ptdesc_clear_kernel) because its only
    /// job there is routing. In the lab the IOMMU's checker also reads it:
    /// an unlinked table waiting on the list is still a valid kernel table
    /// that the IOMMU may walk until the invalidation, so the bit goes with
    /// the free (the allocator clears every flag).
    public func pagetableFree(_ page: Page) {
        guard ptlab_page_flags(page.desc) & PTLAB_PT_KERNEL != 0 else {
            PageTables.dtorFree(page, allocator: allocator)
            return
        }
        policy.free(page, freer: self)
    }

    /// A table's last step, whichever policy took it there: freed (and
    /// counted in `tablesFreed`).
    public func free(_ page: Page) {
        PageTables.dtorFree(page, allocator: allocator)
        tablesFreed.add(1, ordering: .relaxed)
    }

    /// A table whose invalidation never completed: kept, never freed while
    /// the lab runs (as Linux's freeing work would still be waiting).
    public func strand(_ page: Page) {
        lock.withLock { _ in cds_list_add(ptlab_ptdesc_list(page.desc), stranded) }
        tablesStranded.add(1, ordering: .relaxed)
    }

    /// pagetable_free_kernel: list_add under the lock, schedule_work
    /// unconditionally (cheap next to the IPIs a kernel TLB flush sends).
    /// Any order of page goes on the same list (seed 002: one list).
    public func pagetableFreeKernel(_ page: Page) {
        guard PageTables.markDeferred(page) else { return }
        lock.withLock { _ in cds_list_add(ptlab_ptdesc_list(page.desc), list) }
        tablesQueued.add(1, ordering: .relaxed)
        work.schedule()
    }

    /// iommu_sva_invalidate_kva_range for every SVA-bound mm, waited for:
    /// whether it completed (true when no IOMMU shares the tables).
    public func invalidate() -> Bool {
        guard let invalidateKVA else { return true }
        invalidations.add(1, ordering: .relaxed)
        return invalidateKVA()
    }

    /// The work: splice, one invalidation for the whole batch, wait, free.
    /// A batch whose invalidation did not complete is kept, not freed.
    private func workFunction() {
        lock.withLock { _ in
            if !isEmpty(list) {
                cds_list_splice(list, batch)
                ptlab_list_init(list)
            }
        }
        guard !isEmpty(batch) else { return }
        guard invalidate() else {
            var n = 0
            var node = batch.pointee.next!
            while node != batch {
                n += 1
                node = node.pointee.next!
            }
            lock.withLock { _ in cds_list_splice(batch, stranded) }
            ptlab_list_init(batch)
            tablesStranded.add(n, ordering: .relaxed)
            return
        }
        tablesFreed.add(freeAll(batch), ordering: .relaxed)
        batches.add(1, ordering: .relaxed)
    }

    /// Free every table on `head` and empty it; the number freed.
    @discardableResult
    private func freeAll(_ head: UnsafeMutablePointer<cds_list_head>) -> Int {
        var freed = 0
        var node = head.pointee.next!
        while node != head {
            let next = node.pointee.next!
            PageTables.dtorFree(Page(ptlab_ptdesc_of_list(node)), allocator: allocator)
            freed += 1
            node = next
        }
        ptlab_list_init(head)
        return freed
    }

    private func isEmpty(_ head: UnsafeMutablePointer<cds_list_head>) -> Bool {
        head.pointee.next == head
    }
}

/// How pagetable_free frees a kernel page table that an IOMMU may have
/// cached (seeds 000–002).
///
/// `free` is called when the table has been unlinked from init_mm's tables
/// and the kernel's CPU TLB flush for the range is done (flush_tlb_kernel_range
/// or flush_tlb_all), so no CPU reaches it; an IOMMU bound through SVA may
/// still hold it in its paging-structure caches until `freer.invalidate()`
/// has completed. Free it with `freer.free`, after that invalidation, or
/// `freer.strand` it if the invalidation never completes. May not allocate.
public protocol KernelTableFreePolicy: Sendable {
    /// A short name for reports.
    var name: String { get }
    func free(_ table: Page, freer: KernelPageTableFree)
}

/// The fix (6.19): one list, one work, one invalidation per batch.
public struct DeferredKernelTableFree: KernelTableFreePolicy {
    public init() {}
    public var name: String { "deferred" }
    public func free(_ table: Page, freer: KernelPageTableFree) { freer.pagetableFreeKernel(table) }
}

/// Safe but slow: invalidate and wait for each table, then free it.
public struct PerPageKernelTableFree: KernelTableFreePolicy {
    public init() {}
    public var name: String { "per-page" }

    public func free(_ table: Page, freer: KernelPageTableFree) {
        guard PageTables.markDeferred(table) else { return }
        if freer.invalidate() { freer.free(table) } else { freer.strand(table) }
    }
}

/// The kernel before the fix: freed at once, the IOMMU never told.
public struct NoInvalidateKernelTableFree: KernelTableFreePolicy {
    public init() {}
    public var name: String { "no-invalidate" }
    public func free(_ table: Page, freer: KernelPageTableFree) { freer.free(table) }
}

extension KernelTableFreePolicy where Self == DeferredKernelTableFree {
    public static var deferred: DeferredKernelTableFree { DeferredKernelTableFree() }
}

extension KernelTableFreePolicy where Self == PerPageKernelTableFree {
    public static var perPage: PerPageKernelTableFree { PerPageKernelTableFree() }
}

extension KernelTableFreePolicy where Self == NoInvalidateKernelTableFree {
    public static var noInvalidate: NoInvalidateKernelTableFree { NoInvalidateKernelTableFree() }
}
