import Foundation
import XCTest

/// The L7 proxy on real traffic: Cilium's Star Wars scenario with a real HTTP server in the
/// deathstar, flows handed to the proxy by the tc programs (no iptables), the proxy's
/// upstream arriving with the client's own address, a proxy that dies and comes back, and
/// a meshd killed under proxied keep-alive traffic.
final class L7ProxyTests: XCTestCase {
    var node: TestNode!
    var traffic: Traffic { Traffic(node: node) }
    var background: [Traffic.Background] = []
    var monitorPID: pid_t = 0

    override func tearDown() {
        for b in background { kill(b.pid, SIGKILL) }
        if monitorPID > 0 { kill(monitorPID, SIGKILL) }
        node?.destroy()
    }

    /// Cilium's getting-started `rule1`: empire ships may POST /v1/request-landing to the
    /// deathstar's port 80; nothing else reaches it.
    static let rule1 = """
    apiVersion: "cilium.io/v2"
    kind: CiliumNetworkPolicy
    metadata:
      name: "rule1"
    spec:
      description: "L7 policy to restrict access to specific HTTP call"
      endpointSelector:
        matchLabels:
          org: empire
          class: deathstar
      ingress:
      - fromEndpoints:
        - matchLabels:
            org: empire
        toPorts:
        - ports:
          - port: "80"
            protocol: TCP
          rules:
            http:
            - method: "POST"
              path: "/v1/request-landing"
    """

    func apply(_ yaml: String) throws {
        let path = node.dir + "/apply-\(UUID().uuidString.prefix(6)).yaml"
        try yaml.write(toFile: path, atomically: true, encoding: .utf8)
        try node.ctlOK("apply", "-f", path)
    }

    func ip(_ ep: String) throws -> String {
        let json = try node.ctlOK("endpoint", "get", ep, "-o", "json")
        return try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])?["ipv4"] as? String)
    }

    /// The node with the Star Wars endpoints, rule1, the deathstar's HTTP server on port 80
    /// and a connected proxy. Returns the deathstar's address.
    func starWars() throws -> String {
        node = try TestNode(podCIDR: "10.203.0.0/28")
        try node.start()
        try node.ctlOK("endpoint", "create", "deathstar", "--labels", "org=empire,class=deathstar")
        try node.ctlOK("endpoint", "create", "tiefighter", "--labels", "org=empire,class=tiefighter")
        try node.ctlOK("endpoint", "create", "xwing", "--labels", "org=alliance,class=xwing")
        try apply(Self.rule1)
        background.append(try traffic.start(in: "deathstar", ["http-server", "--port", "80", "--name", "deathstar"], waitReady: true))
        try waitFor("the proxy to be connected") { try node.metric("mesh_proxy_up") == 1 }
        return try ip("deathstar")
    }

    func waitFor(_ what: String, timeout: TimeInterval = 15, _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if try condition() { return }
            usleep(50_000)
        }
        throw TestFailure("timed out waiting for \(what)\n\(node.meshdLog.suffix(3000))")
    }

    func http(_ ep: String, _ url: String, method: String = "GET", count: Int = 1, sequence: String? = nil,
              timeout: Double = 5, extra: [String] = []) throws -> (statuses: [Int], connections: Int, bodies: [String], errors: [String]) {
        var args = ["http-client", "--url", url, "--method", method, "--count", "\(count)", "--timeout", "\(timeout)"] + extra
        if let sequence { args += ["--sequence", sequence] }
        let r = try traffic.run(in: ep, args)
        return ((r["statuses"] as? [Int]) ?? [], (r["connections"] as? Int) ?? 0, (r["bodies"] as? [String]) ?? [], (r["errors"] as? [String]) ?? [])
    }

    func proxyPID() -> pid_t? {
        let r = Run.run("/usr/bin/pgrep", ["-f", "--", "--control \(node.dir)/state/proxy.sock"])
        return r.stdout.split(separator: "\n").first.flatMap { pid_t($0) }
    }

    func testStarWarsLandingIsAllowedTheExhaustPortRefusedAndTheXwingDroppedAtL4() throws {
        let ds = try starWars()
        let tie = try ip("tiefighter")
        let monitorOut = node.dir + "/monitor.out"
        monitorPID = try Run.spawn(TestNode.products + "/meshctl", ["monitor", "--type", "l7", "-o", "json"], output: monitorOut,
                                   environment: ["SWIFTMESH_API_SOCKET": node.socket])
        var monitor: String { (try? String(contentsOfFile: monitorOut, encoding: .utf8)) ?? "" }

        // Allowed: the server's own answer, and the server saw the tiefighter's own address
        // (the proxy's upstream reuses it), not the proxy's.
        let landing = try http("tiefighter", "http://\(ds)/v1/request-landing", method: "POST")
        XCTAssertEqual(landing.statuses, [200], "\(landing.errors)")
        let answer = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(try XCTUnwrap(landing.bodies.first).utf8)) as? [String: Any])
        XCTAssertEqual(answer["server"] as? String, "deathstar")
        XCTAssertEqual(answer["path"] as? String, "/v1/request-landing")
        XCTAssertEqual((answer["peer"] as? String)?.split(separator: ":").first.map(String.init), tie)

        // Refused with 403, and the same connection then carries an allowed request.
        let mixed = try http("tiefighter", "http://\(ds)/", count: 4, sequence: "PUT /v1/exhaust-port,POST /v1/request-landing")
        XCTAssertEqual(mixed.statuses, [403, 200, 403, 200], "\(mixed.errors)")
        XCTAssertEqual(mixed.connections, 1, "a 403 leaves the connection usable")
        XCTAssertTrue(mixed.bodies[0].contains("Access denied"), mixed.bodies[0])

        // The xwing gets nothing at all: L4 drops its SYNs before any proxy.
        let xwing = try http("xwing", "http://\(ds)/v1/request-landing", method: "POST", timeout: 2)
        XCTAssertEqual(xwing.statuses, [0])
        XCTAssertFalse(xwing.errors.isEmpty)
        XCTAssertGreaterThanOrEqual(try node.metric("mesh_drops_total", ["reason": "policy_default_deny", "direction": "ingress"]) ?? 0, 1)

        // The monitor shows each request with its verdict and the rule that decided.
        try waitFor("the monitor to show the refused request") { monitor.contains("exhaust-port") }
        let events = monitor.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        let refused = try XCTUnwrap(events.first { ($0["http"] as? [String: Any])?["path"] as? String == "/v1/exhaust-port" })
        XCTAssertEqual(refused["verdict"] as? String, "denied")
        XCTAssertEqual((refused["http"] as? [String: Any])?["status"] as? Int, 403)
        XCTAssertEqual((refused["http"] as? [String: Any])?["method"] as? String, "PUT")
        XCTAssertTrue((refused["rule"] as? String ?? "").contains("default deny (ingress): selected by default/rule1"), "\(refused)")
        XCTAssertEqual(refused["endpoint"] as? String, "tiefighter")
        XCTAssertEqual((refused["http"] as? [String: Any])?["destinationEndpoint"] as? String, "deathstar")

        // The golden metrics count exactly the requests sent, by source, destination,
        // method, code and verdict.
        let labels = ["source_namespace": "default", "source_workload": "tiefighter", "destination_namespace": "default",
                      "destination_workload": "deathstar"]
        XCTAssertEqual(try node.metric("mesh_proxy_http_requests_total",
                                       labels.merging(["method": "POST", "code": "200", "verdict": "forwarded"]) { $1 }), 3)
        XCTAssertEqual(try node.metric("mesh_proxy_http_requests_total",
                                       labels.merging(["method": "PUT", "code": "403", "verdict": "denied"]) { $1 }), 2)
        // The client's socket and the deathstar's were never paired for socket redirection.
        XCTAssertGreaterThanOrEqual(try node.metric("mesh_socket_redirect_fallbacks_total", ["reason": "proxied"]) ?? 0, 1)
    }

    func testAKilledProxyIsReplacedAtOnceAndL4FlowsNeverNotice() throws {
        let ds = try starWars()
        // An L4-only flow on another port, streaming while the proxy dies.
        try apply("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: l4-only}
        spec:
          endpointSelector: {matchLabels: {class: deathstar}}
          ingress:
          - fromEndpoints: [{matchLabels: {class: xwing}}]
            toPorts: [{ports: [{port: "9000", protocol: TCP}]}]
        """)
        let sink = try traffic.start(in: "deathstar", ["stream-sink", "--port", "9000"], waitReady: true)
        let stop = node.dir + "/stream.stop"
        let send = try traffic.start(in: "xwing", ["stream-send", "--host", ds, "--port", "9000", "--seconds", "30",
                                                   "--rate", "2000000", "--stop-file", stop])
        XCTAssertEqual(try http("tiefighter", "http://\(ds)/v1/request-landing", method: "POST").statuses, [200])
        let first = try XCTUnwrap(proxyPID())
        kill(first, SIGKILL)
        // The next connection is served by a new proxy: the client's SYN retransmission
        // (the first one was dropped while nothing listened) finds it.
        let after = try http("tiefighter", "http://\(ds)/v1/request-landing", method: "POST", timeout: 10)
        XCTAssertEqual(after.statuses, [200], "\(after.errors)\n\(node.meshdLog.suffix(2000))")
        XCTAssertNotEqual(proxyPID(), first)
        try waitFor("the restart to be counted") { try node.metric("mesh_proxy_restarts") == 1 }
        FileManager.default.createFile(atPath: stop, contents: nil)
        let sent = try send.result()
        let got = try sink.result()
        XCTAssertNil(sent["error"], "the L4 stream broke: \(sent)")
        XCTAssertEqual(got["ok"] as? Bool, true, "\(got)")
        XCTAssertEqual(got["bytes"] as? Int, sent["bytes"] as? Int)
    }

    func testKillingMeshdUnderProxiedKeepAliveTrafficLosesNoRequest() throws {
        let ds = try starWars()
        let progress = node.dir + "/client.progress"
        let client = try traffic.start(in: "tiefighter", ["http-client", "--url", "http://\(ds)/v1/request-landing", "--method", "POST",
                                                          "--count", "60", "--interval", "50", "--progress-file", progress])
        func done() -> Int { Int((try? String(contentsOfFile: progress, encoding: .utf8)) ?? "") ?? 0 }
        try waitFor("the client's first requests") { done() >= 5 }
        node.stop(SIGKILL)
        let killedAt = done()
        try node.start()
        let r = try client.result()
        XCTAssertLessThan(killedAt, 60, "meshd died while the client was still sending")
        XCTAssertEqual(r["statuses"] as? [Int], Array(repeating: 200, count: 60), "\(r["errors"] ?? "")")
        XCTAssertEqual(r["connections"] as? Int, 1, "the proxied connection survived meshd's death")
        XCTAssertTrue(node.meshdLog.contains("adopted the running L7 proxy"), node.meshdLog.suffix(2000).description)
        XCTAssertEqual(try node.metric("mesh_proxy_restarts"), 0)
    }

    func testHostileRequestsGetAClearRefusalAndTheNextClientIsServed() throws {
        let ds = try starWars()
        func raw(_ text: String, pad: Int = 0) throws -> (response: String, closed: Bool) {
            let hex = text.utf8.map { String(format: "%02x", $0) }.joined()
            let r = try traffic.run(in: "tiefighter", ["http-raw", "--host", ds, "--port", "80", "--data", hex, "--pad-header", "\(pad)"])
            return ((r["response"] as? String) ?? "", (r["closed"] as? Bool) ?? false)
        }
        let garbage = try raw("BREW /v1/pot HTCPCP/1.0 nonsense\r\n\r\n")
        XCTAssertTrue(garbage.response.hasPrefix("HTTP/1.1 400"), garbage.response)
        XCTAssertTrue(garbage.closed)
        // Request smuggling: both lengths. Refused, never forwarded in either reading.
        let smuggle = try raw("POST /v1/request-landing HTTP/1.1\r\nHost: ds\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v1/exhaust-port HTTP/1.1\r\nHost: ds\r\n\r\n")
        XCTAssertTrue(smuggle.response.hasPrefix("HTTP/1.1 400"), smuggle.response)
        XCTAssertFalse(smuggle.response.contains("deathstar"), "nothing reached the server: \(smuggle.response)")
        let huge = try raw("POST /v1/request-landing HTTP/1.1\r\nHost: ds\r\n\r\n", pad: 200_000)
        XCTAssertTrue(huge.response.hasPrefix("HTTP/1.1 431") || huge.response.hasPrefix("HTTP/1.1 400") || huge.closed, huge.response)
        XCTAssertEqual(try http("tiefighter", "http://\(ds)/v1/request-landing", method: "POST").statuses, [200])
    }
}
