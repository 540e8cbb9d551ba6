import XCTest
@testable import MeshModel

/// One malformed input per row, of every kind a user types: each must be refused with
/// `invalid_argument` and a message that quotes what was wrong.
final class BadInputCorpusTests: XCTestCase {
    enum Kind: String { case endpointName = "endpoint name", labels = "labels", cidr = "CIDR" }

    struct Case {
        let kind: Kind
        let input: String
        /// What the message must quote: the input itself unless only part of it is at fault
        /// (one label out of a list).
        let offending: String
        init(_ kind: Kind, _ input: String, offending: String? = nil) {
            self.kind = kind
            self.input = input
            self.offending = offending ?? input
        }
    }

    static let corpus: [Case] = [
        // Endpoint names.
        Case(.endpointName, "Web"),
        Case(.endpointName, "WEB-1"),
        Case(.endpointName, "-web"),
        Case(.endpointName, "web-"),
        Case(.endpointName, "web_1"),
        Case(.endpointName, "web.1"),
        Case(.endpointName, "web 1"),
        Case(.endpointName, " web"),
        Case(.endpointName, "wéb"),
        Case(.endpointName, "web/../etc"),
        Case(.endpointName, String(repeating: "a", count: 41)),
        Case(.endpointName, String(repeating: "x", count: 64)),
        // Label lists.
        Case(.labels, "app", offending: "\"app\""),
        Case(.labels, "app=web,env", offending: "\"env\""),
        Case(.labels, "app:web", offending: "\"app:web\""),
        Case(.labels, "=web", offending: "\"=web\""),
        Case(.labels, "app=web,app=db", offending: "\"app\""),
        Case(.labels, "app=-web", offending: "\"-web\""),
        Case(.labels, "app=web-", offending: "\"web-\""),
        Case(.labels, "app=we b", offending: "\"we b\""),
        Case(.labels, "app=web/1", offending: "\"web/1\""),
        Case(.labels, "env=prod,tier=front end", offending: "\"front end\""),
        Case(.labels, "-app=web", offending: "\"-app\""),
        Case(.labels, "ap$p=web", offending: "\"ap$p\""),
        Case(.labels, "a/b/c=web", offending: "\"a/b/c\""),
        Case(.labels, "Example.com/tier=db", offending: "\"Example.com\""),
        Case(.labels, "example.com/=db", offending: "\"example.com/\""),
        Case(.labels, String(repeating: "k", count: 64) + "=v", offending: String(repeating: "k", count: 64)),
        Case(.labels, "k=" + String(repeating: "v", count: 64), offending: String(repeating: "v", count: 64)),
        Case(.labels, "app=wéb", offending: "\"wéb\""),
        // CIDRs.
        Case(.cidr, "10.200.0.1/24"),
        Case(.cidr, "10.200.0.0/33"),
        Case(.cidr, "10.200.0.0/-1"),
        Case(.cidr, "10.200.0.0"),
        Case(.cidr, "10.200.0.0/"),
        Case(.cidr, "10.200.0/24"),
        Case(.cidr, "10.200.0.256/24"),
        Case(.cidr, "010.200.0.0/24"),
        Case(.cidr, "10.200.0.0/024"),
        Case(.cidr, "10.200.0.0/+24"),
        Case(.cidr, "10.200.0.0/24 "),
        Case(.cidr, "10.200.0.0/twenty"),
        Case(.cidr, "10.200.0.0/24/8"),
        Case(.cidr, "fd00::/64"),
    ]

    func testEveryBadInputIsRefusedAsInvalidArgumentQuotingWhatWasWrong() {
        for c in Self.corpus {
            do {
                switch c.kind {
                case .endpointName: try EndpointName.validate(c.input)
                case .labels: _ = try Labels(parsing: c.input)
                case .cidr: _ = try IPv4CIDR(parsing: c.input)
                }
                XCTFail("\(c.kind.rawValue) \"\(c.input)\" was accepted")
            } catch {
                XCTAssertEqual(error.code, .invalidArgument, "\(c.kind.rawValue) \"\(c.input)\"")
                XCTAssertEqual(error.code.rawValue, "invalid_argument")
                XCTAssertTrue(error.message.contains(c.offending),
                              "\(c.kind.rawValue) \"\(c.input)\": message \"\(error.message)\" does not quote \(c.offending)")
            }
        }
    }

    func testEveryBadInputIsAlsoRefusedWhenDecodedFromJSON() throws {
        // The daemon decodes what the CLI sends: the same inputs must not slip in that way.
        for c in Self.corpus where c.kind != .endpointName {
            let json: String
            switch c.kind {
            case .cidr:
                json = String(decoding: try JSONEncoder().encode([c.input]), as: UTF8.self)
                XCTAssertThrowsError(try JSONDecoder().decode([IPv4CIDR].self, from: Data(json.utf8)), c.input)
            case .labels:
                // Only rows that are well-formed key=value lists can be written as a JSON object.
                guard let pairs = try? splitPairs(c.input) else { continue }
                json = String(decoding: try JSONEncoder().encode(pairs), as: UTF8.self)
                XCTAssertThrowsError(try JSONDecoder().decode(Labels.self, from: Data(json.utf8)), c.input)
            case .endpointName:
                continue
            }
        }
    }

    private struct NotAPairList: Error {}

    private func splitPairs(_ text: String) throws -> [String: String] {
        var out: [String: String] = [:]
        for part in text.split(separator: ",") {
            guard let eq = part.firstIndex(of: "="), eq != part.startIndex else { throw NotAPairList() }
            let key = String(part[..<eq])
            guard out[key] == nil else { throw NotAPairList() }
            out[key] = String(part[part.index(after: eq)...])
        }
        return out
    }
}
