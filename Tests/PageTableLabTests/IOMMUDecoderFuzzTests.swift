import XCTest
@testable import PageTableLab
@testable import PageTableLabHarness

/// A quick property test of the descriptor decoder, the future fuzz target:
/// it must be total (no input crashes it), and whatever it accepts must
/// survive re-encoding unchanged.
final class IOMMUDecoderFuzzTests: XCTestCase {
    /// SplitMix64: seeded, so a failure replays.
    struct SplitMix64: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        mutating func upTo(_ n: UInt64) -> UInt64 { UInt64.random(in: 0...n, using: &self) }
    }

    func testDecoderIsTotalAndStableOnTenThousandInputs() {
        var rng = SplitMix64(state: 0x5EED_0000_0000_0042)
        let samples = IOMMUDescriptorCodecTests.samples.map { $0.encode() }
        var accepted = 0
        var reasons = Set<IQEReason>()
        for i in 0..<10_000 {
            let width: DescriptorWidth = rng.next() & 1 == 0 ? .bits128 : .bits256
            var raw: RawDescriptor
            switch i % 4 {
            case 0:  // anything at all
                raw = RawDescriptor(qw0: rng.next(), qw1: rng.next(), qw2: rng.next(), qw3: rng.next())
            case 1:  // a plausible type with sparse bits
                let type = rng.upTo(15)
                let sparse0 = rng.next() & rng.next() & rng.next()
                let sparse1 = rng.next() & rng.next() & rng.next()
                raw = RawDescriptor(qw0: type | (sparse0 & ~0xF), qw1: sparse1)
            default:  // a valid descriptor with a few bits flipped
                raw = samples[Int(rng.upTo(UInt64(samples.count - 1)))]
                for _ in 0..<rng.upTo(3) {
                    let bit = rng.next() & 255
                    switch bit >> 6 {
                    case 0: raw.qw0 ^= 1 << (bit & 63)
                    case 1: raw.qw1 ^= 1 << (bit & 63)
                    case 2: raw.qw2 ^= 1 << (bit & 63)
                    default: raw.qw3 ^= 1 << (bit & 63)
                    }
                }
            }
            let mask = UInt8(rng.upTo(63))
            switch InvalidationDescriptor.decode(raw, width: width, maxAddressMask: mask) {
            case .success(let d):
                accepted += 1
                XCTAssertEqual(InvalidationDescriptor.decode(d.encode(), width: width, maxAddressMask: mask), .success(d),
                               "input \(i): \(raw)")
                XCTAssertEqual(d.encode().type, raw.type)
            case .failure(let e):
                reasons.insert(e.reason)
                XCTAssertEqual(e.type, raw.type)
            }
            // Bytes of any length, including too few.
            let length = Int(rng.upTo(40))
            let bytes = (0..<length).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            _ = InvalidationDescriptor.decode(bytes: bytes, width: width, maxAddressMask: mask)
        }
        // The generator reached both sides of every decision that matters.
        XCTAssertGreaterThan(accepted, 1000)
        XCTAssertTrue(reasons.isSuperset(of: [.invalidType, .reservedField]), "\(reasons)")
    }
}
