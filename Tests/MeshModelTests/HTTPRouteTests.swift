import Foundation
import XCTest
@testable import MeshModel

/// Gateway API HTTPRoutes bound to Services (GAMMA): read as the API defines them, refused
/// by name where SwiftMesh does not implement a field, and ordered by the API's precedence
/// once resolved against Services and endpoints.
final class HTTPRouteTests: XCTestCase {
    static func route(_ name: String = "web", spec: PolicyTree, apiVersion: String = "gateway.networking.k8s.io/v1") -> PolicyTree {
        TestDocs.document(apiVersion, "HTTPRoute", name: name, namespace: nil, body: [("spec", spec)])
    }

    func read(_ spec: PolicyTree) throws(MeshError) -> HTTPRoute {
        let routes = try Manifest.read(documents: [Self.route(spec: spec)], source: "r.yaml").routes
        guard let r = routes.first else { throw MeshError.invalid("no route read") }
        return r
    }

    func testACanaryWithMatchesFiltersTimeoutsAndRetryReadsAsWritten() throws {
        let r = try read([
            "parentRefs": [["group": "", "kind": "Service", "name": "web", "port": 80]],
            "hostnames": ["web.example.com"],
            "rules": [
                ["matches": [["path": ["type": "Exact", "value": "/login"], "method": "POST",
                              "headers": [["name": "X-Canary", "value": "yes"]],
                              "queryParams": [["type": "RegularExpression", "name": "v", "value": "[0-9]+"]]]],
                 "filters": [["type": "RequestHeaderModifier", "requestHeaderModifier": ["set": [["name": "x-env", "value": "canary"]], "remove": ["x-debug"]]],
                             ["type": "URLRewrite", "urlRewrite": ["path": ["type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"]]]],
                 "backendRefs": [["name": "web-v2", "port": 80]],
                 "timeouts": ["request": "1m30s", "backendRequest": "500ms"],
                 "retry": ["attempts": 2, "backoff": "10ms", "codes": [503]]],
                ["backendRefs": [["name": "web-v1", "port": 80, "weight": 90], ["name": "web-v2", "port": 80, "weight": 10]]],
            ],
        ])
        XCTAssertEqual(r.key, "default/web")
        XCTAssertEqual(r.parents, [HTTPRoute.ParentRef(name: "web", namespace: "default", port: 80)])
        XCTAssertEqual(r.hostnames, ["web.example.com"])
        let first = r.rules[0]
        XCTAssertEqual(first.matches, [HTTPRoute.Match(path: .init(type: .exact, value: "/login"),
                                                       headers: [.init(type: .exact, name: "x-canary", value: "yes")],
                                                       queryParams: [.init(type: .regularExpression, name: "v", value: "[0-9]+")],
                                                       method: "POST")], "header names compare without case: kept lower case")
        XCTAssertEqual(first.filters, [.requestHeaderModifier(.init(set: [.init(name: "x-env", value: "canary")], remove: ["x-debug"])),
                                       .urlRewrite(.init(path: .replacePrefixMatch("/v2")))])
        XCTAssertEqual(first.timeouts, HTTPRoute.Timeouts(request: 90, backendRequest: 0.5))
        XCTAssertEqual(first.retry, HTTPRoute.Retry(attempts: 2, backoffSeconds: 0.01, codes: [503]))
        XCTAssertEqual(r.rules[1].backends.map(\.weight), [90, 10])
        XCTAssertEqual(r.rules[1].matches, [], "no match: every request")
    }

    func testRefusalsNameTheFieldAndSayWhy() {
        let parent: PolicyTree = ["kind": "Service", "name": "web"]
        assertMeshError(mentioning: ["spec.parentRefs[0].kind", "Deployment", "Service (mesh) or a Gateway (ingress)"]) {
            _ = try self.read(["parentRefs": [["kind": "Deployment", "name": "gw"]], "rules": []])
        }
        assertMeshError(mentioning: ["spec.rules[0].filters[0].type", "RequestMirror", "not supported"]) {
            _ = try self.read(["parentRefs": [parent], "rules": [["filters": [["type": "RequestMirror", "requestMirror": [:]]]]]])
        }
        assertMeshError(mentioning: ["spec.rules[0].backendRefs[0]", "port"]) {
            _ = try self.read(["parentRefs": [parent], "rules": [["backendRefs": [["name": "web"]]]]])
        }
        assertMeshError(mentioning: ["spec.rules[0].timeouts", "longer than request"]) {
            _ = try self.read(["parentRefs": [parent], "rules": [["timeouts": ["request": "1s", "backendRequest": "2s"]]]])
        }
        assertMeshError(mentioning: ["spec.rules[0].timeouts.request", "\"10 seconds\" is not a duration"]) {
            _ = try self.read(["parentRefs": [parent], "rules": [["timeouts": ["request": "10 seconds"]]]])
        }
        assertMeshError(mentioning: ["spec.rules[0].matches[0].path.value", "absolute path"]) {
            _ = try self.read(["parentRefs": [parent], "rules": [["matches": [["path": ["type": "PathPrefix", "value": "api"]]]]]])
        }
        assertMeshError(mentioning: ["spec.rules[0].matches[0].headers[0].value", "regular expression"]) {
            _ = try self.read(["parentRefs": [parent], "rules": [["matches": [["headers": [["type": "RegularExpression", "name": "a", "value": "("]]]]]]])
        }
        assertMeshError(mentioning: ["spec.rules[0].retry.codes[0]", "200"]) {
            _ = try self.read(["parentRefs": [parent], "rules": [["retry": ["codes": [200]]]]])
        }
        assertMeshError(mentioning: ["spec.rules[0]", "backendRef", "did you mean \"backendRefs\""]) {
            _ = try self.read(["parentRefs": [parent], "rules": [["backendRef": []]]])
        }
        assertMeshError(mentioning: ["apiVersion", "gateway.networking.k8s.io/v1"]) {
            _ = try Manifest.read(documents: [Self.route(spec: ["parentRefs": [parent]], apiVersion: "v1")], source: "r.yaml")
        }
    }

    func testDurationsReadAsGatewayAPIWritesThem() throws {
        func d(_ s: String) throws(MeshError) -> Double? {
            try read(["parentRefs": [["kind": "Service", "name": "w"]], "rules": [["timeouts": ["request": .string(s)]]]]).rules[0].timeouts?.request
        }
        XCTAssertEqual(try d("10s"), 10)
        XCTAssertEqual(try d("250ms"), 0.25)
        XCTAssertEqual(try d("1h2m3s"), 3723)
        XCTAssertNil(try d("0s"), "zero: no timeout")
        for bad in ["", "10", "1.5s", "-1s", "5d", "s"] {
            assertMeshError(mentioning: ["is not a duration"]) { _ = try d(bad) }
        }
    }

    // MARK: the table the proxy gets

    func endpoints(_ names: [String], port: UInt16 = 8080) -> [ProxyBackendEndpoint] {
        names.enumerated().map { ProxyBackendEndpoint(ip: IPv4Address(UInt32(0x0A00_0000 + $0.offset + 1)), port: port, name: "default/\($0.element)") }
    }

    func testMatchesFollowGatewayAPIPrecedenceAcrossRoutesAndBackendsResolveToReadyEndpoints() throws {
        let older = HTTPRoute(name: "a", namespace: "default", parents: [.init(name: "web", namespace: "default")], rules: [
            .init(matches: [.init(path: .init(type: .pathPrefix, value: "/api"))], backends: [.init(name: "v1", namespace: "default", port: 80)]),
            .init(matches: [.init()], backends: [.init(name: "v1", namespace: "default", port: 80)]),
        ])
        let newer = HTTPRoute(name: "b", namespace: "default", parents: [.init(name: "web", namespace: "default", port: 80)], rules: [
            .init(matches: [.init(path: .init(type: .regularExpression, value: "/v[0-9]+/.*")),
                            .init(path: .init(type: .pathPrefix, value: "/api/v2")),
                            .init(path: .init(type: .exact, value: "/"), method: "GET"),
                            .init(path: .init(type: .pathPrefix, value: "/api"), headers: [.init(type: .exact, name: "x", value: "1")])],
                  backends: [.init(name: "v2", namespace: "default", port: 80, weight: 10), .init(name: "gone", namespace: "default", port: 80)]),
        ])
        let web = RouteTable.ServiceFrontends(key: "default/web", clusterIP: IPv4Address(0x0A60_0001), tcpPorts: [80, 81])
        let (table, problems) = RouteTable.build(routes: [older, newer], services: ["default/web": web]) { key, port in
            switch key {
            case "default/v1": self.endpoints(["v1a", "v1b"])
            case "default/v2": self.endpoints(["v2a"])
            default: nil
            }
        }
        XCTAssertEqual(table.map { "\($0.vip):\($0.port)" }, ["10.96.0.1:80", "10.96.0.1:81"], "route a binds every TCP port, b only 80")
        let on80 = table[0]
        XCTAssertEqual(on80.routes, ["default/a", "default/b"])
        let order = on80.matches.map { "\(on80.rules[$0.rule].name) \($0.match.path.type.rawValue) \($0.match.path.value)" }
        XCTAssertEqual(order, [
            "default/b rules[0] Exact /",                 // exact first
            "default/b rules[0] RegularExpression /v[0-9]+/.*", // then expressions, before any prefix
            "default/b rules[0] PathPrefix /api/v2",      // then the longest prefix
            "default/b rules[0] PathPrefix /api",         // same prefix: more header matches first
            "default/a rules[0] PathPrefix /api",         // then the older route
            "default/a rules[1] PathPrefix /",
        ])
        XCTAssertEqual(on80.rules[2].backends.map(\.service), ["default/v2", "default/gone"])
        XCTAssertEqual(on80.rules[2].backends[0].endpoints.map(\.name), ["default/v2a"])
        XCTAssertEqual(on80.rules[2].backends[1].endpoints, [], "an unknown backend serves nothing")
        XCTAssertEqual(problems["default/b"], ["backend Service default/gone port 80 does not exist"])
        XCTAssertEqual(table[1].routes, ["default/a"])

        let orphan = HTTPRoute(name: "c", namespace: "default", parents: [.init(name: "nope", namespace: "default")], rules: [.init(backends: [])])
        let (none, why) = RouteTable.build(routes: [orphan], services: ["default/web": web]) { _, _ in [] }
        XCTAssertEqual(none, [])
        XCTAssertEqual(why["default/c"], ["parent Service default/nope does not exist"])
    }
}
