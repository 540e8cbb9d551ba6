import MeshModel
import NIOCore
import NIOHTTP1
import XCTest

/// HTTP rules read requests as Cilium does: whole-value regular expressions, headers by name.
final class PolicyRuleTests: XCTestCase {
    func testMethodPathHostAndHeaderRulesWithFullMatchSemantics() async throws {
        let h = try await ProxyHarness.start()
        try await h.allow([
            HTTPRule(method: "GET", path: "/public"),
            HTTPRule(method: "POST", path: "/api/v[0-9]+/items", host: "shop\\.test"),
            HTTPRule(path: "/admin", headers: [HTTPRule.HeaderRequirement(name: "X-Role", value: "admin")]),
            HTTPRule(path: "/token", headers: [HTTPRule.HeaderRequirement(name: "authorization", value: nil)]),
        ])
        let cases: [(HTTPMethod, String, [(String, String)], HTTPResponseStatus)] = [
            (.GET, "/public", [], .ok),
            (.GET, "/public/x", [], .forbidden),
            (.GET, "/publicx", [], .forbidden),
            (.HEAD, "/public", [], .forbidden),
            (.POST, "/api/v2/items", [("host", "shop.test")], .ok),
            (.POST, "/api/v2/items", [("host", "shop.test.evil")], .forbidden),
            (.POST, "/api/v2/items?q=1", [("host", "shop.test")], .forbidden),
            (.GET, "/admin", [("x-role", "admin")], .ok),
            (.GET, "/admin", [("x-role", "user")], .forbidden),
            (.GET, "/admin", [], .forbidden),
            (.GET, "/token", [("Authorization", "Bearer x")], .ok),
            (.GET, "/token", [], .forbidden),
        ]
        let statuses = try await HTTPTestConnection.with(port: h.port) { c in
            var out: [HTTPResponseStatus] = []
            for (method, target, headers, _) in cases {
                // The host header replaces the default one when a case gives its own.
                let response = try await c.send(method, target, headers: headers)
                out.append(response.status)
            }
            return out
        }
        for (i, expected) in cases.enumerated() {
            XCTAssertEqual(statuses[i], expected.3, "\(expected.0) \(expected.1) \(expected.2)")
        }
        await h.stop()
    }

    func testNewConfigAppliesToTheNextRequestAndABadOneKeepsTheOld() async throws {
        let h = try await ProxyHarness.start()
        try await h.allow([HTTPRule(path: "/a")], generation: 1)
        try await HTTPTestConnection.with(port: h.port) { c in
            let got1 = try await c.send(.GET, "/a").status
            XCTAssertEqual(got1, .ok)
            let got2 = try await c.send(.GET, "/b").status
            XCTAssertEqual(got2, .forbidden)
            try await h.allow([HTTPRule(path: "/b")], generation: 2)
            // Same client connection, same upstream connection: the new policy still applies.
            let got3 = try await c.send(.GET, "/b").status
            XCTAssertEqual(got3, .ok)
            let got4 = try await c.send(.GET, "/a").status
            XCTAssertEqual(got4, .forbidden)

            let bad = try await h.apply(h.config(generation: 3, [HTTPRule(path: "/(unclosed")]))
            XCTAssertEqual(bad.configRejected?.generation, 3)
            XCTAssertEqual(bad.configRejected?.reason.contains("path"), true)
            let got5 = try await c.send(.GET, "/b").status
            XCTAssertEqual(got5, .ok, "the rejected config replaced the old one")

            let stale = try await h.apply(h.config(generation: 1, [HTTPRule(path: "/a")]))
            XCTAssertEqual(stale.configApplied, 2, "an older generation must leave the one in force")
            let got6 = try await c.send(.GET, "/a").status
            XCTAssertEqual(got6, .forbidden)
        }
        XCTAssertEqual(h.proxy.generation, 2)
        await h.stop()
    }
}
