/// How an mmu_gather frees the page tables it is handed: what an
/// architecture chooses in asm-generic/tlb.h (MMU_GATHER_RCU_TABLE_FREE or
/// not) and mm/mmu_gather.c (tlb_remove_table_one's fallback).
///
/// The gather calls three hooks, and a policy may do anything in them that
/// a freeing path may do: no allocation, no wait on a grace period from
/// inside an RCU read section.
///
/// - `removeTable` (tlb_remove_table): the table has been unlinked from its
///   parent entry and taken off VmPTE (pgtables_bytes). Its destructor has
///   run only under `MMProfile.dtor == .atUnlink`. No TLB flush has happened
///   since the unlink: CPUs and IOMMUs may still cache the table in their
///   paging-structure caches, and software walkers (GUP-fast,
///   pte_offset_map) may be inside it. Return `.batch` to leave it to the
///   gather (the usual answer), or `.taken` once the policy has taken it on,
///   after which freeing it is the policy's job.
/// - `freeBatch` (tlb_table_flush): the gather has flushed every CPU's TLB
///   and told the secondary TLBs (tlb_table_invalidate), so no hardware
///   walker reaches the batch's tables any more; software walkers may still
///   be inside them. Every table must eventually go through
///   `PageTables.dtorFree`, and the batch page through `batch.release`
///   (`batch.free` does both), once no walker can be in them.
/// - `freeOne` (tlb_remove_table_one): no page could be had for a batch.
///   Nothing has flushed the table out of the caches yet: call
///   `gather.tableInvalidate()` first unless the scheme is meant to skip it.
///
/// The kernel's own schemes are `.rcu` (with `.rcu(fallback:)` for each of
/// tlb_remove_table_one's fallbacks), and the unsafe `.immediate` and
/// `.noRCU`, kernels before their fixes.
public protocol TableFreePolicy: Sendable {
    /// A short name for reports.
    var name: String { get }
    /// True when `removeTable` answers `.batch` for every table, as all of
    /// the kernel's schemes but `.immediate` do: the gather then batches
    /// each table without the call. False (the default) has it called.
    var batchesEveryTable: Bool { get }
    func removeTable(_ table: Page, gather: MMUGather) -> TableDisposition
    func freeBatch(_ batch: TableBatch, gather: MMUGather)
    func freeOne(_ table: Page, gather: MMUGather)
}

/// What `TableFreePolicy.removeTable` did with a table.
public enum TableDisposition: Sendable {
    /// Left to the gather's batch: `freeBatch` gets it after the flush.
    case batch
    /// Taken on by the policy, which frees it.
    case taken
}

extension TableFreePolicy {
    public var batchesEveryTable: Bool { false }
    public func removeTable(_ table: Page, gather: MMUGather) -> TableDisposition { .batch }
}

/// MMU_GATHER_RCU_TABLE_FREE: flush, then one call_rcu for the batch, whose
/// callback frees every table (tlb_remove_table_rcu). GUP-fast and
/// pte_offset_map walkers are waited out by the grace period, hardware
/// walkers by the flush before it.
public struct RCUTableFree: TableFreePolicy {
    /// What tlb_remove_table_one does when no batch page can be had.
    public enum Fallback: String, Sendable, Codable, CaseIterable {
        /// Wait for every CPU to leave its IRQs-off section, then free now:
        /// enough only when every walker that can be in the table runs with
        /// IRQs off, which PT_RECLAIM breaks (seed 003).
        case ipiSync = "ipi-sync"
        /// call_rcu on the table's own rcu_head (PT_RECLAIM kernels).
        case rcuOne = "rcu-one"
        /// synchronize_rcu, then free now (7.x).
        case synchronize
        /// Unsafe: synchronize without tlb_table_invalidate first. The
        /// grace period waits out every software walker, but a CPU's
        /// paging-structure cache still points at the table it frees until
        /// the gather's final flush.
        case noInvalidate = "no-invalidate"
    }

    public var fallback: Fallback

    public init(fallback: Fallback = .rcuOne) { self.fallback = fallback }

    public var name: String { "rcu-table-free" }
    public var batchesEveryTable: Bool { true }

    public func freeBatch(_ batch: TableBatch, gather: MMUGather) {
        gather.callRCU(on: batch.page, bytes: UInt64(4096 * (batch.count + 1)), tlbRemoveTableRCU)
    }

    public func freeOne(_ table: Page, gather: MMUGather) {
        if fallback != .noInvalidate { gather.tableInvalidate() }
        switch fallback {
        case .rcuOne:
            gather.callRCU(on: table, bytes: 4096, tlbRemoveTableOneRCU)
        case .ipiSync:
            gather.mm.tlb.syncOne()
            PageTables.dtorFree(table, allocator: gather.mm.allocator)
        case .synchronize, .noInvalidate:
            do {
                try RCU.synchronize()
            } catch {
                // Inside a read section the wait would wait for itself:
                // defer the free instead of making it unprotected.
                gather.callRCU(on: table, bytes: 4096, tlbRemoveTableOneRCU)
                return
            }
            PageTables.dtorFree(table, allocator: gather.mm.allocator)
        }
    }
}

/// Unsafe: every table freed at unlink, before any flush or grace period.
public struct ImmediateTableFree: TableFreePolicy {
    public init() {}
    public var name: String { "immediate" }

    public func removeTable(_ table: Page, gather: MMUGather) -> TableDisposition {
        gather.stats.freedBeforeFlush += 1
        PageTables.dtorFree(table, allocator: gather.mm.allocator)
        return .taken
    }

    public func freeBatch(_ batch: TableBatch, gather: MMUGather) { batch.free(allocator: gather.mm.allocator) }
    public func freeOne(_ table: Page, gather: MMUGather) { PageTables.dtorFree(table, allocator: gather.mm.allocator) }
}

/// x86 native before RCU table freeing: tables freed as soon as the flush
/// is done, with no grace period. The flush's IPI waits out GUP-fast (IRQs
/// off), so this is safe exactly while flushes are IPIs; pte_offset_map
/// walkers, which take the IPI mid-walk, were not yet a thing.
public struct NoRCUTableFree: TableFreePolicy {
    public init() {}
    public var name: String { "no-rcu" }
    public var batchesEveryTable: Bool { true }

    public func freeBatch(_ batch: TableBatch, gather: MMUGather) { batch.free(allocator: gather.mm.allocator) }

    public func freeOne(_ table: Page, gather: MMUGather) {
        gather.tableInvalidate()
        PageTables.dtorFree(table, allocator: gather.mm.allocator)
    }
}

extension TableFreePolicy where Self == RCUTableFree {
    /// MMU_GATHER_RCU_TABLE_FREE with tlb_remove_table_one's call_rcu.
    public static var rcu: RCUTableFree { RCUTableFree() }
    public static func rcu(fallback: RCUTableFree.Fallback) -> RCUTableFree { RCUTableFree(fallback: fallback) }
}

extension TableFreePolicy where Self == ImmediateTableFree {
    public static var immediate: ImmediateTableFree { ImmediateTableFree() }
}

extension TableFreePolicy where Self == NoRCUTableFree {
    public static var noRCU: NoRCUTableFree { NoRCUTableFree() }
}
