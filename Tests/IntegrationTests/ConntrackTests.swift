import Agent
import Foundation
import XCTest

/// Connection tracking under churn: one table for all CPUs, sized by conntrack-max, whose
/// least recently used entries make room, so a flow that keeps sending keeps its entry.
final class ConntrackTests: XCTestCase {
    var node: TestNode!
    var traffic: Traffic { Traffic(node: node) }

    override func tearDown() { node?.destroy() }

    func ip(_ ep: String) throws -> String {
        let json = try node.ctlOK("endpoint", "get", ep, "-o", "json")
        return try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])?["ipv4"] as? String)
    }

    func testAFlowThatKeepsSendingSurvivesChurnThroughTwiceTheTable() throws {
        let capacity = 4096
        node = try TestNode()
        try node.start(["--conntrack-max", "\(capacity)"])
        for (ep, app) in [("steady", "steady"), ("churner", "churner"), ("server", "server")] {
            try node.ctlOK("endpoint", "create", ep, "--labels", "app=\(app)")
        }
        // steady may send to the server, and receives nothing but the replies conntrack
        // lets back in: once its entry is gone, the echoes are dropped.
        let path = node.dir + "/steady.yaml"
        try """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: steady}
        spec:
          podSelector: {matchLabels: {app: steady}}
          policyTypes: [Ingress, Egress]
          egress:
          - to: [{podSelector: {matchLabels: {app: server}}}]
            ports: [{port: 7777, protocol: UDP}]
        """.write(toFile: path, atomically: true, encoding: .utf8)
        try node.ctlOK("policy", "apply", "-f", path)
        let server = try ip("server")
        let echo = try traffic.start(in: "server", ["echo-server", "--udp", "7777", "--seconds", "60"], waitReady: true)
        defer { kill(echo.pid, SIGKILL) }
        XCTAssertEqual(try node.metric("mesh_bpf_map_capacity", ["map": "mesh_ct"]), Double(capacity))

        // Each churned datagram is a new flow with two entries (the churner's egress and
        // the server's ingress): 4,096 of them are twice the table, over 6 s, while the
        // steady flow sends once a second.
        let steady = try traffic.start(in: "steady", ["udp-pingpong", "--host", server, "--port", "7777", "--seconds", "9",
                                                      "--interval", "1000"])
        usleep(1_500_000)
        let churn = try traffic.run(in: "churner", ["udp-churn", "--host", server, "--port", "20000", "--count", "\(capacity)",
                                                    "--seconds", "6"])
        XCTAssertEqual(churn["datagrams"] as? Int, capacity)
        let result = try steady.result()
        XCTAssertGreaterThanOrEqual(result["attempts"] as? Int ?? 0, 8)
        XCTAssertEqual(result["failed"] as? Int, 0, "the steady flow lost its conntrack entry: \(result)")
        // The churn did overflow the table: the LRU made room by evicting.
        let evicted = try node.metric("mesh_conntrack_evictions_total") ?? 0
        XCTAssertGreaterThanOrEqual(evicted, Double(capacity), "evictions \(evicted)")
        XCTAssertGreaterThanOrEqual(try node.metric("mesh_conntrack_created_total") ?? 0, Double(2 * capacity))
        XCTAssertLessThanOrEqual(try node.metric("mesh_bpf_map_entries", ["map": "mesh_ct"]) ?? .infinity, Double(capacity))
    }

    /// A client that reuses a port while its last connection's entries still close (wrk's
    /// ports come back within seconds): the new connection's SYN takes those entries over,
    /// written in place, at both hooks. They are not created again, and they no longer close.
    func testANewConnectionOnAClosingTupleTakesItsEntriesOver() throws {
        node = try TestNode()
        try node.start()
        for ep in ["client", "server"] {
            try node.ctlOK("endpoint", "create", ep, "--labels", "app=\(ep)")
        }
        let (client, server) = (try ip("client"), try ip("server"))
        let echo = try traffic.start(in: "server", ["echo-server", "--tcp", "7100", "--seconds", "60"], waitReady: true)
        defer { kill(echo.pid, SIGKILL) }
        let created = try node.metric("mesh_conntrack_created_total") ?? 0
        let held = try traffic.start(in: "client", ["reopen", "--host", server, "--port", "7100", "--source-port", "41000",
                                                    "--hold", "5"], waitReady: true)
        defer { kill(held.pid, SIGKILL) }
        let rows = try JSONSerialization.jsonObject(with: Data(try node.ctlOK("bpf", "ct", "list", "-o", "json").utf8)) as? [[String: Any]] ?? []
        let flow = rows.filter { $0["flow"] as? String == "\(client):41000 -> \(server):7100" }
        XCTAssertEqual(Set(flow.map { "\($0["endpoint"] ?? "")/\($0["direction"] ?? "")" }), ["client/egress", "server/ingress"], "\(rows)")
        XCTAssertTrue(flow.allSatisfy { $0["closing"] as? Bool == false }, "the reset's closing mark outlived the new SYN: \(flow)")
        // One entry at each hook for both connections: the second SYN created none.
        XCTAssertEqual(try node.metric("mesh_conntrack_created_total") ?? 0, created + 2)
        XCTAssertEqual(try held.result()["ok"] as? Bool, true)
    }

    func testTheDefaultTableIsSizedForTheNodesMemory() {
        XCTAssertEqual(NodeConfig.defaultConntrackMax(memoryBytes: 24 << 30), 262_144) // this VM
        XCTAssertEqual(NodeConfig.defaultConntrackMax(memoryBytes: 2 << 30), 65536)     // the floor
        XCTAssertEqual(NodeConfig.defaultConntrackMax(memoryBytes: 0), 65536)           // /proc unreadable
        XCTAssertEqual(NodeConfig.defaultConntrackMax(memoryBytes: 512 << 30), 1 << 20) // the ceiling
        XCTAssertEqual(NodeConfig.defaultConntrackMax(memoryBytes: 8 << 30), 131_072)
    }
}
