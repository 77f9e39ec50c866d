import Foundation
import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// NUMACheck on the machine the tests run on (usually one node: the
/// two-node proof is scripts/numa-vm-check), and against a topology that
/// lies, to see that the check is able to fail.
final class NUMACheckTests: XCTestCase {
    func testEveryApplicableCheckHoldsHere() throws {
        let topology = NUMATopology.current
        try XCTSkipUnless(topology.available, "no NUMA support in this kernel: nothing to check")
        let parameters = NUMACheck.Parameters()
        let result = try NUMACheck.run(parameters, topology: topology)

        XCTAssertEqual(result.nodes, topology.nodes.count)
        XCTAssertEqual(result.placementOK, true)
        for node in try XCTUnwrap(result.placement) {
            XCTAssertEqual(node.resident, [node.node: node.pages], "move_pages must find node \(node.node)'s pages there")
        }
        XCTAssertEqual(result.pagetablesNodeLocal, true)
        let tables = try XCTUnwrap(result.pageTables)
        XCTAssertEqual(tables.tables.map(\.level), ["pgd", "pud", "pmd", "pte", "pte"],
                       "4 MiB touched per 2 MiB: two PTE tables under one PMD and one PUD table")
        XCTAssertEqual(tables.dataPages, 2)
        XCTAssertTrue(result.countersOK, "\(result.counters.filter { !$0.ok })")
        XCTAssertTrue(result.checksPassed)

        let fallback = try XCTUnwrap(result.fallback)
        XCTAssertEqual(fallback.allocatedOnNode, parameters.nodeBudgetPages, "the node must fill to its exact budget")
        if topology.nodes.count == 1 {
            XCTAssertNil(result.fallbackAllocations, "one node: the fallback is not applicable, not passed")
            XCTAssertNil(result.fallbackOK)
            XCTAssertFalse(result.numaProven)
            XCTAssertNotNil(fallback.exhaustedError, "past the only node's budget the allocation must fail")
            XCTAssertTrue(result.notApplicable.contains { $0.hasPrefix("fallback") })
        } else {
            XCTAssertEqual(result.fallbackAllocations, parameters.fallbackPages)
            XCTAssertEqual(fallback.numaForeign, parameters.fallbackPages)
            XCTAssertEqual(fallback.numaMiss, parameters.fallbackPages)
            XCTAssertTrue(result.numaProven)
        }
    }

    /// A check that cannot run must say null, not drop the key or pass.
    func testVerdictKeysAreAlwaysPresent() throws {
        let result = try NUMACheck.run()
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: JSONEncoder().encode(result)) as? [String: Any])
        for key in ["nodes", "placement_ok", "pagetables_node_local", "fallback_allocations", "fallback_ok",
                    "counters_ok", "checks_passed", "numa_proven", "not_applicable"] {
            XCTAssertNotNil(object[key], "missing key \(key)")
        }
        if result.nodes == 1 {
            XCTAssertTrue(object["fallback_allocations"] is NSNull)
        }
    }

    /// A topology that claims a node 1 the kernel does not have (when it
    /// has one node): mbind refuses it, the memory lands on node 0, and the
    /// check must say so rather than believe the labels.
    func testPagesOnTheWrongNodeFailTheCheck() throws {
        let real = NUMATopology.current
        try XCTSkipUnless(real.available && real.nodes.count == 1 && real.nodes[0].id == 0,
                          "needs a machine with exactly one node, node 0")
        let node0 = real.nodes[0]
        let fake = NUMATopology(available: true,
                                nodes: [node0, .init(id: 1, cpus: [], sizeBytes: node0.sizeBytes)],
                                distances: [[10, 20], [20, 10]])
        let result = try NUMACheck.run(topology: fake)
        XCTAssertEqual(result.placementOK, false)
        let claimed = try XCTUnwrap(result.placement?.first { $0.node == 1 })
        XCTAssertEqual(claimed.labelledOnNode, claimed.pages, "the descriptors believe node 1")
        XCTAssertEqual(claimed.resident, [0: claimed.pages], "the kernel put them on node 0")
        XCTAssertEqual(result.fallbackOK, false, "the exhausted node's pages were never on it")
        XCTAssertFalse(result.checksPassed)
        XCTAssertFalse(result.numaProven)
    }

    func testRefusesWhileAnAllocatorIsLoaded() throws {
        let allocator = try PageAllocator()
        defer { allocator.unload() }
        XCTAssertThrowsError(try NUMACheck.run()) { error in
            XCTAssertEqual(error as? PageAllocError, .alreadyLoaded)
        }
    }

    func testRejectsParametersItCannotUse() {
        var parameters = NUMACheck.Parameters()
        parameters.fallbackPages = 0
        XCTAssertThrowsError(try NUMACheck.run(parameters))
        parameters = NUMACheck.Parameters()
        parameters.placementPages = parameters.nodeBudgetPages
        XCTAssertThrowsError(try NUMACheck.run(parameters)) { error in
            XCTAssertTrue("\(error)".contains("half of node_budget_pages"), "\(error)")
        }
    }
}
