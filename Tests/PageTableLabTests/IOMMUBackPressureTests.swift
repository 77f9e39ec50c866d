import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

final class IOMMUBackPressureTests: XCTestCase {
    static let descriptor = InvalidationDescriptor.pasidCache(.global).encode()

    func testTheRingWrapsAroundManyTimes() throws {
        try withIOMMU { _, iommu in
            var submitted = 0
            for i in 0..<1000 {
                let n = 1 + i % 5
                try iommu.qiSubmitSync([RawDescriptor](repeating: Self.descriptor, count: n))
                submitted += n
            }
            // Each submission took n + 1 slots: the ring of 256 went round ~16 times.
            XCTAssertGreaterThan(submitted + 1000, 15 * iommu.queueLength)
            let stats = iommu.counters.snapshot()
            XCTAssertEqual(stats.qiDescriptors, UInt64(submitted))
            XCTAssertEqual(stats.executedByType[6], UInt64(submitted))
            XCTAssertEqual(stats.executedByType[4], 1000)
            XCTAssertEqual(stats.queueFull, 0)
            XCTAssertEqual(iommu.read(.iqh), iommu.read(.iqt))
            XCTAssertEqual(iommu.read(.iqt), UInt64(((submitted + 1000) % iommu.queueLength) << 5))
            XCTAssertEqual(iommu.freeSlots, iommu.queueLength)
        }
    }

    func testAFullQueueMakesSubmittersWaitAndEveryoneCompletes() throws {
        try withIOMMU { _, iommu in
            // With the hardware stalled, two submissions of 100 (+ wait) fill
            // 202 of 256 slots; a third needs 102 and must wait for space.
            iommu.faultInjection.stallFetching()
            let failures = CallCounter()
            let batch = [RawDescriptor](repeating: Self.descriptor, count: 100)
            let submitters = (0..<3).map { _ in
                RCUThread {
                    for _ in 0..<2 {
                        do { try iommu.qiSubmitSync(batch) } catch { failures.bump() }
                    }
                }
            }
            try waitUntil("no submitter ever found the queue full") { iommu.counters.snapshot().queueFull >= 1 }
            XCTAssertEqual(iommu.freeSlots, iommu.queueLength - 202)
            iommu.faultInjection.resumeFetching()
            for s in submitters { s.join() }

            XCTAssertEqual(failures.count, 0)
            let stats = iommu.counters.snapshot()
            XCTAssertEqual(stats.qiSubmissions, 6)
            XCTAssertEqual(stats.qiDescriptors, 600)
            XCTAssertEqual(stats.executedByType[6], 600)
            XCTAssertEqual(stats.executedByType[4], 6)
            XCTAssertEqual(stats.statusWrites, 6)
            XCTAssertEqual(iommu.freeSlots, iommu.queueLength)
            XCTAssertEqual(iommu.read(.iqh), iommu.read(.iqt))
            XCTAssertEqual(iommu.qiWaitMicroseconds.totalCount, 6)
        }
    }

    func testConcurrentSubmittersOfMixedBatchesAllComplete() throws {
        try withIOMMU { _, iommu in
            let failures = CallCounter()
            let submitters = (0..<4).map { t in
                RCUThread {
                    for i in 0..<250 {
                        let n = 1 + (i * 7 + t) % 16
                        do {
                            try iommu.qiSubmitSync([RawDescriptor](repeating: Self.descriptor, count: n))
                        } catch {
                            failures.bump()
                        }
                    }
                }
            }
            for s in submitters { s.join() }
            let expected = (0..<4).reduce(0) { sum, t in sum + (0..<250).reduce(0) { $0 + 1 + ($1 * 7 + t) % 16 } }
            XCTAssertEqual(failures.count, 0)
            let stats = iommu.counters.snapshot()
            XCTAssertEqual(stats.qiDescriptors, UInt64(expected))
            XCTAssertEqual(stats.executedByType[6], UInt64(expected))
            XCTAssertEqual(stats.statusWrites, 1000)
            XCTAssertEqual(iommu.freeSlots, iommu.queueLength)
        }
    }
}
