#if canImport(Glibc)
import Glibc
#endif
import CSupport
import Synchronization
import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// A small allocator for IOMMU tests (one per process at a time: unload it).
func makeIOMMUTestAllocator(poison: Bool = false) throws -> PageAllocator {
    var p = PageAllocator.Parameters()
    p.nodeBudgetPages = 4096
    p.poison = poison
    return try PageAllocator(parameters: p)
}

/// Post `batches` in this ring order with fetching stalled, each on a
/// submitter thread of its own (the next is started once the previous one
/// has taken its slots). The hardware stays stalled: resume it to run them.
func postStalled(_ iommu: IntelIOMMU, _ batches: [[RawDescriptor]]) throws -> [Submitter] {
    iommu.faultInjection.stallFetching()
    var free = iommu.freeSlots
    return try batches.map { batch in
        let s = Submitter(iommu, batch)
        free -= batch.count + 1
        try waitUntil("a submission to take its slots") { iommu.freeSlots == free }
        return s
    }
}


/// 4-level page tables built by hand from allocator pages, the way the mm
/// model will build them: PageTable flag, level, kernel flag in the kernel
/// half. Entries are present, writable, user, with A and D clear.
final class HandTables {
    let allocator: PageAllocator
    let pgd: Page
    private(set) var tables: [Page] = []

    init(allocator: PageAllocator) throws {
        self.allocator = allocator
        pgd = try Self.makeTable(allocator, level: .pgd, kernel: false)
        tables.append(pgd)
    }

    static func makeTable(_ allocator: PageAllocator, level: Level, kernel: Bool) throws -> Page {
        let page = try allocator.alloc(zero: true)
        ptlab_page_set_flags(page.desc, PTLAB_PG_TABLE | (kernel ? PTLAB_PT_KERNEL : 0))
        ptlab_page_set_level(page.desc, UInt32(level.rawValue))
        return page
    }

    static let shifts: [(Level, Int)] = [(.pgd, 39), (.pud, 30), (.pmd, 21), (.pte, 12)]

    func slot(_ table: Page, _ address: UInt64, shift: Int) -> UnsafeMutablePointer<UInt64> {
        (allocator.address(of: table) + (Int(address >> UInt64(shift)) & 511) * 8).assumingMemoryBound(to: UInt64.self)
    }

    /// Map the 4 KiB page at `address` to `frame`; returns the table of each
    /// level on the way (pgd, pud, pmd, pte).
    @discardableResult
    func map(_ address: UInt64, to frame: UInt32, writable: Bool = true) throws -> [Level: Page] {
        let kernel = address >> 63 == 1
        var path: [Level: Page] = [.pgd: pgd]
        var table = pgd
        for (i, (level, shift)) in Self.shifts.enumerated() {
            let entry = slot(table, address, shift: shift)
            if level == .pte {
                ptlab_pte_write(entry, Entry(pfn: frame, flags: Entry.Flags([.present, .user]).union(writable ? .writable : [])).rawValue)
                return path
            }
            let next: Page
            let current = Entry(rawValue: ptlab_pte_read(entry))
            if current.isPresent {
                next = try allocator.page(pfn: current.pfn)
            } else {
                next = try Self.makeTable(allocator, level: Self.shifts[i + 1].0, kernel: kernel)
                tables.append(next)
                ptlab_pte_write(entry, Entry(pfn: next.pfn, flags: [.present, .writable, .user]).rawValue)
            }
            path[Self.shifts[i + 1].0] = next
            table = next
        }
        return path
    }

    /// The entry mapping `address` in `table` (of the given level).
    func entry(in table: Page, level: Level, address: UInt64) -> Entry {
        let shift = Self.shifts.first { $0.0 == level }!.1
        return Entry(rawValue: ptlab_pte_read(slot(table, address, shift: shift)))
    }

    /// Unlink and free the table of `level` under `address`, as a kernel
    /// freeing a page table does: clear the entry above it, then free.
    func unlinkAndFree(_ table: Page, from parent: Page, parentLevel: Level, address: UInt64) throws {
        let shift = Self.shifts.first { $0.0 == parentLevel }!.1
        ptlab_pte_write(slot(parent, address, shift: shift), 0)
        try free(table)
    }

    /// Free one table (generation bumped) without unlinking it.
    func free(_ table: Page) throws {
        tables.removeAll { $0 == table }
        try allocator.free(table)
    }

    func freeAll() throws {
        for t in tables { try allocator.free(t) }
        tables.removeAll()
    }
}

/// Bring up an allocator and an IOMMU, run `body`, tear both down and
/// check that the IOMMU gave back its ring and status words.
func withIOMMU(_ parameters: IntelIOMMU.Parameters = IntelIOMMU.Parameters(),
               poison: Bool = false,
               interruptHandler: (@Sendable () -> Void)? = nil,
               file: StaticString = #filePath, line: UInt = #line,
               _ body: (PageAllocator, IntelIOMMU) throws -> Void) throws {
    let allocator = try makeIOMMUTestAllocator(poison: poison)
    defer { allocator.unload() }
    let before = allocator.totalAllocatedPages
    let iommu = try IntelIOMMU(allocator: allocator, parameters: parameters, interruptHandler: interruptHandler)
    do {
        try body(allocator, iommu)
    } catch {
        iommu.shutdown()
        throw error
    }
    XCTAssertEqual(iommu.shutdown(), 0, "descriptors left in the queue at shutdown", file: file, line: line)
    XCTAssertEqual(allocator.totalAllocatedPages, before, "pages not given back", file: file, line: line)
}

/// Write a descriptor straight into ring slot `index`, as software does
/// before moving IQT (for tests that drive the registers by hand).
func writeRingSlot(_ iommu: IntelIOMMU, _ allocator: PageAllocator, _ index: Int, _ d: RawDescriptor) {
    let address = iommu.slotAddress(index)
    let p = allocator.address(pfn: address >> 12)! + Int(address & 0xFFF)
    for (i, q) in [d.qw0, d.qw1, d.qw2, d.qw3].enumerated() where i < iommu.parameters.descriptorWidth.bytes / 8 {
        p.storeBytes(of: q, toByteOffset: i * 8, as: UInt64.self)
    }
}

/// A counter a @Sendable callback can bump.
final class CallCounter: Sendable {
    let value = Atomic<Int>(0)
    func bump() { value.add(1, ordering: .relaxed) }
    var count: Int { value.load(ordering: .relaxed) }
}

/// Read ring slot `index` back as the hardware would fetch it.
func readRingSlot(_ iommu: IntelIOMMU, _ allocator: PageAllocator, _ index: Int) -> InvalidationDescriptor? {
    let address = iommu.slotAddress(index)
    let p = UnsafeRawPointer(allocator.address(pfn: address >> 12)! + Int(address & 0xFFF))
    let width = iommu.parameters.descriptorWidth
    let bytes = UnsafeRawBufferPointer(start: p, count: width.bytes)
    return try? InvalidationDescriptor.decode(bytes: bytes, width: width).get()
}

/// One submitter thread: submits `batch` `times` times and keeps each
/// outcome.
final class Submitter: Sendable {
    private final class Outcomes: Sendable {
        let list = Mutex<[Result<Void, QIError>]>([])
    }

    private let outcomes = Outcomes()
    private let thread: RCUThread

    init(_ iommu: IntelIOMMU, _ batch: [RawDescriptor], times: Int = 1) {
        let outcomes = self.outcomes
        thread = RCUThread {
            for _ in 0..<times {
                let r = Result { () throws(QIError) in try iommu.qiSubmitSync(batch) }
                outcomes.list.withLock { $0.append(r) }
            }
        }
    }

    /// Wait for the thread, then its outcomes in submission order.
    func results() -> [Result<Void, QIError>] {
        thread.join()
        return outcomes.list.withLock { $0 }
    }

    func outcome() -> Result<Void, QIError> { results()[0] }
}
