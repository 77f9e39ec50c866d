import CSupport
import XCTest
@testable import PageTableLab

final class ShmemCollapseTests: XCTestCase {
    /// set_huge_pmd maps the collapsed folio as a read fault would
    /// (mk_huge_pmd with the VMA's vm_page_prot): after mprotect(PROT_NONE)
    /// the huge PMD is PROT_NONE, present to no walker; after PROT_READ it
    /// is read-only; a writable mapping gets a writable one.
    func testTheCollapsedFolioIsMappedWithTheVMAsProtection() throws {
        try withLab { allocator in
            let mm = try MM(allocator: allocator)
            let cases: [(Protection, Entry.Flags)] = [(.none, .protNone), (.r, .present), (.rw, [.present, .writable])]
            for (protection, expected) in cases {
                try mm.mmap(address: tib, length: 2 * mib, shared: true)
                try mm.touch(address: tib, length: 2 * mib, stride: 64 << 10)
                try mm.mprotect(address: tib, length: 2 * mib, protection: protection)
                try mm.madviseCollapse(address: tib, length: 2 * mib)
                let (_, slot) = try XCTUnwrap(mm.findPMD(tib))
                let pmd = Entry(rawValue: ptlab_pte_read(slot))
                XCTAssertTrue(pmd.isHugeLeaf, "\(protection)")
                XCTAssertEqual(pmd.flags.intersection([.present, .protNone, .writable]), expected, "\(protection)")
                try mm.munmap(address: tib, length: 2 * mib)
            }
            XCTAssertEqual(mm.exit(), 0)
        }
    }
}
