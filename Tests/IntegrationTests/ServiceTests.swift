import Foundation
import XCTest

/// Services on real traffic: the cgroup programs translate a VIP at connect() and
/// sendmsg(), backends register and leave by themselves, readiness probes take failing
/// ones out, names resolve through the node's DNS, and policy applies to the backend.
final class ServiceTests: XCTestCase {
    var node: TestNode!
    var traffic: Traffic { Traffic(node: node) }
    var background: [Traffic.Background] = []

    override func tearDown() {
        for b in background { kill(b.pid, SIGKILL) }
        node?.destroy()
    }

    func apply(_ yaml: String) throws -> String {
        let path = node.dir + "/apply-\(UUID().uuidString.prefix(6)).yaml"
        try yaml.write(toFile: path, atomically: true, encoding: .utf8)
        return try node.ctlOK("apply", "-f", path)
    }

    func json(_ args: String...) throws -> [String: Any] {
        let r = node.ctl(args)
        guard r.status == 0 else { throw TestFailure("meshctl \(args.joined(separator: " ")): \(r.stderr)") }
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
    }

    func clusterIP(_ service: String) throws -> String {
        try XCTUnwrap(try json("get", "service", service, "-o", "json")["clusterIP"] as? String)
    }

    /// A backend that answers with its name: TCP and UDP on the given ports, HTTP on `http`.
    func serveName(_ ep: String, tcp: String = "8080", udp: String = "", http: Int = 0, healthFile: String = "") throws {
        var args = ["name-server", "--name", ep, "--tcp", tcp, "--udp", udp, "--seconds", "300"]
        if http > 0 { args += ["--http", "\(http)"] }
        if !healthFile.isEmpty { args += ["--health-file", healthFile] }
        background.append(try traffic.start(in: ep, args, waitReady: true))
    }

    /// `count` connections (or datagrams) from `ep` to host:port: which backend answered
    /// how often, the peer addresses the client saw, and errors by errno name.
    func spread(from ep: String, to host: String, port: Int, count: Int, proto: String = "tcp", timeout: Double = 2) throws
        -> (counts: [String: Int], peers: [String], errors: [String: Int], slowestErrorMs: Double) {
        let r = try traffic.run(in: ep, ["lb-client", "--host", host, "--port", "\(port)", "--count", "\(count)", "--proto", proto,
                                         "--timeout", "\(timeout)"])
        return ((r["counts"] as? [String: Int]) ?? [:], (r["peers"] as? [String]) ?? [], (r["errors"] as? [String: Int]) ?? [:],
                (r["slowest_error_ms"] as? Double) ?? 0)
    }

    static let webService = """
    apiVersion: v1
    kind: Service
    metadata: {name: web}
    spec:
      selector: {app: web}
      ports:
      - {name: http, port: 80, targetPort: http}
      - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
    """

    func testAVIPSpreadsConnectionsUniformlyAndTheClientSeesTheVIP() throws {
        node = try TestNode()
        try node.start()
        try node.ctlOK("endpoint", "create", "client", "--labels", "app=client")
        for ep in ["web1", "web2", "web3"] {
            try node.ctlOK("endpoint", "create", ep, "--labels", "app=web", "--ports", "http=8080")
            try serveName(ep, udp: "5353")
        }
        XCTAssertTrue(try apply(Self.webService).contains("service/default/web created"))
        let vip = try clusterIP("web")
        XCTAssertTrue(vip.hasPrefix("10.96.0."), "allocated from the default service CIDR: \(vip)")

        let n = 3000
        let tcp = try spread(from: "client", to: vip, port: 80, count: n)
        XCTAssertEqual(tcp.errors, [:])
        XCTAssertEqual(Set(tcp.counts.keys), ["web1", "web2", "web3"])
        XCTAssertEqual(tcp.counts.values.reduce(0, +), n)
        // Pearson's chi-square against a uniform choice, 2 degrees of freedom: above 13.82
        // a fair choice would land once in a thousand runs.
        let expected = Double(n) / 3
        let chi2 = tcp.counts.values.reduce(0.0) { $0 + pow(Double($1) - expected, 2) / expected }
        XCTAssertLessThan(chi2, 13.82, "counts \(tcp.counts) are not a uniform choice (chi-square \(chi2))")
        XCTAssertEqual(tcp.peers, ["\(vip):80"], "getpeername shows the VIP, never a backend")

        // UDP: each datagram is translated at sendmsg, each reply reads as from the VIP.
        let udp = try spread(from: "client", to: vip, port: 53, count: 300, proto: "udp")
        XCTAssertEqual(udp.errors, [:])
        XCTAssertEqual(udp.counts.values.reduce(0, +), 300)
        XCTAssertEqual(Set(udp.counts.keys), ["web1", "web2", "web3"])
        XCTAssertEqual(udp.peers, ["\(vip):53"], "replies come from the VIP address")

        // What the kernel holds, and the counters it kept.
        let lb = try node.ctlOK("bpf", "lb", "list")
        XCTAssertTrue(lb.contains("default/web:http") && lb.contains("\(vip):80"), lb)
        let metrics = try node.scrape()
        let perBackend = ["web1", "web2", "web3"].map {
            TestNode.sample(in: metrics, "mesh_service_connections_total", ["service": "default/web", "port": "http", "backend": $0]) ?? 0
        }
        XCTAssertEqual(perBackend.reduce(0, +), Double(n), "the kernel counted every connection once")
        XCTAssertEqual(perBackend, ["web1", "web2", "web3"].map { Double(tcp.counts[$0] ?? 0) }, "and to the backend that answered")
    }

    func testClientIPAffinityKeepsEachClientOnOneBackendAndMonitorShowsTheChoice() throws {
        node = try TestNode()
        try node.start()
        for c in ["c1", "c2", "c3"] { try node.ctlOK("endpoint", "create", c, "--labels", "app=client") }
        for ep in ["web1", "web2", "web3"] {
            try node.ctlOK("endpoint", "create", ep, "--labels", "app=web", "--ports", "http=8080")
            try serveName(ep)
        }
        _ = try apply("""
        apiVersion: v1
        kind: Service
        metadata: {name: sticky}
        spec:
          selector: {app: web}
          sessionAffinity: ClientIP
          sessionAffinityConfig: {clientIP: {timeoutSeconds: 300}}
          ports: [{port: 80, targetPort: http}]
        """)
        let vip = try clusterIP("sticky")
        XCTAssertTrue(try node.ctlOK("bpf", "lb", "list").contains("300s"))
        // Every connection of one client goes to the backend its first one got.
        var chosen: [String: String] = [:]
        for c in ["c1", "c2", "c3"] {
            let r = try spread(from: c, to: vip, port: 80, count: 60)
            XCTAssertEqual(r.counts.count, 1, "\(c) stayed on one backend: \(r.counts)")
            chosen[c] = r.counts.keys.first
        }
        // The choice shows in the monitor: client, service port, backend, and why.
        let out = node.dir + "/monitor-lb.json"
        let mon = try Run.spawn(TestNode.products + "/meshctl", ["monitor", "--type", "lb", "--count", "1", "-o", "json"], output: out,
                                environment: ["SWIFTMESH_API_SOCKET": node.socket])
        usleep(500_000)
        _ = try spread(from: "c1", to: vip, port: 80, count: 1)
        let event = try Traffic.Background(pid: mon, output: out).result(timeout: 10)
        XCTAssertEqual(event["type"] as? String, "lb")
        XCTAssertEqual(event["endpoint"] as? String, "c1")
        XCTAssertEqual(event["service"] as? String, "default/sticky:80")
        XCTAssertEqual(event["backend"] as? String, chosen["c1"])
        XCTAssertEqual(event["reason"] as? String, "session affinity")
        XCTAssertEqual(event["destination"] as? String, vip)

        // A backend that leaves is no one's affinity any more.
        let gone = try XCTUnwrap(chosen["c1"])
        try node.ctlOK("endpoint", "label", gone, "app=retired")
        let after = try spread(from: "c1", to: vip, port: 80, count: 30)
        XCTAssertEqual(after.counts.count, 1)
        XCTAssertNotEqual(after.counts.keys.first, gone)
    }

    func testBackendsComeAndGoByThemselvesWhileLongLivedConnectionsStay() throws {
        node = try TestNode()
        try node.start()
        try node.ctlOK("endpoint", "create", "client", "--labels", "app=client")
        let health = node.dir + "/web2-healthy"
        FileManager.default.createFile(atPath: health, contents: nil)
        try node.ctlOK("endpoint", "create", "web1", "--labels", "app=web", "--ports", "http=8080")
        try node.ctlOK("endpoint", "create", "web2", "--labels", "app=web", "--ports", "http=8080,health=8081",
                       "--readiness", "http:health/healthz", "--readiness-interval", "0.5", "--readiness-failures", "1")
        // A TCP probe too: it passes as soon as a connection opens.
        try node.ctlOK("endpoint", "create", "web3", "--labels", "app=web", "--ports", "http=8080",
                       "--readiness", "tcp:http", "--readiness-interval", "0.5")
        try serveName("web1")
        try serveName("web2", http: 8081, healthFile: health)
        try serveName("web3")
        _ = try apply(Self.webService)
        let vip = try clusterIP("web")
        // web2 and web3 become ready once their probes pass.
        try waitFor("web2 and web3 ready") { try self.backendStates()["web2"] == "ready" && self.backendStates()["web3"] == "ready" }
        XCTAssertEqual(Set(try spread(from: "client", to: vip, port: 80, count: 300).counts.keys), ["web1", "web2", "web3"])

        // A long-lived connection to each backend, through the VIP.
        var holds: [String: (Traffic.Background, String)] = [:]
        let stop = node.dir + "/stop-holds"
        for attempt in 0..<60 where holds.count < 3 {
            let ready = node.dir + "/hold-\(attempt)"
            let bg = try traffic.start(in: "client", ["lb-hold", "--host", vip, "--port", "80", "--seconds", "60",
                                                       "--stop-file", stop, "--ready-file", ready])
            try waitFor("hold \(attempt) connected") { FileManager.default.fileExists(atPath: ready) && ((try? String(contentsOfFile: ready, encoding: .utf8)) ?? "") != "" }
            let backend = try String(contentsOfFile: ready, encoding: .utf8)
            if holds[backend] == nil { holds[backend] = (bg, backend) } else { background.append(bg) }
        }
        XCTAssertEqual(Set(holds.keys), ["web1", "web2", "web3"])

        // web1 relabelled out, web2 failing its probe: within the probe interval plus a
        // second, no new connection reaches either.
        try node.ctlOK("endpoint", "label", "web1", "app=retired")
        unlink(health)
        usleep(1_500_000)
        XCTAssertEqual(try backendStates()["web2"], "unready")
        let metrics = try node.scrape()
        XCTAssertEqual(TestNode.sample(in: metrics, "mesh_endpoint_ready", ["endpoint": "web2"]), 0)
        XCTAssertEqual(TestNode.sample(in: metrics, "mesh_endpoint_ready", ["endpoint": "web3"]), 1)
        XCTAssertEqual(TestNode.sample(in: metrics, "mesh_service_backends", ["service": "default/web", "state": "ready"]), 1,
                       "web3 only: web1 left the selector, web2 is unready")
        XCTAssertEqual(TestNode.sample(in: metrics, "mesh_service_backends", ["service": "default/web", "state": "unready"]), 1)
        let after = try spread(from: "client", to: vip, port: 80, count: 300)
        XCTAssertEqual(after.errors, [:])
        XCTAssertEqual(Set(after.counts.keys), ["web3"], "only web3 is still a ready backend: \(after.counts)")

        // A new matching endpoint gets traffic without any command naming it.
        try node.ctlOK("endpoint", "create", "web4", "--labels", "app=web", "--ports", "http=8080")
        try serveName("web4")
        XCTAssertEqual(Set(try spread(from: "client", to: vip, port: 80, count: 300).counts.keys), ["web3", "web4"])

        // web3 deleted: gone from the balancer at once.
        try node.ctlOK("endpoint", "delete", "web3")
        XCTAssertEqual(Set(try spread(from: "client", to: vip, port: 80, count: 100).counts.keys), ["web4"])

        // The drained backends' connections carried on all along; web2 comes back when healthy.
        FileManager.default.createFile(atPath: stop, contents: nil)
        for name in ["web1", "web2"] {
            let r = try holds[name]!.0.result()
            XCTAssertNil(r["failure"] as? String, "\(name)'s long-lived connection broke: \(r)")
            XCTAssertGreaterThan(r["exchanges"] as? Int ?? 0, 15, "\(name)'s connection kept exchanging: \(r)")
        }
        FileManager.default.createFile(atPath: health, contents: nil)
        try waitFor("web2 ready again") { try self.backendStates()["web2"] == "ready" }
        XCTAssertEqual(Set(try spread(from: "client", to: vip, port: 80, count: 200).counts.keys), ["web2", "web4"])
    }

    func backendStates() throws -> [String: String] {
        let backends = try XCTUnwrap(try json("get", "service", "web", "-o", "json")["backends"] as? [[String: Any]])
        return Dictionary(uniqueKeysWithValues: backends.compactMap { b in
            (b["endpoint"] as? String).map { ($0, b["state"] as? String ?? "") }
        })
    }

    func waitFor(_ what: String, timeout: TimeInterval = 10, _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if try condition() { return }
            usleep(50_000)
        }
        throw TestFailure("\(what): not within \(timeout) s\n\(node.meshdLog.suffix(1500))")
    }

    func testAServiceWithoutAReadyBackendRefusesAtOnce() throws {
        node = try TestNode()
        try node.start()
        try node.ctlOK("endpoint", "create", "client", "--labels", "app=client")
        let nobody = """
        apiVersion: v1
        kind: Service
        metadata: {name: nobody}
        spec:
          selector: {app: none}
          ports: [{port: 80, name: http}, {port: 53, protocol: UDP, name: dns}]
        """
        _ = try apply(nobody)
        let vip = try clusterIP("nobody")
        let r = try spread(from: "client", to: vip, port: 80, count: 20)
        XCTAssertEqual(r.errors, ["ECONNREFUSED": 20], "connect() is refused, not left to time out")
        // Refused by the connect4 program itself: far below the client's 2 s timeout
        // (the figure is in the README, measured by this test's output).
        XCTAssertLessThan(r.slowestErrorMs, 1000)
        print("slowest refusal: \(r.slowestErrorMs) ms")
        let metrics = try node.scrape()
        XCTAssertEqual(TestNode.sample(in: metrics, "mesh_service_refused_total", ["service": "default/nobody", "port": "http"]), 20)
        XCTAssertTrue(try node.ctlOK("bpf", "lb", "list").contains("(none: refused)"))

        // Applied again in a file that creates another service first: it keeps its address.
        let out = try apply("""
        apiVersion: v1
        kind: Service
        metadata: {name: newcomer}
        spec:
          selector: {app: none}
          ports: [{port: 81}]
        ---

        """ + nobody)
        XCTAssertTrue(out.contains("service/default/nobody unchanged (\(vip))"), out)
        XCTAssertNotEqual(try clusterIP("newcomer"), vip)
    }

    func testServiceNamesResolveInsideEndpointsAndFollowTheService() throws {
        node = try TestNode()
        try node.start()
        try node.ctlOK("endpoint", "create", "client", "--labels", "app=client")
        try node.ctlOK("endpoint", "create", "shop", "--labels", "app=shop,namespace=store", "--ports", "http=8000")
        try serveName("shop", tcp: "", http: 8000)
        _ = try apply("""
        apiVersion: v1
        kind: Service
        metadata: {name: shop, namespace: store}
        spec:
          selector: {app: shop}
          ports: [{port: 80, targetPort: http}]
        """)
        let vip = try clusterIP("store/shop")
        for name in ["shop.store.svc.cluster.local", "shop.store"] {
            let r = node.ctl("endpoint", "exec", "client", "--", "curl", "-sS", "--max-time", "5", "http://\(name)/")
            XCTAssertEqual(r.status, 0, "curl \(name): \(r.stderr)")
            XCTAssertEqual(r.stdout, "shop\n")
        }
        let resolved = node.ctl("endpoint", "exec", "client", "--", "getent", "hosts", "shop.store.svc.cluster.local")
        XCTAssertTrue(resolved.stdout.hasPrefix(vip + " "), resolved.stdout)
        // Inside the service's own namespace the short name works, as in Kubernetes.
        let short = node.ctl("endpoint", "exec", "shop", "--", "getent", "hosts", "shop")
        XCTAssertTrue(short.stdout.hasPrefix(vip + " "), short.stdout + short.stderr)

        try node.ctlOK("delete", "service", "store/shop")
        try waitFor("the name stops resolving", timeout: 5) {
            node.ctl("endpoint", "exec", "client", "--", "getent", "hosts", "shop.store.svc.cluster.local").status != 0
        }
        XCTAssertEqual(node.ctl("endpoint", "exec", "client", "--", "curl", "-sS", "--max-time", "5", "http://shop.store/").status, 6,
                       "curl: could not resolve host")
    }

    func testPolicyAppliesToTheBackendsBehindTheVIPAndNamespaceLabelsSelect() throws {
        node = try TestNode()
        try node.start()
        try node.ctlOK("endpoint", "create", "front", "--labels", "app=front,namespace=shop")
        try node.ctlOK("endpoint", "create", "other", "--labels", "app=other")
        try node.ctlOK("endpoint", "create", "db", "--labels", "app=db", "--ports", "sql=5432")
        try serveName("db", tcp: "5432")
        _ = try apply("""
        apiVersion: v1
        kind: Service
        metadata: {name: db}
        spec:
          selector: {app: db}
          ports: [{port: 5432, targetPort: sql}]
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: db-from-tier-front}
        spec:
          podSelector: {matchLabels: {app: db}}
          ingress:
          - from: [{namespaceSelector: {matchLabels: {tier: front}}}]
            ports: [{port: 5432}]
        """)
        let vip = try clusterIP("db")
        // The policy names the backends' pods and port, never the VIP; no namespace has
        // the label yet, so nobody gets through.
        XCTAssertEqual(try spread(from: "front", to: vip, port: 5432, count: 3, timeout: 1).errors, ["TimeoutError": 3])
        XCTAssertTrue(try apply("""
        apiVersion: v1
        kind: Namespace
        metadata: {name: shop, labels: {tier: front}}
        """).contains("namespace/shop created"))
        XCTAssertEqual(try spread(from: "front", to: vip, port: 5432, count: 5).counts, ["db": 5], "allowed through the VIP")
        XCTAssertEqual(try spread(from: "other", to: vip, port: 5432, count: 3, timeout: 1).errors, ["TimeoutError": 3], "other's namespace lacks the label")

        // A deny on the backends stops the same client through the VIP.
        _ = try apply("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: db-deny-front}
        spec:
          endpointSelector: {matchLabels: {app: db}}
          ingressDeny:
          - fromEndpoints: [{matchLabels: {app: front, io.kubernetes.pod.namespace: shop}}]
        """)
        XCTAssertEqual(try spread(from: "front", to: vip, port: 5432, count: 3, timeout: 1).errors, ["TimeoutError": 3])
        let drop = try node.ctlOK("policy", "trace", "--from", "front", "--to", "db", "--port", "5432/TCP")
        XCTAssertTrue(drop.contains("db-deny-front"), drop)
    }

    func testBadDocumentsAreRefusedWholeWithThePlaceAndChangeNothing() throws {
        node = try TestNode()
        try node.start()
        try node.ctlOK("endpoint", "create", "web", "--labels", "app=web", "--ports", "http=8080")
        _ = try apply("""
        apiVersion: v1
        kind: Service
        metadata: {name: taken}
        spec:
          clusterIP: 10.96.0.50
          selector: {app: web}
          ports: [{port: 80}]
        """)
        let before = try node.ctlOK("get", "services", "-o", "json")
        let lbBefore = try node.ctlOK("bpf", "lb", "list", "-o", "json")
        let good = """
        apiVersion: v1
        kind: Service
        metadata: {name: good}
        spec:
          selector: {app: web}
          ports: [{port: 81}]
        ---

        """
        let cases: [(String, String)] = [
            ("""
             apiVersion: v1
             kind: Service
             metadata: {name: typo}
             spec:
               selector: {app: web}
               ports: [{port: 80, targetPort: htp}]
             """, "Service default/typo: spec.ports[0].targetPort: no endpoint the selector picks (web) has a port named \"htp\""),
            ("""
             apiVersion: v1
             kind: Service
             metadata: {name: outside}
             spec:
               clusterIP: 10.99.0.1
               selector: {app: web}
               ports: [{port: 80}]
             """, "Service default/outside: spec.clusterIP: 10.99.0.1 is not an address of the service CIDR 10.96.0.0/24"),
            ("""
             apiVersion: v1
             kind: Service
             metadata: {name: clash}
             spec:
               clusterIP: 10.96.0.50
               selector: {app: web}
               ports: [{port: 80}]
             """, "Service default/clash: spec.clusterIP: 10.96.0.50 is already the address of service default/taken"),
            ("""
             apiVersion: v1
             kind: Deployment
             metadata: {name: web}
             """, "document 2 (Deployment web): kind: \"Deployment\" (apiVersion \"v1\") is not a kind SwiftMesh reads"),
            ("""
             apiVersion: v1
             kind: Service
             metadata: {name: badsel}
             spec:
               selector: {"app/": web}
               ports: [{port: 80}]
             """, "document 2 (Service badsel): spec.selector[\"app/\"]:"),
            ("""
             apiVersion: v1
             kind: Service
             metadata: {name: np}
             spec:
               type: NodePort
               ports: [{port: 80}]
             """, "spec.type: type NodePort is not supported; SwiftMesh serves ClusterIP services only"),
        ]
        for (bad, message) in cases {
            let path = node.dir + "/bad-\(UUID().uuidString.prefix(6)).yaml"
            try (good + bad).write(toFile: path, atomically: true, encoding: .utf8)
            let r = node.ctl("apply", "-f", path)
            XCTAssertEqual(r.status, 1, "refused: \(bad)")
            XCTAssertTrue(r.stderr.contains(message), "error for \(bad):\n\(r.stderr)\nexpected: \(message)")
        }
        XCTAssertEqual(try node.ctlOK("get", "services", "-o", "json"), before, "nothing applied, not even the good document")
        XCTAssertEqual(try node.ctlOK("bpf", "lb", "list", "-o", "json"), lbBefore)
    }

    func testVIPConnectionsWorkWhileMeshdIsDeadAndAfterItsRestart() throws {
        node = try TestNode()
        try node.start()
        try node.ctlOK("endpoint", "create", "client", "--labels", "app=client")
        try node.ctlOK("endpoint", "create", "web1", "--labels", "app=web", "--ports", "http=8080")
        try node.ctlOK("endpoint", "create", "web2", "--labels", "app=web", "--ports", "http=8080")
        try serveName("web1")
        try serveName("web2")
        _ = try apply(Self.webService)
        let vip = try clusterIP("web")
        let lbBefore = try node.ctlOK("bpf", "lb", "list", "-o", "json")
        let stop = node.dir + "/stop-hold", ready = node.dir + "/hold-ready"
        let hold = try traffic.start(in: "client", ["lb-hold", "--host", vip, "--port", "80", "--seconds", "60",
                                                     "--stop-file", stop, "--ready-file", ready])
        try waitFor("long-lived connection up") { FileManager.default.fileExists(atPath: ready) }
        let cgroup = try XCTUnwrap(try json("endpoint", "get", "client", "-o", "json")["cgroup"] as? String)

        node.stop(SIGKILL)
        // No meshd, so no meshctl: join the client's cgroup and netns by hand.
        let out = node.dir + "/dead.out"
        let pid = try Run.spawn("/bin/sh", ["-c", "echo $$ > \(cgroup)/cgroup.procs && exec ip netns exec \(node.name)-ep-client python3 \(Traffic.script) lb-client --host \(vip) --port 80 --count 100"],
                                output: out)
        let dead = try Traffic.Background(pid: pid, output: out).result()
        XCTAssertEqual((dead["counts"] as? [String: Int]).map { Set($0.keys) }, ["web1", "web2"], "balanced while meshd is dead: \(dead)")
        XCTAssertEqual(dead["peers"] as? [String], ["\(vip):80"])

        try node.start()
        XCTAssertEqual(try node.ctlOK("bpf", "lb", "list", "-o", "json"), lbBefore, "the same frontends and slots after the restart")
        XCTAssertEqual(Set(try spread(from: "client", to: vip, port: 80, count: 100).counts.keys), ["web1", "web2"])
        FileManager.default.createFile(atPath: stop, contents: nil)
        let r = try hold.result()
        XCTAssertNil(r["failure"] as? String, "the long-lived connection broke: \(r)")
        XCTAssertGreaterThan(r["exchanges"] as? Int ?? 0, 5)
    }
}
