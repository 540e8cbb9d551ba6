import XCTest
@testable import MeshModel

final class IPv4CIDRParsingTests: XCTestCase {
    func testParsesANetworkAndDerivesMaskAndBroadcast() throws {
        let c = try IPv4CIDR(parsing: "10.200.0.0/24")
        XCTAssertEqual(c.network, ip("10.200.0.0"))
        XCTAssertEqual(c.prefixLength, 24)
        XCTAssertEqual(c.mask, 0xFFFF_FF00)
        XCTAssertEqual(c.broadcast, ip("10.200.0.255"))
        XCTAssertEqual(c.description, "10.200.0.0/24")
    }

    func testSlashZeroCoversEverything() throws {
        let c = try IPv4CIDR(parsing: "0.0.0.0/0")
        XCTAssertEqual(c.mask, 0)
        XCTAssertEqual(c.broadcast, ip("255.255.255.255"))
        XCTAssertEqual(c.assignableCount, 4_294_967_294)
        for text in ["0.0.0.0", "10.1.2.3", "255.255.255.255", "128.0.0.0"] {
            XCTAssertTrue(c.contains(ip(text)), text)
        }
        XCTAssertEqual(c.firstFree(excluding: []), ip("0.0.0.1"))
    }

    func testSlash32IsOneAddressWithNothingToHandOut() throws {
        let c = try IPv4CIDR(parsing: "10.0.0.1/32")
        XCTAssertEqual(c.mask, 0xFFFF_FFFF)
        XCTAssertEqual(c.broadcast, c.network)
        XCTAssertTrue(c.contains(ip("10.0.0.1")))
        XCTAssertFalse(c.contains(ip("10.0.0.0")))
        XCTAssertFalse(c.contains(ip("10.0.0.2")))
        XCTAssertEqual(c.assignableCount, 0)
        XCTAssertNil(c.firstFree(excluding: []))
    }

    func testEveryPrefixLengthFrom0To32Parses() throws {
        for len in 0...32 {
            let c = try IPv4CIDR(parsing: "0.0.0.0/\(len)")
            XCTAssertEqual(c.prefixLength, len)
            XCTAssertEqual(c.mask.nonzeroBitCount, len)
            XCTAssertEqual((~c.mask).leadingZeroBitCount, len, "mask ones must be contiguous from the top")
        }
    }

    func testHostBitsSetIsRejectedSuggestingTheNetwork() {
        let cases: [(String, String)] = [
            ("10.200.0.1/24", "10.200.0.0/24"),
            ("10.200.0.255/24", "10.200.0.0/24"),
            ("10.0.0.0/6", "8.0.0.0/6"),
            ("0.0.0.1/0", "0.0.0.0/0"),
            ("192.168.1.7/30", "192.168.1.4/30"),
            ("172.16.5.4/12", "172.16.0.0/12"),
        ]
        for (text, fix) in cases {
            assertMeshError(mentioning: ["\"\(text)\"", "host bits", "did you mean \(fix)?"]) {
                _ = try IPv4CIDR(parsing: text)
            }
        }
    }

    func testTheSuggestedFixParses() throws {
        do {
            _ = try IPv4CIDR(parsing: "10.1.2.3/16")
            XCTFail("host bits accepted")
        } catch {
            XCTAssertTrue(error.message.contains("10.1.0.0/16"), error.message)
            XCTAssertEqual(try IPv4CIDR(parsing: "10.1.0.0/16").description, "10.1.0.0/16")
        }
    }

    func testBadPrefixLengthsAreRejectedQuotingTheInput() {
        for text in ["10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/", "10.0.0.0/a", "10.0.0.0/ 24",
                     "10.0.0.0/24 ", "10.0.0.0/99999999999999999999"] {
            let e = assertMeshError(mentioning: ["\"\(text)\"", "not an IPv4 CIDR"]) {
                _ = try IPv4CIDR(parsing: text)
            }
            XCTAssertNotNil(e?.hint, text)
        }
    }

    func testPrefixLengthMustBeWrittenCanonically() {
        // Int() alone would read these as 24, 24 and 0.
        for text in ["10.0.0.0/+24", "10.0.0.0/024", "0.0.0.0/-0", "0.0.0.0/00"] {
            assertMeshError(mentioning: ["\"\(text)\""]) { _ = try IPv4CIDR(parsing: text) }
        }
    }

    func testBadShapesAndAddressesAreRejectedQuotingTheInput() {
        for text in ["", "10.0.0.0", "/24", "10.0.0/24", "10.0.0.00/24", "256.0.0.0/8",
                     "10.0.0.0/24/8", " 10.0.0.0/24", "10.0.0.0//24", "fd00::/64"] {
            assertMeshError(mentioning: ["\"\(text)\""]) { _ = try IPv4CIDR(parsing: text) }
        }
    }

    func testEncodesAsAJSONStringAndRoundTrips() throws {
        let c = cidr("10.200.0.0/24")
        let data = try JSONEncoder().encode([c])
        XCTAssertEqual(String(decoding: data, as: UTF8.self), #"["10.200.0.0\/24"]"#)
        XCTAssertEqual(try JSONDecoder().decode([IPv4CIDR].self, from: data), [c])
    }

    func testDecodingRejectsInvalidCIDRsWithTheParserMessage() {
        assertDataCorrupted(mentioning: ["\"10.200.0.1/24\"", "10.200.0.0/24"]) {
            _ = try JSONDecoder().decode([IPv4CIDR].self, from: Data(#"["10.200.0.1/24"]"#.utf8))
        }
        assertDataCorrupted(mentioning: ["\"10.0.0.0/33\""]) {
            _ = try JSONDecoder().decode([IPv4CIDR].self, from: Data(#"["10.0.0.0/33"]"#.utf8))
        }
    }
}

final class IPv4CIDRAddressingTests: XCTestCase {
    func testContainsExactlyTheAddressesUnderThePrefix() {
        let c = cidr("10.200.0.0/24")
        for text in ["10.200.0.0", "10.200.0.1", "10.200.0.17", "10.200.0.255"] {
            XCTAssertTrue(c.contains(ip(text)), text)
        }
        for text in ["10.200.1.0", "10.199.255.255", "10.201.0.0", "0.0.0.0", "255.255.255.255", "11.200.0.1"] {
            XCTAssertFalse(c.contains(ip(text)), text)
        }
    }

    func testContainsAgreesWithComparingTopBitsForRandomPrefixes() {
        var rng = SeededGenerator(seed: 1234)
        for _ in 0..<2_000 {
            let len = Int.random(in: 0...32, using: &rng)
            let shift = UInt32(32 - len)
            let top: (UInt32) -> UInt64 = { UInt64($0) >> shift }  // 64-bit: a shift by 32 is legal
            let net = len == 0 ? 0 : (UInt32.random(in: .min ... .max, using: &rng) >> shift) << shift
            let c = cidr("\(IPv4Address(net))/\(len)")
            // Half the probes inside (same top bits, random rest), half anywhere.
            let anywhere = UInt32.random(in: .min ... .max, using: &rng)
            let inside = len == 32 ? net : net | (anywhere & ~c.mask)
            for a in [anywhere, inside] {
                XCTAssertEqual(c.contains(IPv4Address(a)), top(a) == top(net), "\(c) ∋ \(IPv4Address(a))")
            }
            XCTAssertTrue(c.contains(IPv4Address(inside)))
            XCTAssertTrue(c.contains(c.network) && c.contains(c.broadcast))
        }
    }

    func testAssignableCountLeavesOutNetworkAndBroadcast() {
        let cases: [(String, Int)] = [
            ("10.0.0.0/8", 16_777_214), ("10.200.0.0/16", 65_534), ("10.200.0.0/24", 254),
            ("10.200.0.0/29", 6), ("10.200.0.0/30", 2), ("10.200.0.0/31", 0), ("10.200.0.1/32", 0),
        ]
        for (text, count) in cases {
            XCTAssertEqual(cidr(text).assignableCount, count, text)
        }
    }

    func testFirstFreeOfAnEmptyPrefixIsTheAddressAfterTheNetwork() {
        XCTAssertEqual(cidr("10.200.0.0/24").firstFree(excluding: []), ip("10.200.0.1"))
        XCTAssertEqual(cidr("192.168.1.4/30").firstFree(excluding: []), ip("192.168.1.5"))
    }

    func testFirstFreeSkipsUsedAddresses() {
        let c = cidr("10.200.0.0/24")
        XCTAssertEqual(c.firstFree(excluding: [ip("10.200.0.1"), ip("10.200.0.2")]), ip("10.200.0.3"))
    }

    func testFirstFreeReturnsTheLowestHoleNotTheOneAfterTheHighestUsed() {
        let c = cidr("10.200.0.0/24")
        XCTAssertEqual(c.firstFree(excluding: [ip("10.200.0.2"), ip("10.200.0.3")]), ip("10.200.0.1"))
        XCTAssertEqual(c.firstFree(excluding: [ip("10.200.0.1"), ip("10.200.0.3"), ip("10.200.0.200")]),
                       ip("10.200.0.2"))
    }

    func testFirstFreeIgnoresUsedAddressesOutsideThePrefix() {
        let c = cidr("10.200.0.0/30")
        let outside: Set = [ip("10.200.0.0"), ip("10.200.0.3"), ip("10.200.1.1"), ip("10.199.0.1")]
        XCTAssertEqual(c.firstFree(excluding: outside), ip("10.200.0.1"))
    }

    func testFirstFreeNeverReturnsTheBroadcastAddress() {
        let c = cidr("10.200.0.0/30")
        XCTAssertEqual(c.firstFree(excluding: [ip("10.200.0.1")]), ip("10.200.0.2"))
        XCTAssertNil(c.firstFree(excluding: [ip("10.200.0.1"), ip("10.200.0.2")]))
    }

    func testFirstFreeIsNilForSlash31AndSlash32() {
        XCTAssertNil(cidr("10.200.0.0/31").firstFree(excluding: []))
        XCTAssertNil(cidr("10.200.0.3/32").firstFree(excluding: []))
    }

    func testFirstFreeIsNilWhenEveryAssignableAddressIsUsed() {
        let c = cidr("10.200.0.0/24")
        let all = Set((c.network.value + 1 ..< c.broadcast.value).map(IPv4Address.init))
        XCTAssertEqual(all.count, 254)
        XCTAssertNil(c.firstFree(excluding: all))
        XCTAssertEqual(c.firstFree(excluding: all.subtracting([ip("10.200.0.254")])), ip("10.200.0.254"))
    }

    func testAllocatingRepeatedlyHandsOutEachAssignableAddressOnceInOrder() {
        let c = cidr("10.200.0.16/28")
        var used: Set<IPv4Address> = []
        var handedOut: [IPv4Address] = []
        while let a = c.firstFree(excluding: used) {
            handedOut.append(a)
            used.insert(a)
            if handedOut.count > 64 { break }
        }
        XCTAssertEqual(handedOut.count, c.assignableCount)
        XCTAssertEqual(handedOut.map(\.description), (17...30).map { "10.200.0.\($0)" })
    }

    /// Property: for random prefixes and random used-sets, `firstFree` is the lowest
    /// address strictly between network and broadcast that is not used, or nil.
    func testFirstFreeMatchesABruteForceSearchOverRandomUsedSets() {
        var rng = SeededGenerator(seed: 0x5EED)
        var exhaustedSeen = 0, foundSeen = 0
        for round in 0..<600 {
            let len = Int.random(in: 22...32, using: &rng)
            let shift = UInt32(32 - len)
            let net = (UInt32.random(in: .min ... .max, using: &rng) >> shift) << shift
            let c = cidr("\(IPv4Address(net))/\(len)")
            let size = UInt32(1) << shift
            // Fill density varies per round, from empty to completely full.
            let density = round % 10 == 0 ? 1.0 : Double.random(in: 0...1, using: &rng)
            var used: Set<IPv4Address> = []
            for offset in 0..<size where Double.random(in: 0..<1, using: &rng) < density {
                used.insert(IPv4Address(net + offset))
            }
            // Addresses outside the prefix must not matter.
            for _ in 0..<3 { used.insert(IPv4Address(UInt32.random(in: .min ... .max, using: &rng))) }

            let expected: IPv4Address? = size <= 2 ? nil
                : (1 ..< size - 1).lazy.map { IPv4Address(net + $0) }.first { !used.contains($0) }
            let got = c.firstFree(excluding: used)
            XCTAssertEqual(got, expected, "round \(round): \(c) with \(used.count) used")
            if let got {
                foundSeen += 1
                XCTAssertTrue(c.contains(got))
                XCTAssertNotEqual(got, c.network)
                XCTAssertNotEqual(got, c.broadcast)
                XCTAssertFalse(used.contains(got))
            } else {
                exhaustedSeen += 1
            }
        }
        // The generator must have exercised both outcomes, or the property proved little.
        XCTAssertGreaterThan(exhaustedSeen, 20)
        XCTAssertGreaterThan(foundSeen, 200)
    }
}
