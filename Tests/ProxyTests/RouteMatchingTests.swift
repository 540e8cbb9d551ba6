import MeshModel
import NIOCore
import NIOHTTP1
import XCTest

/// Requests to a routed frontend go where the first fitting match says, with Gateway API
/// semantics, on real connections to real backends.
final class RouteMatchingTests: XCTestCase {
    func testPathHeaderQueryMethodAndHostnameMatchesInPrecedenceOrderAnd404OtherwiseOnTheSameConnection() async throws {
        let p = try await RoutedProxy.start()
        let names = ["exact", "prefix", "regex", "query", "post", "wildcard"]
        var servers: [EchoUpstream] = []
        for name in names { servers.append(try await EchoUpstream(.init(name: name))) }
        let rules = servers.map { RoutedProxy.rule($0.name, [RoutedProxy.group("shop/\($0.name)", [$0])]) }
        let any = HTTPRoute.PathMatch(type: .pathPrefix, value: "/")
        try await p.route(rules, matches: [
            ProxyRouteMatch(match: HTTPRoute.Match(path: .init(type: .exact, value: "/exact")), rule: 0),
            ProxyRouteMatch(match: HTTPRoute.Match(path: .init(type: .pathPrefix, value: "/api/")), rule: 1),
            ProxyRouteMatch(match: HTTPRoute.Match(path: .init(type: .regularExpression, value: "/items/[0-9]+")), rule: 2),
            ProxyRouteMatch(match: HTTPRoute.Match(path: any, queryParams: [.init(type: .exact, name: "version", value: "2")]),
                            rule: 3),
            ProxyRouteMatch(match: HTTPRoute.Match(path: any, method: "POST"), rule: 4),
            ProxyRouteMatch(match: HTTPRoute.Match(path: any), rule: 5, hostnames: ["*.shop.test"]),
        ])
        let cases: [(HTTPMethod, String, String, String)] = [
            (.GET, "/exact", "upstream.test", "exact"),
            (.GET, "/exact?x=1", "upstream.test", "exact"),
            (.GET, "/exact/", "upstream.test", "404"),
            (.GET, "/api", "upstream.test", "prefix"),
            (.GET, "/api/", "upstream.test", "prefix"),
            (.GET, "/api/v1/x?y=2", "upstream.test", "prefix"),
            (.GET, "/apix", "upstream.test", "404"),
            (.GET, "/items/42", "upstream.test", "regex"),
            (.GET, "/items/42?sort=up", "upstream.test", "regex"),
            (.GET, "/items/42/more", "upstream.test", "404"),
            (.GET, "/other?version=2", "upstream.test", "query"),
            (.GET, "/other?a=1&version=2", "upstream.test", "query"),
            (.GET, "/other?version=20", "upstream.test", "404"),
            (.GET, "/other?Version=2", "upstream.test", "404"),
            (.POST, "/other", "upstream.test", "post"),
            (.POST, "/exact", "upstream.test", "exact"),
            (.GET, "/other", "a.shop.test", "wildcard"),
            (.GET, "/other", "A.B.Shop.Test:8080", "wildcard"),
            (.GET, "/other", "shop.test", "404"),
        ]
        let got = try await HTTPTestConnection.with(port: p.port) { c in
            var got: [String] = []
            for (method, target, host, _) in cases {
                let r = try await c.send(method, target, headers: [("host", host)])
                got.append(r.status == .notFound ? "404" : r.headers.first(name: "x-served-by") ?? "status \(r.status.code)")
                if r.status == .notFound { XCTAssertEqual(r.text, "No route matches this request\r\n") }
            }
            return got
        }
        for (i, c) in cases.enumerated() { XCTAssertEqual(got[i], c.3, "\(c.0) \(c.1) host \(c.2)") }
        XCTAssertEqual(servers.map(\.connectionCount), [1, 1, 1, 1, 1, 1], "one kept-alive connection per backend")
        await stopAll(servers)
        await p.stop()
    }

    func testHeaderMatchSendsOnlyMatchingRequestsToTheCanary() async throws {
        let p = try await RoutedProxy.start()
        let stable = try await EchoUpstream(.init(name: "stable"))
        let canary = try await EchoUpstream(.init(name: "canary"))
        try await p.route([
            RoutedProxy.rule("canary", [RoutedProxy.group("shop/canary", [canary])]),
            RoutedProxy.rule("stable", [RoutedProxy.group("shop/stable", [stable])]),
        ], matches: [
            ProxyRouteMatch(match: HTTPRoute.Match(headers: [.init(type: .exact, name: "X-Canary", value: "yes")]), rule: 0),
            ProxyRouteMatch(match: HTTPRoute.Match(headers: [.init(type: .regularExpression, name: "x-user",
                                                                    value: "tester-[0-9]+")]), rule: 0),
            ProxyRouteMatch(match: HTTPRoute.Match(), rule: 1),
        ])
        let cases: [([(String, String)], String)] = [
            ([("x-canary", "yes")], "canary"), ([("X-CANARY", "yes")], "canary"), ([("x-canary", "no")], "stable"),
            ([("x-canary", "yes!")], "stable"), ([("x-user", "tester-7")], "canary"), ([("x-user", "tester-7x")], "stable"),
            ([("x-user", "a tester-7")], "stable"), ([], "stable"),
        ]
        let got = try await HTTPTestConnection.with(port: p.port) { c in
            var got: [String] = []
            for _ in 0..<5 {
                for (headers, _) in cases { got.append(try await c.send(.GET, "/", headers: headers).headers.first(name: "x-served-by") ?? "") }
            }
            return got
        }
        XCTAssertEqual(got, Array(repeating: cases.map(\.1), count: 5).flatMap { $0 })
        XCTAssertEqual(canary.requestCount, 15)
        XCTAssertEqual(stable.requestCount, 25)
        await stopAll([stable, canary])
        await p.stop()
    }

    func testFiltersChangeWhatTheBackendSeesAndWhatTheClientGets() async throws {
        let p = try await RoutedProxy.start()
        let backend = try await EchoUpstream(.init(name: "web"))
        let group = RoutedProxy.group("shop/web", [backend])
        let headers: [HTTPRoute.Filter] = [
            .requestHeaderModifier(.init(set: [.init(name: "X-Custom", value: "set-by-route")],
                                         add: [.init(name: "x-custom", value: "added")], remove: ["x-secret"])),
            .responseHeaderModifier(.init(set: [.init(name: "x-from-upstream", value: "rewritten")],
                                          add: [.init(name: "x-added", value: "1")], remove: ["X-Seen-Method"])),
        ]
        try await p.route([
            RoutedProxy.rule("v1", [group], filters: headers + [.urlRewrite(.init(hostname: "internal.shop",
                                                                                  path: .replacePrefixMatch("/v2")))]),
            RoutedProxy.rule("strip", [group], filters: [.urlRewrite(.init(path: .replacePrefixMatch("/")))]),
            RoutedProxy.rule("full", [group], filters: [.urlRewrite(.init(path: .replaceFullPath("/fixed")))]),
        ], matches: [
            ProxyRouteMatch(match: HTTPRoute.Match(path: .init(type: .pathPrefix, value: "/v1")), rule: 0),
            ProxyRouteMatch(match: HTTPRoute.Match(path: .init(type: .pathPrefix, value: "/strip/")), rule: 1),
            ProxyRouteMatch(match: HTTPRoute.Match(path: .init(type: .exact, value: "/old")), rule: 2),
        ])
        try await HTTPTestConnection.with(port: p.port) { c in
            let r = try await c.send(.GET, "/v1/items?q=1", headers: [("x-custom", "from-client"), ("x-secret", "s")])
            XCTAssertEqual(r.status, .ok)
            XCTAssertEqual(r.headers.first(name: "x-seen-custom"), "set-by-route,added")
            XCTAssertEqual(r.headers.first(name: "x-seen-names")?.contains("x-secret"), false)
            XCTAssertEqual(r.headers.first(name: "x-seen-host"), "internal.shop")
            XCTAssertEqual(r.headers.first(name: "x-seen-target"), "/v2/items?q=1")
            XCTAssertEqual(r.headers[canonicalForm: "x-from-upstream"], ["rewritten"])
            XCTAssertEqual(r.headers.first(name: "x-added"), "1")
            XCTAssertFalse(r.headers.contains(name: "x-seen-method"))
            let bare = try await c.send(.GET, "/v1")
            XCTAssertEqual(bare.headers.first(name: "x-seen-target"), "/v2")
            let slash = try await c.send(.GET, "/v1/")
            XCTAssertEqual(slash.headers.first(name: "x-seen-target"), "/v2/")
            let stripped = try await c.send(.GET, "/strip/a/b?z")
            XCTAssertEqual(stripped.headers.first(name: "x-seen-target"), "/a/b?z")
            XCTAssertEqual(stripped.headers.first(name: "x-seen-host"), "upstream.test", "no hostname rewrite on this rule")
            XCTAssertEqual(stripped.headers[canonicalForm: "x-from-upstream"], ["yes"], "no response filter on this rule")
            let strippedAll = try await c.send(.GET, "/strip")
            XCTAssertEqual(strippedAll.headers.first(name: "x-seen-target"), "/")
            let full = try await c.send(.GET, "/old?x=1")
            XCTAssertEqual(full.headers.first(name: "x-seen-target"), "/fixed?x=1")
        }
        await backend.stop()
        await p.stop()
    }

    func testRuleWithoutBackendsGets500AndWithoutReadyEndpointsGets503AndTheConnectionGoesOn() async throws {
        let p = try await RoutedProxy.start()
        let backend = try await EchoUpstream(.init(name: "web"))
        try await p.route([
            RoutedProxy.rule("none", []),
            RoutedProxy.rule("empty", [ProxyBackendGroup(service: "shop/empty", weight: 1, endpoints: []),
                                       RoutedProxy.group("shop/web", weight: 0, [backend])]),
            RoutedProxy.rule("web", [RoutedProxy.group("shop/web", [backend])]),
        ], matches: [
            ProxyRouteMatch(match: HTTPRoute.Match(path: .init(type: .exact, value: "/none")), rule: 0),
            ProxyRouteMatch(match: HTTPRoute.Match(path: .init(type: .exact, value: "/empty")), rule: 1),
            ProxyRouteMatch(match: HTTPRoute.Match(), rule: 2),
        ])
        let statuses = try await HTTPTestConnection.with(port: p.port) { c in
            [try await c.send(.GET, "/none").status, try await c.send(.POST, "/empty", body: ByteBuffer(string: "x")).status,
             try await c.send(.GET, "/").status]
        }
        XCTAssertEqual(statuses, [.internalServerError, .serviceUnavailable, .ok])
        XCTAssertEqual(backend.requestCount, 1, "a weight-0 group must never be chosen")
        await backend.stop()
        await p.stop()
    }

    func testRoutedRequestsAreJudgedByTheChosenBackendsL7Policy() async throws {
        let p = try await RoutedProxy.start()
        let backend = try await EchoUpstream(.init(name: "web"))
        var config = p.config([RoutedProxy.rule("web", [RoutedProxy.group("shop/web", [backend])])])
        config.l7 = ProxyHarness.config(generation: 1, port: backend.port, [HTTPRule(path: "/public")]).l7
        config.ruleNames = [99: "test default deny"]
        let reply = try await p.harness.apply(config)
        XCTAssertEqual(reply.configApplied, config.generation)
        let (allowed, denied) = try await HTTPTestConnection.with(port: p.port) { c in
            (try await c.send(.GET, "/public"), try await c.send(.GET, "/private"))
        }
        XCTAssertEqual(allowed.status, .ok)
        XCTAssertEqual(denied.status, .forbidden)
        XCTAssertEqual(backend.requestCount, 1)
        await backend.stop()
        await p.stop()
    }

    func testUpstreamLeavesFromTheClientsAddressWhenTheBackendIsANodeEndpoint() async throws {
        let p = try await RoutedProxy.start()
        let backend = try await EchoUpstream(.init(name: "web"))
        let rules = [RoutedProxy.rule("web", [RoutedProxy.group("shop/web", [backend])])]
        // The client's address is another loopback address than the proxy's own.
        try await p.route(rules)
        let ordinary = try await HTTPTestConnection.with(port: p.port, from: "127.0.0.2") { c in try await c.send(.GET, "/") }
        XCTAssertEqual(ordinary.headers.first(name: "x-seen-peer")?.hasPrefix("127.0.0.1:"), true)
        try await p.route(rules, endpoints: [ProxyEndpoint(ip: IPv4Address(0x7f00_0001), name: "web", namespace: "shop",
                                                           identity: 1000)])
        let (transparent, clientPort) = try await HTTPTestConnection.with(port: p.port, from: "127.0.0.2") { c in
            (try await c.send(.GET, "/"), c.localPort)
        }
        XCTAssertEqual(transparent.status, .ok)
        let peer = transparent.headers.first(name: "x-seen-peer") ?? ""
        XCTAssertTrue(peer.hasPrefix("127.0.0.2:"), peer)
        XCTAssertNotEqual(peer, "127.0.0.2:\(clientPort)", "a routed upstream takes a port of its own")
        await backend.stop()
        await p.stop()
    }

    func testARouteWithABadRegularExpressionIsRejectedNamingWhereAndTheOldOneStays() async throws {
        let p = try await RoutedProxy.start()
        let backend = try await EchoUpstream(.init(name: "web"))
        try await p.route([RoutedProxy.rule("web", [RoutedProxy.group("shop/web", [backend])])])
        let bad = p.config([RoutedProxy.rule("web", [RoutedProxy.group("shop/web", [backend])])], matches: [
            ProxyRouteMatch(match: HTTPRoute.Match(headers: [.init(type: .regularExpression, name: "x-a", value: "(")]), rule: 0),
        ])
        let reply = try await p.harness.apply(bad)
        let reason = reply.configRejected?.reason ?? ""
        XCTAssertTrue(reason.contains("matches[0].headers[0].value"), reason)
        XCTAssertTrue(reason.contains("shop/web"), reason)
        let badHeader = p.config([RoutedProxy.rule("web", [RoutedProxy.group("shop/web", [backend])], filters: [
            .requestHeaderModifier(.init(set: [.init(name: "x-evil", value: "a\r\nx-injected: 1")])),
        ])])
        let reply2 = try await p.harness.apply(badHeader)
        XCTAssertTrue(reply2.configRejected?.reason.contains("filters[0].set[0].value") == true, "\(String(describing: reply2))")
        let status = try await HTTPTestConnection.with(port: p.port) { c in try await c.send(.GET, "/").status }
        XCTAssertEqual(status, .ok)
        await backend.stop()
        await p.stop()
    }
}
