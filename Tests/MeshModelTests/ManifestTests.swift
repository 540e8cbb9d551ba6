import Foundation
import XCTest
@testable import MeshModel

/// `meshctl apply` files: Services and Namespaces read as Kubernetes defines them, mixed
/// with policies, and every error names its document and field.
final class ManifestTests: XCTestCase {
    static func service(_ name: String = "web", namespace: String? = nil, spec: PolicyTree) -> PolicyTree {
        TestDocs.document("v1", "Service", name: name, namespace: namespace, body: [("spec", spec)])
    }

    func read(_ docs: PolicyTree...) throws(MeshError) -> Manifest { try Manifest.read(documents: docs, source: "f.yaml") }

    func testAServiceGetsKubernetesDefaults() throws {
        let m = try read(Self.service(spec: ["selector": ["app": "web"], "ports": [["port": 80]]]))
        let s = try XCTUnwrap(m.services.first)
        XCTAssertEqual(s.key, "default/web")
        XCTAssertEqual(s.ports, [MeshService.Port(name: nil, port: 80, targetPort: .number(80), proto: "TCP")],
                       "targetPort defaults to port, protocol to TCP")
        XCTAssertNil(s.clusterIP, "allocated by meshd")
        XCTAssertNil(s.affinityTimeoutSeconds)
        XCTAssertTrue(s.selects(endpoint(["app": "web"])))
        XCTAssertFalse(s.selects(endpoint(["app": "web", "namespace": "prod"])), "only its own namespace")
        XCTAssertFalse(MeshService(name: "x", namespace: "default", selector: [:], ports: s.ports).selects(endpoint([:])),
                       "no selector selects nothing, as in Kubernetes")
    }

    func testNamedPortsAffinityAndAMixWithPoliciesAndNamespaces() throws {
        let m = try read(
            TestDocs.document("v1", "Namespace", name: "shop", namespace: nil, body: []).adding(label: ("tier", "front")),
            Self.service("api", namespace: "shop", spec: [
                "selector": ["app": "api"], "clusterIP": "10.96.0.9", "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": ["clientIP": ["timeoutSeconds": 60]],
                "ports": [["name": "http", "port": 80, "targetPort": "http"], ["name": "dns", "port": 53, "protocol": "UDP", "targetPort": "5353"]],
            ]),
            TestDocs.np("api", namespace: "shop", spec: ["podSelector": [:]]))
        XCTAssertEqual(m.namespaces, [Namespace(name: "shop", labels: endpoint(["tier": "front"]))])
        XCTAssertEqual(m.policies.count, 1)
        XCTAssertEqual(m.policyDocuments.map(\.key), ["shop/api"])
        let s = try XCTUnwrap(m.services.first)
        XCTAssertEqual(s.clusterIP, IPv4Address("10.96.0.9"))
        XCTAssertEqual(s.affinityTimeoutSeconds, 60)
        XCTAssertEqual(s.ports.map(\.targetPort), [.name("http"), .number(5353)])
        XCTAssertEqual(s.ports.map(\.protocolNumber), [6, 17])
    }

    func testErrorsNameTheDocumentAndTheField() {
        let good = Self.service("ok", spec: ["selector": ["app": "web"], "ports": [["port": 80]]])
        let cases: [(PolicyTree, [String])] = [
            (Self.service(spec: ["ports": [["port": 80]], "type": "LoadBalancer"]),
             ["document 2 (Service web): spec.type: type LoadBalancer is not supported"]),
            (Self.service(spec: ["ports": [["port": 80, "name": "a"], ["port": 81]]]),
             ["spec.ports[1]: a service with several ports needs a name on each"]),
            (Self.service(spec: ["ports": [["port": 80, "name": "a"], ["port": 80, "name": "b"]]]),
             ["spec.ports[1]: port 80/TCP is already given by ports[0]"]),
            (Self.service(spec: ["ports": [["port": 80, "targetPort": "Web_Port"]]]),
             ["spec.ports[0].targetPort: \"Web_Port\" is neither a port number nor a port name"]),
            (Self.service(spec: ["ports": [["port": 80, "protocol": "SCTP"]]]),
             ["spec.ports[0].protocol: protocol \"SCTP\" is not supported; use one of TCP, UDP"]),
            (Self.service(spec: ["ports": [["port": 70000]]]), ["spec.ports[0].port: 70000 is not a port number"]),
            (Self.service(spec: ["ports": []]), ["spec.ports: the list is empty"]),
            (Self.service(spec: ["ports": [["port": 80]], "clusterIP": "None"]), ["spec.clusterIP: headless services"]),
            (Self.service(spec: ["ports": [["port": 80]], "clusterIP": "10.96.0.300"]), ["spec.clusterIP: \"10.96.0.300\" is not an IPv4 address"]),
            (Self.service(spec: ["ports": [["port": 80]], "selectr": ["app": "x"]]), ["unknown field \"selectr\"; did you mean \"selector\"?"]),
            (Self.service(spec: ["ports": [["port": 80]], "sessionAffinityConfig": ["clientIP": ["timeoutSeconds": 60]]]),
             ["sessionAffinity is not ClientIP"]),
            (Self.service(spec: ["ports": [["port": 80]], "sessionAffinity": "ClientIP", "sessionAffinityConfig": ["clientIP": ["timeoutSeconds": 0]]]),
             ["timeoutSeconds must be a whole number of seconds from 1 to 86400"]),
            (TestDocs.document("v1", "Namespace", name: "Shop", namespace: nil, body: []), ["\"Shop\" is not a valid name"]),
            (TestDocs.document("v1", "Namespace", name: "shop", namespace: "x", body: []), ["metadata.namespace: a Namespace is not in a namespace"]),
            (TestDocs.document("apps/v1", "Deployment", name: "web", namespace: nil, body: []), ["kind: \"Deployment\" (apiVersion \"apps/v1\") is not a kind SwiftMesh reads; supported: CiliumNetworkPolicy (cilium.io/v2)"]),
            (TestDocs.document("v2", "Service", name: "web", namespace: nil, body: []), ["apiVersion: \"v2\" is not the apiVersion of Service; use v1"]),
            (Self.service("web.v2", spec: ["ports": [["port": 80]]]), ["metadata.name: \"web.v2\" is not a valid Service name"]),
            (good, ["document 2 (Service ok): metadata.name: Service default/ok is already given by document 1"]),
        ]
        for (bad, fragments) in cases {
            assertMeshError(mentioning: ["f.yaml: document 2"] + fragments) { _ = try Manifest.read(documents: [good, bad], source: "f.yaml") }
        }
        assertMeshError(mentioning: ["f.yaml: no documents found"]) { _ = try Manifest.read(documents: [.null], source: "f.yaml") }
    }

    func testNamespaceLabelsReachNamespaceSelectors() throws {
        let ep = endpoint(["app": "web", "namespace": "shop"]).withNamespaceLabels(endpoint(["tier": "front"]))
        XCTAssertEqual(ep["io.cilium.k8s.namespace.labels.tier"], "front")
        let byLabel = EndpointSelector(namespaces: .selector(EndpointSelector(matchLabels: ["tier": "front"])))
        XCTAssertTrue(byLabel.matches(ep))
        XCTAssertFalse(byLabel.matches(endpoint(["app": "web", "namespace": "shop"])), "without the Namespace document's label")
        let byName = EndpointSelector(namespaces: .selector(EndpointSelector(matchLabels: ["kubernetes.io/metadata.name": "shop"])))
        XCTAssertTrue(byName.matches(ep), "the name label stays")
    }

    func testReadinessProbesAndPortsParseOrSayWhy() throws {
        let p = try ReadinessProbe(parsing: "http:health/healthz")
        XCTAssertEqual(p.kind, .http)
        XCTAssertEqual(p.port, "health")
        XCTAssertEqual(p.path, "/healthz")
        XCTAssertEqual(try ReadinessProbe(parsing: "tcp:8080").description, "tcp:8080")
        XCTAssertEqual(try ReadinessProbe(parsing: "http:8080").path, "/")
        assertMeshError(mentioning: ["\"udp\" is neither tcp nor http"]) { _ = try ReadinessProbe(parsing: "udp:53") }
        assertMeshError(mentioning: ["a tcp probe has no path"]) { _ = try ReadinessProbe(parsing: "tcp:80/x") }
        assertMeshError(mentioning: ["0 is not a port number"]) { _ = try ReadinessProbe(parsing: "tcp:0") }
        assertMeshError(mentioning: ["thresholds must be 1-100"]) { _ = try ReadinessProbe(parsing: "tcp:80", failureThreshold: 0) }
        // A probe from the API gets the same checks: no crash on a huge interval, no CR/LF
        // smuggled into the request line.
        for body in [#"{"kind":"tcp","port":"80","path":"","intervalSeconds":1e308,"timeoutSeconds":1,"failureThreshold":1,"successThreshold":1}"#,
                     #"{"kind":"http","port":"80","path":"/x\r\nHost: evil","intervalSeconds":1,"timeoutSeconds":1,"failureThreshold":1,"successThreshold":1}"#,
                     #"{"kind":"tcp","port":"0","path":"","intervalSeconds":1,"timeoutSeconds":1,"failureThreshold":1,"successThreshold":1}"#] {
            XCTAssertThrowsError(try JSONDecoder().decode(ReadinessProbe.self, from: Data(body.utf8)), body)
        }
        XCTAssertEqual(try EndpointPorts.parse("http=8080, grpc=9090"), ["http": 8080, "grpc": 9090])
        assertMeshError(mentioning: ["port 1 \"http\" is not name=number"]) { _ = try EndpointPorts.parse("http") }
        assertMeshError(mentioning: ["\"8080\" is not a port name"]) { _ = try EndpointPorts.parse("8080=8080") }
        assertMeshError(mentioning: ["port name \"a\" is given twice"]) { _ = try EndpointPorts.parse("a=1,a=2") }
    }
}

extension PolicyTree {
    /// A document with one more label in its metadata.
    func adding(label: (String, String)) -> PolicyTree {
        guard case .map(var pairs) = self, let i = pairs.firstIndex(where: { $0.0 == "metadata" }),
              case .map(var meta) = pairs[i].1 else { return self }
        meta.append(("labels", .map([(label.0, .string(label.1))])))
        pairs[i].1 = .map(meta)
        return .map(pairs)
    }
}
