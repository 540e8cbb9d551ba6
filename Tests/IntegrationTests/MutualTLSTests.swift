import Foundation
import XCTest

/// Mutual TLS between nodes, on the cluster of ClusterTests: a CiliumNetworkPolicy rule
/// with `authentication: {mode: required}` makes the receiving node take flows from other
/// nodes' endpoints only through its proxy's mTLS tunnel, whatever address they carry.
extension ClusterTests {
    /// db on node B takes web (on node A) on 5432, and only with proof of who web is.
    static let secureDB = """
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: secure-db}
    spec:
      endpointSelector: {matchLabels: {app: db}}
      ingress:
      - fromEndpoints: [{matchLabels: {app: web}}]
        authentication: {mode: required}
        toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
    """

    /// Nodes A (web, intruder) and B (db, cache) with secure-db applied on B and known on A.
    func secureCluster() throws -> (a: TestNode, b: TestNode) {
        let (a, b) = try webAndDBNodes()
        try b.apply(Self.secureDB)
        try a.waitFor("secure-db on node A") { (try? a.ctlOK("policy", "get", "secure-db")) != nil }
        try serve(b, "db", tcp: "5432")
        try serve(b, "cache", tcp: "6379")
        return (a, b)
    }

    /// Sends `text` to host:port from `ep` and returns what came back within `timeout`.
    func echo(_ node: TestNode, from ep: String, to host: String, port: Int, _ text: String, timeout: Double = 2) throws -> String {
        let hex = text.utf8.map { String(format: "%02x", $0) }.joined()
        let r = try Traffic(node: node).run(in: ep, ["http-raw", "--host", host, "--port", "\(port)", "--data", hex,
                                                     "--timeout", "\(timeout)"])
        return r["response"] as? String ?? ""
    }

    // The IP address proves nothing: a host on the wire between the nodes that sends with
    // web's own address gets nothing through the rule. Its SYNs reach node B in the clear,
    // and B drops them as auth_required although web's identity is allowed on the port.
    func testASpoofedSourceGetsNothingThroughAnAuthenticationRequiredRule() throws {
        let (a, b) = try secureCluster()
        let dbIP = try ip(b, "db"), webIP = try ip(a, "web")
        let before = try b.metric("mesh_drops_total", ["reason": "auth_required", "direction": "ingress"]) ?? 0
        let spoofer = try fabric.addOutsider(address: webIP, routeTo: "10.201.2.0/28", via: 2)
        let probe = try Traffic(node: b).startInNetns(spoofer, ["probe", "--host", dbIP, "--port", "5432", "--timeout", "2"]).result()
        XCTAssertEqual(probe["ok"] as? Bool, false, "\(probe)")
        try b.waitFor("node B to count the spoofed SYNs as auth_required") {
            (try b.metric("mesh_drops_total", ["reason": "auth_required", "direction": "ingress"]) ?? 0) > before
        }
        // The kernel's own account: the rule is an authenticated allow, and the trace says
        // that web is let in only proven.
        let rows = try b.ctlOK("bpf", "policy", "list")
        XCTAssertTrue(rows.contains("allow (authenticated)"), rows)
        let trace = try b.ctlOK("policy", "trace", "--from", webIP, "--to", "db", "--port", "5432/TCP")
        XCTAssertTrue(trace.lowercased().contains("allowed (for a proven peer"), trace)
        // And A reaches db only through the tunnel, as B's endpoint record told it.
        try a.waitFor("db marked as reached through the tunnel on node A") {
            try a.ctlOK("bpf", "ipcache", "list").split(separator: "\n").contains { $0.contains(dbIP + "/32") && $0.contains("mtls-tunnel") }
        }
        XCTAssertFalse(try a.ctlOK("bpf", "ipcache", "list").split(separator: "\n")
            .contains { $0.contains(try! ip(b, "cache") + "/32") && $0.contains("mtls-tunnel") }, "cache takes flows in the clear")
    }
}
