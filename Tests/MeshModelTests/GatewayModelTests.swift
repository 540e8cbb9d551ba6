import Foundation
import XCTest
@testable import MeshModel

/// Gateway and TLSRoute documents, and how routes attach to a Gateway's listeners.
final class GatewayModelTests: XCTestCase {
    static func doc(_ kind: String, _ name: String, spec: PolicyTree, apiVersion: String = "gateway.networking.k8s.io/v1",
                    namespace: String? = nil) -> PolicyTree {
        TestDocs.document(apiVersion, kind, name: name, namespace: namespace, body: [("spec", spec)])
    }

    func read(_ docs: PolicyTree...) throws(MeshError) -> Manifest { try Manifest.read(documents: docs, source: "g.yaml") }

    func gateway(_ listeners: [PolicyTree]) throws(MeshError) -> Gateway {
        guard let g = try read(Self.doc("Gateway", "public", spec: ["gatewayClassName": "swiftmesh", "listeners": .list(listeners)]))
            .gateways.first else { throw MeshError.invalid("no gateway read") }
        return g
    }

    static let https: PolicyTree = ["name": "shop", "port": 443, "protocol": "HTTPS", "hostname": "Shop.Example.com",
                                    "tls": ["certificateRefs": [["kind": "Secret", "name": "shop-tls"]]]]

    func testListenersReadAsWritten() throws {
        let g = try gateway([["name": "http", "port": 80, "protocol": "HTTP"], Self.https,
                             ["name": "pass", "port": 8443, "protocol": "TLS", "tls": ["mode": "Passthrough"],
                              "allowedRoutes": ["namespaces": ["from": "All"], "kinds": [["kind": "TLSRoute"]]]]])
        XCTAssertEqual(g.className, "swiftmesh")
        XCTAssertEqual(g.listeners, [
            Gateway.Listener(name: "http", port: 80, proto: .http),
            Gateway.Listener(name: "shop", port: 443, proto: .https, hostname: "shop.example.com",
                             certificates: [Gateway.CertificateRef(name: "shop-tls", namespace: "default")]),
            Gateway.Listener(name: "pass", port: 8443, proto: .tls, routesFromAllNamespaces: true),
        ])
    }

    func testRefusalsNameTheFieldAndSayWhy() {
        assertMeshError(mentioning: ["spec.listeners[0].protocol", "TCP", "not supported"]) {
            _ = try self.gateway([["name": "raw", "port": 80, "protocol": "TCP"]])
        }
        assertMeshError(mentioning: ["spec.listeners[0]", "missing required field \"tls\""]) {
            _ = try self.gateway([["name": "s", "port": 443, "protocol": "HTTPS"]])
        }
        assertMeshError(mentioning: ["spec.listeners[0].tls.mode", "Passthrough"]) {
            _ = try self.gateway([["name": "t", "port": 443, "protocol": "TLS", "tls": ["mode": "Terminate"]]])
        }
        assertMeshError(mentioning: ["spec.listeners[0].tls.certificateRefs[0].namespace", "ReferenceGrant"]) {
            _ = try self.gateway([["name": "s", "port": 443, "protocol": "HTTPS",
                                   "tls": ["certificateRefs": [["name": "c", "namespace": "other"]]]]])
        }
        assertMeshError(mentioning: ["spec.listeners[1]", "port 443", "HTTPS"]) {
            _ = try self.gateway([Self.https, ["name": "plain", "port": 443, "protocol": "HTTP"]])
        }
        assertMeshError(mentioning: ["spec.listeners[1]", "already takes port 443"]) {
            _ = try self.gateway([Self.https, ["name": "again", "port": 443, "protocol": "HTTPS", "hostname": "shop.example.com",
                                               "tls": ["certificateRefs": [["name": "c"]]]]])
        }
        assertMeshError(mentioning: ["spec.listeners[0].allowedRoutes.namespaces", "Selector"]) {
            _ = try self.gateway([["name": "h", "port": 80, "protocol": "HTTP", "allowedRoutes": ["namespaces": ["from": "Selector"]]]])
        }
        assertMeshError(mentioning: ["spec.addresses", "every address of its node"]) {
            _ = try self.read(Self.doc("Gateway", "g", spec: ["gatewayClassName": "x", "addresses": [["value": "10.0.0.1"]],
                                                              "listeners": [["name": "h", "port": 80, "protocol": "HTTP"]]]))
        }
        assertMeshError(mentioning: ["spec.rules", "one rule"]) {
            _ = try self.read(Self.doc("TLSRoute", "t", spec: ["parentRefs": [["name": "g"]],
                                                               "rules": [["backendRefs": [["name": "a", "port": 443]]],
                                                                         ["backendRefs": [["name": "b", "port": 443]]]]],
                                       apiVersion: "gateway.networking.k8s.io/v1alpha2"))
        }
    }

    /// shop's route names one listener; api's names the Gateway, and attaches wherever its
    /// hostname fits; the TLSRoute takes the passthrough listener; a second Gateway on the
    /// same port with another protocol is refused.
    func testRoutesAttachWhereTheirParentsAndHostnamesFit() throws {
        let m = try read(
            Self.doc("Gateway", "public", spec: ["gatewayClassName": "swiftmesh", "listeners": [
                ["name": "http", "port": 80, "protocol": "HTTP"], Self.https,
                ["name": "pass", "port": 8443, "protocol": "TLS", "tls": ["mode": "Passthrough"]]]]),
            Self.doc("Gateway", "late", spec: ["gatewayClassName": "swiftmesh", "listeners": [["name": "h", "port": 443, "protocol": "HTTP"]]]),
            Self.doc("HTTPRoute", "shop", spec: ["parentRefs": [["name": "public", "sectionName": "shop"]],
                                                  "rules": [["backendRefs": [["name": "shop", "port": 80]]]]]),
            Self.doc("HTTPRoute", "api", spec: ["parentRefs": [["name": "public"]], "hostnames": ["api.example.com"],
                                                 "rules": [["backendRefs": [["name": "api", "port": 80]]]]]),
            Self.doc("HTTPRoute", "lost", spec: ["parentRefs": [["name": "public", "sectionName": "shop"]], "hostnames": ["x.example.org"],
                                                  "rules": [["backendRefs": [["name": "api", "port": 80]]]]]),
            Self.doc("TLSRoute", "vault", spec: ["parentRefs": [["name": "public"]], "hostnames": ["vault.example.com"],
                                                  "rules": [["backendRefs": [["name": "vault", "port": 443]]]]],
                     apiVersion: "gateway.networking.k8s.io/v1alpha2"))
        XCTAssertEqual(m.routes.first?.gatewayParents, [GatewayParentRef(name: "public", namespace: "default", sectionName: "shop")])
        let endpoint = ProxyBackendEndpoint(ip: IPv4Address(0x0a00_0002), port: 8080, name: "default/x")
        let t = GatewayTable.build(gateways: m.gateways, httpRoutes: m.routes, tlsRoutes: m.tlsRoutes,
                                   certificate: { .success(ProxyCertificateFiles(certificate: "/c/\($0.name)", key: "/k/\($0.name)")) },
                                   backends: { _, _ in [endpoint] })
        XCTAssertEqual(t.ports.map(\.port), [80, 443, 8443])
        XCTAssertEqual(t.attached["default/shop"], ["default/public/shop"])
        XCTAssertEqual(t.attached["default/api"], ["default/public/http"], "api.example.com does not fit shop.example.com's listener")
        XCTAssertEqual(t.attached["default/vault"], ["default/public/pass"])
        XCTAssertNil(t.attached["default/lost"])
        XCTAssertEqual(t.routeProblems["default/lost"], ["no hostname in common with listener default/public/shop (shop.example.com)"])
        XCTAssertNil(t.routeProblems["default/api"], "a Gateway-wide parent that attaches somewhere has no problem")
        XCTAssertEqual(t.gatewayProblems["default/late"], ["listener h: port 443 is already an HTTPS listener (default/public/shop)"])
        let https = try XCTUnwrap(t.ports.first { $0.port == 443 }?.listeners.first)
        XCTAssertEqual(https.certificate, ProxyCertificateFiles(certificate: "/c/shop-tls", key: "/k/shop-tls"))
        XCTAssertEqual(https.route?.matches.map(\.hostnames), [["shop.example.com"]], "the listener's hostname narrows a route without one")
        let plain = try XCTUnwrap(t.ports.first { $0.port == 80 }?.listeners.first)
        XCTAssertEqual(plain.route?.routes, ["default/api"])
        XCTAssertEqual(t.ports.first { $0.port == 8443 }?.listeners.first?.passthrough.map(\.hostnames), [["vault.example.com"]])

        let broken = GatewayTable.build(gateways: m.gateways, httpRoutes: m.routes, tlsRoutes: [],
                                        certificate: { _ in .failure(MeshError.invalid("cannot read /c/tls.crt")) },
                                        backends: { _, _ in nil })
        XCTAssertEqual(broken.gatewayProblems["default/public"], ["listener shop: certificate default/shop-tls: cannot read /c/tls.crt"])
        XCTAssertEqual(broken.routeProblems["default/api"], ["backend Service default/api port 80 does not exist"])
    }

    func testHostnamesIntersectAsTheGatewayAPISays() {
        XCTAssertEqual(GatewayHostname.intersect(listener: "*.example.com", route: ["a.example.com", "b.example.org"]), ["a.example.com"])
        XCTAssertEqual(GatewayHostname.intersect(listener: "a.example.com", route: ["*.example.com"]), ["a.example.com"])
        XCTAssertEqual(GatewayHostname.intersect(listener: nil, route: []), [])
        XCTAssertNil(GatewayHostname.intersect(listener: "a.example.com", route: ["b.example.com"]))
        XCTAssertFalse(GatewayHostname.covers("*.example.com", "example.com"), "a wildcard takes at least one more label")
        XCTAssertGreaterThan(GatewayHostname.specificity("a.example.com", host: "A.example.com") ?? 0,
                             GatewayHostname.specificity("*.example.com", host: "a.example.com") ?? 0)
    }
}
