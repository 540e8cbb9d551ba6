import Foundation
import XCTest

/// Identities allocated once and kept, and labels that change at run time.
final class IdentityTests: XCTestCase {
    var node: TestNode!
    var servers: [Traffic.Background] = []

    override func tearDown() {
        for s in servers { kill(s.pid, SIGKILL) }
        node?.destroy()
    }

    /// labels → identity, from `meshctl identity list`.
    func identities() throws -> [String: Int] {
        let json = try node.ctlOK("identity", "list", "-o", "json")
        let rows = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [[String: Any]])
        return Dictionary(uniqueKeysWithValues: rows.map { ($0["labels"] as? String ?? "", $0["id"] as? Int ?? -1) })
    }

    func testAnIdentityNeverChangesWhileItsLabelSetExistsNorAcrossARestart() throws {
        node = try TestNode()
        try node.start()
        try node.ctlOK("endpoint", "create", "a", "--labels", "app=a")
        try node.ctlOK("endpoint", "create", "b", "--labels", "app=b")
        let first = try identities()
        let a = try XCTUnwrap(first["app=a"])
        XCTAssertNotEqual(first["app=b"], a)
        // Others come and go, a label set sorting before app=a among them.
        for (name, labels) in [("c", "app=0"), ("d", "app=d"), ("e", "app=a,extra=1")] {
            try node.ctlOK("endpoint", "create", name, "--labels", labels)
            XCTAssertEqual(try identities()["app=a"], a)
        }
        try node.ctlOK("endpoint", "delete", "b")
        try node.ctlOK("endpoint", "delete", "c")
        XCTAssertEqual(try identities()["app=a"], a)
        XCTAssertNotNil(try identities()["app=b"], "an unused identity is kept for its grace period")
        // The kernel's ipcache carries the same number.
        let ipcache = try node.ctlOK("bpf", "ipcache", "list", "-o", "json")
        let rows = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(ipcache.utf8)) as? [[String: Any]])
        XCTAssertEqual(rows.first { $0["endpoint"] as? String == "a" }?["identity"] as? Int, a)
        // A CIDR a rule names gets a node-local identity, kept the same way.
        let path = node.dir + "/cidr.yaml"
        try """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: out}
        spec:
          endpointSelector: {matchLabels: {app: a}}
          egress: [{toCIDR: [192.0.2.0/24]}]
        """.write(toFile: path, atomically: true, encoding: .utf8)
        try node.ctlOK("policy", "apply", "-f", path)
        let before = try identities()
        XCTAssertNotNil(before["cidr:192.0.2.0/24"])

        node.stop(SIGTERM)
        try node.start()
        XCTAssertEqual(try identities(), before, "a restart keeps every identity")
        try node.ctlOK("endpoint", "create", "f", "--labels", "app=f")
        let after = try identities()
        XCTAssertFalse(before.values.contains(try XCTUnwrap(after["app=f"])), "a new label set gets a new number")
    }

    func testRelabellingAnEndpointMovesItBetweenPoliciesAtOnce() throws {
        node = try TestNode()
        try node.start()
        try node.ctlOK("endpoint", "create", "server", "--labels", "app=server")
        try node.ctlOK("endpoint", "create", "client", "--labels", "app=client,team=blue")
        let traffic = Traffic(node: node)
        servers.append(try traffic.start(in: "server", ["echo-server", "--tcp", "80", "--seconds", "300"], waitReady: true))
        let serverIP = "10.201.0.1"
        func probe() throws -> Bool {
            try traffic.start(in: "client", ["probe", "--host", serverIP, "--port", "80", "--timeout", "1"]).result()["ok"] as? Bool ?? false
        }
        let path = node.dir + "/trusted.yaml"
        try """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: trusted-only}
        spec:
          endpointSelector: {matchLabels: {app: server}}
          ingress: [{fromEndpoints: [{matchLabels: {role: trusted}}]}]
        """.write(toFile: path, atomically: true, encoding: .utf8)
        try node.ctlOK("policy", "apply", "-f", path)
        XCTAssertFalse(try probe())

        let out = try node.ctlOK("endpoint", "label", "client", "role=trusted", "team-")
        XCTAssertTrue(out.contains("endpoint client labelled: app=client,role=trusted"), out)
        XCTAssertTrue(try probe(), "the new label is enforced by the time the command returns")
        // Only what the relabel changed was written: client's ipcache entry and the
        // server's entry for the peer identity that now matches (not the whole policy).
        try node.ctlOK("endpoint", "label", "client", "color=red")
        let status = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(try node.ctlOK("status", "-o", "json").utf8)) as? [String: Any])
        let last = try XCTUnwrap(status["lastPublish"] as? [String: Any])
        let writes = (last["written"] as? Int ?? 0) + (last["deleted"] as? Int ?? 0)
        XCTAssertTrue((1...4).contains(writes), "a relabel wrote \(writes) map entries: \(last)")
        XCTAssertTrue(try probe())
        try node.ctlOK("endpoint", "label", "client", "color-")

        // Bad changes are refused, say why, and change nothing.
        for (args, message) in [(["client", "role"], "argument 1 \"role\" is neither key=value (set) nor key- (remove)"),
                                (["client", "ghost-"], "label \"ghost\" is not set"),
                                (["client", "Bad Key=1"], "label key \"Bad Key\""),
                                (["client", "role=a", "role-"], "label \"role\" is changed twice"),
                                (["nobody", "role=x"], "endpoint \"nobody\" does not exist"),
                                (["client"], "no label changes given")] {
            let r = node.ctl(["endpoint", "label"] + args)
            XCTAssertNotEqual(r.status, 0, "\(args)")
            XCTAssertTrue(r.stderr.contains(message), "\(args): \(r.stderr)")
        }
        XCTAssertTrue(try node.ctlOK("endpoint", "get", "client").contains("labels:    app=client,role=trusted"))
        XCTAssertTrue(try probe())

        try node.ctlOK("endpoint", "label", "client", "role-")
        XCTAssertFalse(try probe(), "without the label the policy refuses it again")
        XCTAssertTrue(node.meshdLog.contains("endpoint relabelled"))
    }
}
