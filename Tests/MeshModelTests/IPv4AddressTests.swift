import XCTest
@testable import MeshModel

final class IPv4AddressTests: XCTestCase {
    func testParsesDottedQuadsToHostOrderValues() {
        let cases: [(String, UInt32)] = [
            ("0.0.0.0", 0),
            ("255.255.255.255", 0xFFFF_FFFF),
            ("10.200.0.1", 0x0AC8_0001),
            ("192.168.1.10", 0xC0A8_010A),
            ("1.2.3.4", 0x0102_0304),
            ("127.0.0.1", 0x7F00_0001),
        ]
        for (text, value) in cases {
            XCTAssertEqual(IPv4Address(text)?.value, value, text)
        }
    }

    func testRejectsLeadingZeros() {
        for text in ["01.2.3.4", "1.2.3.04", "00.0.0.0", "10.200.000.1", "1.2.3.00"] {
            XCTAssertNil(IPv4Address(text), text)
        }
    }

    func testRejectsOctetsAbove255() {
        for text in ["256.0.0.0", "1.2.3.256", "999.1.1.1", "1000.1.1.1", "1.2.3.4294967297"] {
            XCTAssertNil(IPv4Address(text), text)
        }
    }

    func testRejectsAnythingButExactlyFourOctets() {
        for text in ["", "1.2.3", "1.2.3.4.5", "1..2.3", ".1.2.3", "1.2.3.", "...", "1", "16909060"] {
            XCTAssertNil(IPv4Address(text), text)
        }
    }

    func testRejectsSpacesSignsAndOtherNotations() {
        for text in [" 1.2.3.4", "1.2.3.4 ", "1.2. 3.4", "1.2.3.4\n", "+1.2.3.4", "1.-2.3.4",
                     "0x1.2.3.4", "1.2.3.4/24", "1,2,3,4", "a.b.c.d", "1.2.3.4:80", "1e1.2.3.4"] {
            XCTAssertNil(IPv4Address(text), text)
        }
    }

    func testRejectsNonASCIIDigits() {
        // Arabic-Indic four, fullwidth one, Devanagari one, superscript two.
        for text in ["1.2.3.\u{0664}", "\u{FF11}.2.3.4", "1.\u{0967}.3.4", "1.2.\u{00B2}.4"] {
            XCTAssertNil(IPv4Address(text), text)
        }
    }

    func testDescriptionIsDottedQuad() {
        XCTAssertEqual(IPv4Address(0x0AC8_0001).description, "10.200.0.1")
        XCTAssertEqual(IPv4Address(0).description, "0.0.0.0")
        XCTAssertEqual(IPv4Address(0xFFFF_FFFF).description, "255.255.255.255")
        XCTAssertEqual(IPv4Address(0x0100_00FF).description, "1.0.0.255")
    }

    func testDescriptionParsesBackForRandomAddresses() {
        var rng = SeededGenerator(seed: 42)
        for _ in 0..<2_000 {
            let value = UInt32.random(in: .min ... .max, using: &rng)
            let text = IPv4Address(value).description
            XCTAssertEqual(IPv4Address(text)?.value, value, text)
        }
    }

    func testNetworkOrderPutsTheFirstOctetFirstInMemory() {
        let a = ip("10.200.0.1")
        XCTAssertEqual(withUnsafeBytes(of: a.networkOrder) { Array($0) }, [10, 200, 0, 1])
        XCTAssertEqual(UInt32(bigEndian: a.networkOrder), a.value)
    }

    func testOrderFollowsNumericValueNotText() {
        let sorted = ["10.0.0.10", "10.0.0.9", "9.255.255.255", "10.0.1.0"].map { ip($0) }.sorted()
        XCTAssertEqual(sorted.map(\.description), ["9.255.255.255", "10.0.0.9", "10.0.0.10", "10.0.1.0"])
    }

    func testEncodesAsAJSONStringAndRoundTrips() throws {
        let a = ip("10.200.0.7")
        let data = try JSONEncoder().encode([a])
        XCTAssertEqual(String(decoding: data, as: UTF8.self), #"["10.200.0.7"]"#)
        XCTAssertEqual(try JSONDecoder().decode([IPv4Address].self, from: data), [a])
    }

    func testDecodingRejectsMalformedAddressesQuotingThem() {
        for text in ["10.0.0.01", "10.0.0", "256.1.1.1"] {
            assertDataCorrupted(mentioning: ["\"\(text)\""]) {
                _ = try JSONDecoder().decode([IPv4Address].self, from: Data(#"["\#(text)"]"#.utf8))
            }
        }
        XCTAssertThrowsError(try JSONDecoder().decode([IPv4Address].self, from: Data("[167772161]".utf8)))
    }
}
