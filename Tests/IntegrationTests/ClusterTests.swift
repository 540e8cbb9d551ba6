import Foundation
import XCTest

/// Several nodes, one mesh: nodes in namespaces of their own, joined through a real etcd
/// (Debian's etcd-server) on a bridge between them; real traffic between endpoints of
/// different nodes.
final class ClusterTests: XCTestCase {
    var fabric: ClusterFabric!
    var servers: [Traffic.Background] = []

    override func tearDown() {
        for s in servers { kill(s.pid, SIGKILL) }
        fabric?.destroy()
    }

    func ip(_ node: TestNode, _ ep: String) throws -> String {
        let json = try node.ctlOK("endpoint", "get", ep, "-o", "json")
        return try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])?["ipv4"] as? String)
    }

    func serve(_ node: TestNode, _ ep: String, tcp: String) throws {
        servers.append(try Traffic(node: node).start(in: ep, ["echo-server", "--tcp", tcp, "--udp", "", "--seconds", "300"], waitReady: true))
    }

    func probe(_ node: TestNode, from ep: String, to host: String, port: Int) throws -> Bool {
        let bg = try Traffic(node: node).start(in: ep, ["probe", "--host", host, "--port", "\(port)", "--proto", "tcp", "--timeout", "1"])
        return try bg.result()["ok"] as? Bool ?? false
    }

    /// Waits until `node` knows `count` endpoints of other nodes.
    func waitRemote(_ node: TestNode, _ count: Int, timeout: TimeInterval = 10) throws {
        try node.waitFor("\(count) remote endpoints on \(node.name)", timeout: timeout) {
            let status = try node.json("status", "-o", "json")
            return ((status["cluster"] as? [String: Any])?["remoteEndpoints"] as? Int) == count
        }
    }

    // A policy applied on one node selects endpoints on another and names peers on a
    // third party's node: CiliumNetworkPolicy one way, Kubernetes NetworkPolicy the other,
    // each allowing exactly the labelled peers and no one else.
    func testPolicyAcrossNodesBothWays() throws {
        fabric = try ClusterFabric()
        let a = try fabric.addNode(podCIDR: "10.201.1.0/28")
        let b = try fabric.addNode(podCIDR: "10.201.2.0/28")
        try a.ctlOK("endpoint", "create", "web", "--labels", "app=web")
        try a.ctlOK("endpoint", "create", "intruder", "--labels", "app=intruder")
        try b.ctlOK("endpoint", "create", "db", "--labels", "app=db")
        try b.ctlOK("endpoint", "create", "cache", "--labels", "app=cache")
        try waitRemote(a, 2)
        try waitRemote(b, 2)
        let nodes = try a.ctlOK("node", "list")
        XCTAssertTrue(nodes.contains(a.name) && nodes.contains(b.name) && nodes.contains("10.201.2.0/28"), nodes)

        // Applied on A, enforced on B (where db runs).
        try a.apply("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: db-from-web}
        spec:
          endpointSelector: {matchLabels: {app: db}}
          ingress:
          - fromEndpoints: [{matchLabels: {app: web}}]
            toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
        """)
        try b.waitFor("the policy from node A on node B") { (try? b.ctlOK("policy", "get", "db-from-web")) != nil }
        let dbIP = try ip(b, "db")
        try serve(b, "db", tcp: "5432")
        XCTAssertTrue(try probe(a, from: "web", to: dbIP, port: 5432), "web on A must reach db on B")
        XCTAssertFalse(try probe(a, from: "intruder", to: dbIP, port: 5432), "intruder on A must not reach db on B")
        let cacheIP = try ip(b, "cache")
        try serve(b, "cache", tcp: "6379")
        XCTAssertTrue(try probe(a, from: "intruder", to: cacheIP, port: 6379), "cache is selected by no policy")

        // Applied on B, enforced on A: pods on A selected by labels of pods on B.
        try b.apply("""
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: web-from-db}
        spec:
          podSelector: {matchLabels: {app: web}}
          policyTypes: [Ingress]
          ingress:
          - from: [{podSelector: {matchLabels: {app: db}}}]
            ports: [{port: 8080, protocol: TCP}]
        """)
        try a.waitFor("the policy from node B on node A") { (try? a.ctlOK("policy", "get", "web-from-db")) != nil }
        let webIP = try ip(a, "web")
        try serve(a, "web", tcp: "8080")
        XCTAssertTrue(try probe(b, from: "db", to: webIP, port: 8080), "db on B must reach web on A")
        XCTAssertFalse(try probe(b, from: "cache", to: webIP, port: 8080), "cache on B must not reach web on A")
        // Both nodes give each label set the same number.
        let idsA = try identities(a), idsB = try identities(b)
        for app in ["web", "intruder", "db", "cache"] {
            let label = "app=\(app)"
            let onA = idsA.filter { $0.value.contains(label) }.map(\.key), onB = idsB.filter { $0.value.contains(label) }.map(\.key)
            XCTAssertEqual(onA.count, 1, "\(label) on A: \(idsA)")
            XCTAssertEqual(onA, onB, "\(label): A \(idsA), B \(idsB)")
        }
    }

    /// Global identities by number: their label sets.
    func identities(_ node: TestNode) throws -> [Int: String] {
        let out = try node.ctlOK("identity", "list", "-o", "json")
        let list = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]])
        var ids: [Int: String] = [:]
        for i in list where i["scope"] as? String == "global" { ids[i["id"] as? Int ?? -1] = i["labels"] as? String ?? "" }
        return ids
    }
}
