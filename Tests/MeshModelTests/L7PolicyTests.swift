import XCTest
@testable import MeshModel

/// HTTP rules from document to verdict: what the parser keeps, which policy map entries
/// send a flow to the proxy, and how the proxy then judges each request, all written from
/// Cilium's documented meaning (the Star Wars demo's `rule1` among them).
final class L7PolicyTests: XCTestCase {
    static let deathstar = PolicyCompiler.EndpointInfo(id: 1, name: "deathstar", labels: try! Labels(["org": "empire", "class": "deathstar"]),
                                                       ipv4: IPv4Address("10.200.0.1")!)
    static let tiefighter = PolicyCompiler.EndpointInfo(id: 2, name: "tiefighter", labels: try! Labels(["org": "empire", "class": "tiefighter"]),
                                                        ipv4: IPv4Address("10.200.0.2")!)
    static let xwing = PolicyCompiler.EndpointInfo(id: 3, name: "xwing", labels: try! Labels(["org": "alliance", "class": "xwing"]),
                                                   ipv4: IPv4Address("10.200.0.3")!)

    static func rule1(http: PolicyTree = [["method": "POST", "path": "/v1/request-landing"]]) -> PolicyTree {
        TestDocs.cnp("rule1", spec: [
            "description": "L7 policy to restrict access to specific HTTP call",
            "endpointSelector": ["matchLabels": ["org": "empire", "class": "deathstar"]],
            "ingress": [["fromEndpoints": [["matchLabels": ["org": "empire"]]],
                         "toPorts": [["ports": [["port": "80", "protocol": "TCP"]], "rules": ["http": http]]]]],
        ])
    }

    func compile(_ docs: PolicyTree...) throws -> PolicyCompiler.Result {
        PolicyCompiler.compile(policies: try PolicyParser.parse(documents: docs, source: "t.yaml"),
                               endpoints: [Self.deathstar, Self.tiefighter, Self.xwing], hostAddresses: [IPv4Address("169.254.1.1")!])
    }

    func index(_ r: PolicyCompiler.Result) throws -> L7PolicyIndex {
        let eps = [Self.deathstar, Self.tiefighter, Self.xwing].map {
            ProxyEndpoint(ip: $0.ipv4, name: $0.name, namespace: "default", identity: r.endpointIdentity[$0.id]!)
        }
        return try L7PolicyIndex(ProxyConfig(generation: 1, endpoints: eps, ipcache: [], l7: r.l7, ruleNames: [:]))
    }

    func request(_ method: String, _ target: String, host: String = "deathstar", headers: [(String, String)] = []) -> L7Request {
        L7Request(method: method, target: target, host: host, headers: headers.map { (name: $0.0.lowercased(), value: $0.1) })
    }

    /// The proxy names a peer as the datapath does: an endpoint's identity, else the
    /// longest matching prefix's, else the world's.
    func testTheProxyFindsAnAddresssIdentityByLongestPrefix() throws {
        let entries = try [("10.0.0.0/8", 100), ("10.1.0.0/16", 101), ("10.1.2.3/32", 102), ("10.1.2.0/24", 103),
                           ("169.254.1.1/32", Int(PolicyCompiler.hostIdentity)), ("192.0.2.0/24", 104)].map {
            ProxyIPCacheEntry(prefix: try IPv4CIDR(parsing: $0.0), identity: UInt32($0.1))
        }
        let web = ProxyEndpoint(ip: IPv4Address("10.1.2.4")!, name: "web", namespace: "default", identity: 300)
        let index = try L7PolicyIndex(ProxyConfig(generation: 1, endpoints: [web], ipcache: entries, l7: [], ruleNames: [:]))
        let expected: [(String, UInt32)] = [("10.9.9.9", 100), ("10.1.9.9", 101), ("10.1.2.3", 102), ("10.1.2.5", 103),
                                            ("10.1.2.4", 300), ("169.254.1.1", PolicyCompiler.hostIdentity),
                                            ("192.0.2.255", 104), ("192.0.3.1", PolicyCompiler.worldIdentity), ("11.0.0.1", PolicyCompiler.worldIdentity)]
        for (address, identity) in expected {
            XCTAssertEqual(index.identity(of: IPv4Address(address)!), identity, address)
        }
        XCTAssertEqual(index.hostAddress, IPv4Address("169.254.1.1"))
        let everything = try L7PolicyIndex(ProxyConfig(generation: 1, endpoints: [], ipcache: entries + [ProxyIPCacheEntry(prefix: try IPv4CIDR(parsing: "0.0.0.0/0"), identity: 105)],
                                                       l7: [], ruleNames: [:]))
        XCTAssertEqual(everything.identity(of: IPv4Address("11.0.0.1")!), 105, "a /0 matches what nothing longer does")
        XCTAssertEqual(everything.identity(of: IPv4Address("10.1.2.3")!), 102)
    }

    /// The ipcache travels to the proxy as one string; it must come back exactly, and a
    /// damaged one must fail to decode rather than give the proxy wrong identities.
    func testTheProxysIPCacheSurvivesItsCompactEncodingAndRefusesDamage() throws {
        let entries = try [("0.0.0.0/0", 2), ("10.0.0.0/8", 16_777_216), ("192.0.2.7/32", 4_294_967_295), ("255.255.255.255/32", 0)].map {
            ProxyIPCacheEntry(prefix: try IPv4CIDR(parsing: $0.0), identity: UInt32($0.1))
        }
        let config = ProxyConfig(generation: 7, endpoints: [], ipcache: entries, l7: [], ruleNames: [:])
        let data = try JSONEncoder().encode(config)
        XCTAssertTrue(String(decoding: data, as: UTF8.self).contains(#""ipcache":"0.0.0.0\/0=2 10.0.0.0\/8=16777216 192.0.2.7\/32=4294967295 255.255.255.255\/32=0""#),
                      String(decoding: data, as: UTF8.self))
        XCTAssertEqual(try JSONDecoder().decode(ProxyConfig.self, from: data), config)
        XCTAssertEqual(try JSONDecoder().decode(ProxyConfig.self, from: try JSONEncoder().encode(ProxyConfig.empty)).ipcache, [])
        // A proxy of an older meshd (its hello names no protocol) reads the array of
        // objects; this proxy reads that form too, from an older meshd.
        let legacy = JSONEncoder()
        legacy.userInfo[CompactIPCache.legacyArrayKey] = true
        let old = String(decoding: try legacy.encode(config), as: UTF8.self)
        XCTAssertTrue(old.contains(#""ipcache":[{"#), old)
        XCTAssertEqual(try JSONDecoder().decode(ProxyConfig.self, from: Data(old.utf8)), config)
        let oldHello = #"{"pid":7,"port":15001,"generation":3,"uptimeSeconds":1.5}"#
        XCTAssertNil(try JSONDecoder().decode(ProxyHello.self, from: Data(oldHello.utf8)).protocolVersion)
        XCTAssertEqual(ProxyHello(pid: 7, port: 15001, generation: 3, uptimeSeconds: 1).protocolVersion, ProxyHello.currentProtocol)

        let text = String(decoding: data, as: UTF8.self)
        for damaged in ["0.0.0.0\\/0=2 10.0.0.0\\/8", "0.0.0.0\\/0=x", "10.0.0.1\\/8=3", "10.0.0.0\\/33=3", "10.0.0.0=3",
                        "010.0.0.0\\/8=3", "256.0.0.0\\/8=3", "10.0.0\\/8=3", "10.0.0.0\\/8=4294967296", "0.0.0.0\\/0=2  10.0.0.0\\/8=3",
                        " 0.0.0.0\\/0=2", "0.0.0.0\\/0=2 10.0.0.0\\/8=3 ", "0.0.0.0\\/0=-2"] {
            let bad = text.replacingOccurrences(of: #"0.0.0.0\/0=2 10.0.0.0\/8=16777216"#, with: damaged)
            XCTAssertNotEqual(bad, text)
            XCTAssertThrowsError(try JSONDecoder().decode(ProxyConfig.self, from: Data(bad.utf8)), damaged)
        }
    }

    func testTheStarWarsRuleSendsEmpireFlowsToTheProxyAndAllowsOnlyTheLandingRequest() throws {
        let r = try compile(Self.rule1())
        let port80 = r.entries.filter { $0.endpointID == 1 && $0.direction == .ingress && $0.proto == 6 && $0.portPrefix == 80 }
        XCTAssertFalse(port80.isEmpty)
        XCTAssertTrue(port80.allSatisfy(\.l7), "every empire peer reaches port 80 through the proxy")
        XCTAssertNil(r.entries.first { $0.identity == r.endpointIdentity[3] }, "the xwing has no entry: dropped at L4")

        let idx = try index(r)
        let tie = Self.tiefighter.ipv4, ds = Self.deathstar.ipv4
        let landing = idx.decide(request("POST", "/v1/request-landing"), source: tie, destination: ds, port: 80)
        XCTAssertTrue(landing.allowed)
        XCTAssertEqual(landing.direction, .ingress)
        XCTAssertEqual(landing.rule, "default/rule1 spec.ingress[0] (allow)")
        let exhaust = idx.decide(request("PUT", "/v1/exhaust-port"), source: tie, destination: ds, port: 80)
        XCTAssertFalse(exhaust.allowed)
        XCTAssertTrue(exhaust.rule.contains("default deny (ingress)"), exhaust.rule)
        XCTAssertFalse(idx.decide(request("GET", "/v1/request-landing"), source: tie, destination: ds, port: 80).allowed, "method must match")
        XCTAssertFalse(idx.decide(request("POST", "/v1/request-landing/x"), source: tie, destination: ds, port: 80).allowed,
                       "a path is a whole match, not a prefix")
        XCTAssertFalse(idx.decide(request("POST", "/v1/request-landing?force=1"), source: tie, destination: ds, port: 80).allowed,
                       "the query is part of the path Envoy matches")
        XCTAssertTrue(idx.decide(request("GET", "/"), source: tie, destination: Self.xwing.ipv4, port: 80).allowed,
                      "the xwing has no L7 rules: requests to it are not judged")
    }

    func testRegularExpressionsHostAndHeaderRequirementsMustAllHold() throws {
        let r = try compile(Self.rule1(http: [
            ["method": "GET|HEAD", "path": "/public/.*", "host": "deathstar(:80)?", "headers": ["X-Empire: true", "X-Trace"]],
            ["method": "DELETE", "headerMatches": [["name": "X-Token", "value": "vader"]]],
        ]))
        let idx = try index(r)
        let tie = Self.tiefighter.ipv4, ds = Self.deathstar.ipv4
        func allowed(_ req: L7Request) -> Bool { idx.decide(req, source: tie, destination: ds, port: 80).allowed }
        XCTAssertTrue(allowed(request("HEAD", "/public/plans", host: "deathstar:80", headers: [("X-Empire", "true"), ("x-trace", "1")])))
        XCTAssertFalse(allowed(request("GET", "/public/plans", host: "deathstar:80", headers: [("X-Empire", "false"), ("x-trace", "1")])),
                       "a header with a value must have exactly that value")
        XCTAssertFalse(allowed(request("GET", "/public/plans", headers: [("X-Empire", "true")])), "a header named alone must be present")
        XCTAssertFalse(allowed(request("GET", "/public/plans", host: "rebels", headers: [("X-Empire", "true"), ("X-Trace", "")])))
        XCTAssertFalse(allowed(request("GETX", "/public/plans", headers: [("X-Empire", "true"), ("X-Trace", "")])), "GET|HEAD is anchored")
        XCTAssertTrue(allowed(request("DELETE", "/anything", headers: [("X-Token", "vader")])))
        XCTAssertFalse(allowed(request("DELETE", "/anything", headers: [("X-Token", "luke")])))
    }

    func testAnL4RuleOnTheSamePortOpensItToEveryRequestAndKeepsTheFlowOffTheProxy() throws {
        let open = TestDocs.cnp("open", spec: [
            "endpointSelector": ["matchLabels": ["class": "deathstar"]],
            "ingress": [["fromEndpoints": [["matchLabels": ["class": "tiefighter"]]], "toPorts": [["ports": [["port": "80"]]]]]],
        ])
        let r = try compile(Self.rule1(), open)
        let tieID = r.endpointIdentity[2]!
        let tieEntry = r.entries.first { $0.endpointID == 1 && $0.identity == tieID && $0.proto == 6 }
        XCTAssertEqual(tieEntry?.l7, false, "the tiefighter has an L4 rule for port 80: no proxy")
        let self80 = r.entries.first { $0.endpointID == 1 && $0.identity == r.endpointIdentity[1]! && $0.proto == 6 }
        XCTAssertEqual(self80?.l7, true, "other empire peers still go through the proxy")
        let idx = try index(r)
        XCTAssertTrue(idx.decide(request("PUT", "/v1/exhaust-port"), source: Self.tiefighter.ipv4, destination: Self.deathstar.ipv4, port: 80).allowed)
    }

    func testEgressRulesAreJudgedAtTheSourceAndBothDirectionsMustAllow() throws {
        let egress = TestDocs.cnp("tie-out", spec: [
            "endpointSelector": ["matchLabels": ["class": "tiefighter"]],
            "egress": [["toEndpoints": [["matchLabels": ["class": "deathstar"]]],
                        "toPorts": [["ports": [["port": "80"]], "rules": ["http": [["path": "/v1/.*"]]]]]]],
        ])
        let r = try compile(Self.rule1(), egress)
        XCTAssertTrue(r.entries.contains { $0.endpointID == 2 && $0.direction == .egress && $0.l7 })
        let idx = try index(r)
        let tie = Self.tiefighter.ipv4, ds = Self.deathstar.ipv4
        XCTAssertTrue(idx.decide(request("POST", "/v1/request-landing"), source: tie, destination: ds, port: 80).allowed)
        let v = idx.decide(request("POST", "/v2/request-landing"), source: tie, destination: ds, port: 80)
        XCTAssertFalse(v.allowed)
        XCTAssertEqual(v.direction, .egress, "the source's egress refused it first")
    }

    /// Plain text and text-then-`.*` are compared as strings, not run as Regex: every
    /// answer must still be Regex's, including for text Regex reads by Characters (a
    /// combining accent after the prefix, composed and decomposed forms) and line breaks,
    /// which `.` does not match.
    func testPatternsComparedAsTextAnswerAsTheRegexWould() throws {
        let patterns = ["GET", "/v1/.*", "/.*", ".*", "", "/v1/request-landing", "é", "/a.b", "/v1/[a-z]+", "/x.*y", "GET|POST"]
        let inputs = ["GET", "get", "GETX", "/v1/", "/v1/x", "/v1", "/v2/x", "/", "", "/\u{301}x", "/v1/\u{301}", "e\u{301}", "é",
                      "/a.b", "/aXb", "/v1/abc", "/x123y", "/v1/a\nb", "/a\r\nb", "/v1/a\u{2028}", "POST", "/v1/\u{85}"]
        for pattern in patterns {
            let fast = try L7Pattern(pattern)
            let regex = try Regex(pattern)
            for input in inputs {
                XCTAssertEqual(fast.wholeMatch(input), (try? regex.wholeMatch(in: input)) != nil,
                               "pattern \"\(pattern)\" on \"\(input.debugDescription)\"")
            }
        }
        // The common forms take the string path; the rest stay regular expressions.
        guard case .equal = try L7Pattern("GET").form, case .prefix("/v1/") = try L7Pattern("/v1/.*").form,
              case .regex = try L7Pattern("/v1/[a-z]+").form, case .regex = try L7Pattern("/x.*y").form else {
            return XCTFail("patterns not classified as expected")
        }
        XCTAssertThrowsError(try L7Pattern("/v1/(", at: "path")) { XCTAssertTrue("\($0)".contains("path")) }
    }

    func testBadHTTPRulesAreRefusedWhereTheyAre() {
        let cases: [(PolicyTree, [String])] = [
            ([["path": "/v1/(unclosed"]], ["rules.http[0].path", "not a valid regular expression"]),
            ([["headers": ["Bad Header: x"]]], ["rules.http[0].headers[0]", "is not a header"]),
            ([["headerMatches": [["name": "X", "secret": ["name": "s"]]]]], ["headerMatches[0].secret", "secrets are not supported"]),
            ([["headerMatches": [["name": "X", "mismatch": "ADD"]]]], ["headerMatches[0].mismatch", "not supported"]),
            ([["headerMatches": [["value": "x"]]]], ["headerMatches[0]", "missing required field \"name\""]),
            ([["methd": "GET"]], ["rules.http[0].methd", "did you mean \"method\""]),
        ]
        for (http, mentions) in cases {
            assertMeshError(mentioning: mentions) { _ = try PolicyParser.parse(documents: [Self.rule1(http: http)], source: "t.yaml") }
        }
        let udp = TestDocs.cnp("udp", spec: [
            "endpointSelector": [:],
            "ingress": [["toPorts": [["ports": [["port": "53", "protocol": "UDP"]], "rules": ["http": [["method": "GET"]]]]]]],
        ])
        assertMeshError(mentioning: ["HTTP rules need TCP", "UDP"]) { _ = try PolicyParser.parse(documents: [udp], source: "t.yaml") }
    }

    func testAnEmptyHTTPListIsNoL7RuleAsInCilium() throws {
        let r = try compile(Self.rule1(http: []))
        XCTAssertTrue(r.entries.allSatisfy { !$0.l7 })
        XCTAssertTrue(r.l7.isEmpty)
    }
}
