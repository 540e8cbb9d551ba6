import Foundation
import XCTest

/// HTTPRoutes bound to Services (GAMMA) on real traffic: connect() keeps a routed VIP,
/// the tc programs hand its flows to the proxy, and the proxy spreads each request over
/// the backend Services' ready endpoints by weight and match, retries under a budget,
/// answers 504 on time, and keeps the client's egress policy on its upstream.
final class L7RouteTests: XCTestCase {
    var node: TestNode!
    var traffic: Traffic { Traffic(node: node) }
    var background: [Traffic.Background] = []

    override func tearDown() {
        for b in background { kill(b.pid, SIGKILL) }
        node?.destroy()
    }

    func clusterIP(_ service: String) throws -> String {
        try XCTUnwrap(try node.json("get", "service", service, "-o", "json")["clusterIP"] as? String)
    }

    func ip(_ ep: String) throws -> String {
        try XCTUnwrap(try node.json("endpoint", "get", ep, "-o", "json")["ipv4"] as? String)
    }

    /// Sum of every sample of `name` whose labels include `labels`.
    func metricSum(_ name: String, _ labels: [String: String] = [:]) throws -> Double {
        var sum = 0.0
        for line in try node.scrape().split(separator: "\n") where line.hasPrefix(name + "{") || line.hasPrefix(name + " ") {
            let fits = labels.allSatisfy { line.contains("\($0.key)=\"\($0.value)\"") }
            if fits, let v = line.split(separator: " ").last.flatMap({ Double($0) }) { sum += v }
        }
        return sum
    }

    struct Responses {
        var statuses: [Int]
        var connections: Int
        var servers: [String]
        var bodies: [String]
        var errors: [String]
        var seconds: Double

        func count(_ server: String) -> Int { servers.filter { $0 == server }.count }
    }

    /// `count` requests from `ep` over keep-alive connections; which server answered each.
    func requests(from ep: String, _ url: String, count: Int, method: String = "GET", headers: [String] = [],
                  timeout: Double = 5) throws -> Responses {
        var args = ["http-client", "--url", url, "--method", method, "--count", "\(count)", "--timeout", "\(timeout)"]
        for h in headers { args += ["--header", h] }
        let started = Date()
        let r = try traffic.run(in: ep, args)
        let bodies = (r["bodies"] as? [String]) ?? []
        let servers = bodies.map { body in
            ((try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any])?["server"] as? String ?? ""
        }
        return Responses(statuses: (r["statuses"] as? [Int]) ?? [], connections: (r["connections"] as? Int) ?? 0,
                         servers: servers, bodies: bodies, errors: (r["errors"] as? [String]) ?? [],
                         seconds: Date().timeIntervalSince(started))
    }

    /// An endpoint with `labels` serving HTTP on its port `http` (8080) under its own name.
    func backend(_ name: String, _ labels: String, extra: [String] = []) throws {
        try node.ctlOK("endpoint", "create", name, "--labels", labels, "--ports", "http=8080")
        background.append(try traffic.start(in: name, ["http-server", "--port", "8080", "--name", name] + extra, waitReady: true))
    }

    static func service(_ name: String, selector: String) -> String {
        """
        apiVersion: v1
        kind: Service
        metadata: {name: \(name)}
        spec:
          selector: {\(selector)}
          ports:
          - {name: http, port: 80, targetPort: http}
        """
    }

    /// The node, a client and the proxy connected.
    func startNode() throws {
        node = try TestNode(podCIDR: "10.204.0.0/27")
        try node.start()
        try node.ctlOK("endpoint", "create", "client", "--labels", "app=client")
        try node.waitFor("the proxy to be connected") { try node.metric("mesh_proxy_up") == 1 }
    }

    static let canary = """
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {name: web-canary}
    spec:
      parentRefs:
      - {group: "", kind: Service, name: web, port: 80}
      rules:
      - matches:
        - headers: [{name: x-canary, value: "yes"}]
        backendRefs:
        - {name: web-v2, port: 80}
        timeouts: {request: 2s}
      - backendRefs:
        - {name: web-v1, port: 80, weight: 90}
        - {name: web-v2, port: 80, weight: 10}
    """

    /// The node with web-v1 and web-v2 serving, the three Services and the canary route;
    /// returns web's VIP.
    func canaryNode() throws -> String {
        try startNode()
        try backend("web-v1", "app=web,version=v1")
        try backend("web-v2", "app=web,version=v2")
        try node.apply([Self.service("web", selector: "app: web"), Self.service("web-v1", selector: "app: web, version: v1"),
                        Self.service("web-v2", selector: "app: web, version: v2"), Self.canary].joined(separator: "\n---\n"))
        return try clusterIP("web")
    }

    func testA90To10CanaryAndAHeaderMatchSplitRequestsOnOneConnection() throws {
        let vip = try canaryNode()

        // 2,000 requests over one keep-alive connection: per request, not per connection.
        let n = 2000
        let split = try requests(from: "client", "http://\(vip)/", count: n)
        XCTAssertEqual(Set(split.statuses), [200], "\(split.errors.prefix(5))")
        XCTAssertEqual(split.connections, 1)
        XCTAssertEqual(split.count("web-v1") + split.count("web-v2"), n)
        // Binomial(2000, 0.1): standard deviation 13.4; 3.5 of them either side.
        let canaryShare = Double(split.count("web-v2")) / Double(n)
        XCTAssertEqual(canaryShare, 0.10, accuracy: 0.0235, "web-v2 got \(split.count("web-v2")) of \(n)")

        // The header match sends every matching request to the canary, and only those.
        let flagged = try requests(from: "client", "http://\(vip)/", count: 200, headers: ["x-canary: yes"])
        XCTAssertEqual(flagged.count("web-v2"), 200, "\(flagged.errors.prefix(5))")

        // The backend saw the client's own address: policy and logs there see the client.
        let peer = ((try JSONSerialization.jsonObject(with: Data(split.bodies[0].utf8)) as? [String: Any])?["peer"] as? String)
        XCTAssertEqual(peer?.split(separator: ":").first.map(String.init), try ip("client"))

        // The golden metrics count these requests under the routed service.
        XCTAssertEqual(try metricSum("mesh_proxy_http_requests_total", ["destination_service": "default/web", "code": "200"]),
                       Double(n + 200))

        // The client's egress policy holds on the proxy's upstream: allowed to web-v1 only,
        // its canary requests never reach web-v2 (the SYN is dropped at web-v2's veth), while
        // the rest still flow.
        try node.apply("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: client-to-v1}
        spec:
          endpointSelector: {matchLabels: {app: client}}
          egress:
          - toEndpoints: [{matchLabels: {app: web, version: v1}}]
            toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
        """)
        let denied = try metricSum("mesh_drops_total", ["reason": "policy_default_deny", "direction": "egress"])
        let blocked = try requests(from: "client", "http://\(vip)/", count: 1, headers: ["x-canary: yes"])
        // The proxy never connects: its own answer (a gateway error), within the route's 2 s.
        XCTAssertTrue([502, 503, 504].contains(blocked.statuses.first ?? 0), "\(blocked.statuses) \(blocked.bodies)")
        XCTAssertLessThan(blocked.seconds, 4)
        XCTAssertGreaterThan(try metricSum("mesh_drops_total", ["reason": "policy_default_deny", "direction": "egress"]), denied)
        let v1Only = try requests(from: "client", "http://\(vip)/", count: 50)
        XCTAssertEqual(v1Only.count("web-v1"), 50 - v1Only.statuses.filter { $0 != 200 }.count)
        XCTAssertGreaterThanOrEqual(v1Only.count("web-v1"), 40, "\(v1Only.statuses)")
    }

    func testRetriesHideAFlakyBackendABudgetCapsThemAndASlowBackendGets504OnTime() throws {
        try startNode()
        try backend("flaky", "app=flaky", extra: ["--fail-every", "3"])
        try backend("broken", "app=broken", extra: ["--fail-every", "1"])
        try backend("slow", "app=slow", extra: ["--delay", "3000"])
        func route(_ name: String, _ rule: String) -> String {
            """
            apiVersion: gateway.networking.k8s.io/v1
            kind: HTTPRoute
            metadata: {name: \(name)}
            spec:
              parentRefs: [{kind: Service, name: \(name)}]
              rules:
              - backendRefs: [{name: \(name), port: 80}]
            \(rule)
            """
        }
        let retry = "    retry: {attempts: 2, backoff: 5ms, codes: [503]}"
        try node.apply([Self.service("flaky", selector: "app: flaky"), Self.service("broken", selector: "app: broken"),
                   Self.service("slow", selector: "app: slow"), route("flaky", retry), route("broken", retry),
                   route("slow", "    timeouts: {request: 500ms}")].joined(separator: "\n---\n"))

        // One answer in three is a 503; two retries hide every one of them.
        let n = 300
        let flaky = try requests(from: "client", "http://\(try clusterIP("flaky"))/", count: n)
        XCTAssertEqual(flaky.statuses, Array(repeating: 200, count: n), "\(flaky.errors.prefix(5))")
        XCTAssertGreaterThanOrEqual(try metricSum("mesh_proxy_retries_total", ["destination_service": "default/flaky"]),
                                    Double(n / 3 - 5))

        // A backend that always fails: retries stop at the budget (20% of requests plus 10
        // a second over 10 s), and the failures reach the client.
        let broken = try requests(from: "client", "http://\(try clusterIP("broken"))/", count: n)
        XCTAssertEqual(Set(broken.statuses), [503], "\(broken.errors.prefix(5))")
        let retries = try metricSum("mesh_proxy_retries_total", ["destination_service": "default/broken"])
        // In any 10 s the budget allows 20% of the requests plus 100; should the run take
        // longer than one window, each further window adds its floor.
        let windows = (broken.seconds / 10).rounded(.up)
        XCTAssertLessThanOrEqual(retries, 0.2 * Double(n) + 100 * windows + 1, "the budget caps retries (\(broken.seconds) s)")
        XCTAssertGreaterThanOrEqual(retries, 100, "the budget's floor of 10 a second is spent")
        XCTAssertGreaterThan(try metricSum("mesh_proxy_retry_budget_exhausted_total", ["destination_service": "default/broken"]), 0)

        // Slower than timeouts.request: 504 at the timeout, not when the backend answers.
        let slow = try requests(from: "client", "http://\(try clusterIP("slow"))/", count: 1)
        XCTAssertEqual(slow.statuses, [504], "\(slow.bodies)")
        XCTAssertLessThan(slow.seconds, 2.5, "answered at the 0.5 s timeout, not at the backend's 3 s")
        XCTAssertEqual(try metricSum("mesh_proxy_timeouts_total", ["destination_service": "default/slow"]), 1)

        // The golden metrics, routed series included, are valid Prometheus text, and count
        // every request the clients sent.
        let file = node.dir + "/metrics.txt"
        try node.scrape().write(toFile: file, atomically: true, encoding: .utf8)
        let check = Run.run("/bin/sh", ["-c", "promtool check metrics < \(file)"])
        XCTAssertEqual(check.status, 0, "promtool: \(check.stdout)\(check.stderr)")
        for service in ["flaky", "broken", "slow"] {
            let sent = service == "slow" ? 1 : n
            XCTAssertEqual(try metricSum("mesh_proxy_http_requests_total", ["destination_service": "default/\(service)"]), Double(sent),
                           service)
        }
    }

    /// HTTP/2 with prior knowledge (as gRPC speaks it): one client connection's requests,
    /// sent as concurrent streams, spread over three backends; at connect() they would all
    /// have gone to one.
    func testHTTP2RequestsOnOneConnectionSpreadOverThreeBackends() throws {
        try startNode()
        var servers: [pid_t] = []
        defer { for pid in servers { kill(pid, SIGKILL) } }
        for name in ["h2a", "h2b", "h2c"] {
            try node.ctlOK("endpoint", "create", name, "--labels", "app=h2", "--ports", "http=8080")
            // nghttpd serves files: each backend's index says its name.
            let docs = node.dir + "/docs-\(name)"
            try FileManager.default.createDirectory(atPath: docs, withIntermediateDirectories: true)
            try "\(name)\n".write(toFile: docs + "/index.html", atomically: true, encoding: .utf8)
            servers.append(try Run.spawn(TestNode.products + "/meshctl",
                                         ["endpoint", "exec", name, "--", "nghttpd", "--no-tls", "-d", docs, "8080"],
                                         output: node.dir + "/nghttpd-\(name).log", environment: ["SWIFTMESH_API_SOCKET": node.socket]))
        }
        try node.apply([Self.service("h2", selector: "app: h2"), """
            apiVersion: gateway.networking.k8s.io/v1
            kind: HTTPRoute
            metadata: {name: h2}
            spec:
              parentRefs: [{kind: Service, name: h2}]
              rules:
              - backendRefs: [{name: h2, port: 80}]
            """].joined(separator: "\n---\n"))
        let vip = try clusterIP("h2")
        // Every backend answers a direct request before the real one starts.
        for name in ["h2a", "h2b", "h2c"] {
            let ip = try ip(name)
            try node.waitFor("\(name)'s nghttpd") { node.ctl(["endpoint", "exec", "client", "--", "nghttp", "http://\(ip):8080/"]).stdout.contains(name) }
        }

        // 90 requests as concurrent streams of ONE connection (nghttp opens one per authority).
        let urls = (1...90).map { "http://\(vip)/?\($0)" }
        let r = node.ctl(["endpoint", "exec", "client", "--", "nghttp", "--no-dep", "-s"] + urls)
        XCTAssertEqual(r.status, 0, r.stderr)
        let answers = r.stdout.split(separator: "\n").filter { ["h2a", "h2b", "h2c"].contains(String($0)) }
        XCTAssertEqual(answers.count, 90, r.stdout.suffix(2000) + r.stderr)
        for name in ["h2a", "h2b", "h2c"] {
            XCTAssertGreaterThanOrEqual(answers.filter { $0 == name }.count, 10, "\(name): \(Dictionary(grouping: answers, by: { $0 }).mapValues(\.count))")
        }
        XCTAssertEqual(r.stdout.components(separatedBy: " 200 ").count - 1, 90, "nghttp's table: every stream answered 200")
        XCTAssertEqual(try metricSum("mesh_proxy_http_requests_total", ["destination_service": "default/h2", "code": "200"]), 90)
    }

    /// meshd dead: the kernel keeps the routed VIP going to the proxy and the proxy keeps its
    /// routes, so requests still split; after the restart the frontend was never unrouted.
    func testARoutedServiceKeepsRoutingWhileMeshdIsDeadAndAfterItsRestart() throws {
        let vip = try canaryNode()
        let cgroup = try XCTUnwrap(try node.json("endpoint", "get", "client", "-o", "json")["cgroup"] as? String)
        let lbBefore = try node.ctlOK("bpf", "lb", "list", "-o", "json")
        XCTAssertTrue(lbBefore.contains("\"routed\" : true") || lbBefore.contains("\"routed\":true"), lbBefore)

        node.stop(SIGKILL)
        // No meshd, so no meshctl: join the client's cgroup and netns by hand.
        let out = node.dir + "/dead.out"
        let pid = try Run.spawn("/bin/sh", ["-c", "echo $$ > \(cgroup)/cgroup.procs && exec ip netns exec \(node.name)-ep-client python3 \(Traffic.script) http-client --url http://\(vip)/ --count 50 --header 'x-canary: yes'"],
                                output: out)
        let dead = try Traffic.Background(pid: pid, output: out).result()
        XCTAssertEqual(dead["statuses"] as? [Int], Array(repeating: 200, count: 50), "\(dead)")
        let servers = ((dead["bodies"] as? [String]) ?? []).compactMap {
            ((try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any])?["server"] as? String
        }
        XCTAssertEqual(Set(servers), ["web-v2"], "the header match still holds while meshd is dead")

        try node.start()
        XCTAssertEqual(try node.ctlOK("bpf", "lb", "list", "-o", "json"), lbBefore, "the same frontends, still routed")
        let after = try requests(from: "client", "http://\(vip)/", count: 300)
        XCTAssertEqual(Set(after.statuses), [200])
        XCTAssertEqual(Set(after.servers), ["web-v1", "web-v2"], "split per request after the restart")
    }
}
