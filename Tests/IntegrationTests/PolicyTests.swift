import Foundation
import XCTest

/// L4 policy on real traffic: a reachability matrix, atomic revisions under load,
/// enforcement across a meshd kill, drops that name their rule, and bad documents that
/// change nothing.
final class PolicyTests: XCTestCase {
    var node: TestNode!
    var traffic: Traffic { Traffic(node: node) }
    var servers: [Traffic.Background] = []

    override func tearDown() {
        for s in servers { kill(s.pid, SIGKILL) }
        node?.destroy()
    }

    func apply(_ yaml: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let path = node.dir + "/policy-\(UUID().uuidString.prefix(6)).yaml"
        try yaml.write(toFile: path, atomically: true, encoding: .utf8)
        try node.ctlOK("policy", "apply", "-f", path)
    }

    func ip(_ ep: String) throws -> String {
        let json = try node.ctlOK("endpoint", "get", ep, "-o", "json")
        return try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])?["ipv4"] as? String)
    }

    /// One new connection (or datagram) from endpoint `from` (or external netns) and its echo.
    func probe(from: String, external: Bool = false, to host: String, port: Int, proto: String = "tcp") throws -> Bool {
        try startProbe(from: from, external: external, to: host, port: port, proto: proto).result()["ok"] as? Bool ?? false
    }

    func startProbe(from: String, external: Bool = false, to host: String, port: Int, proto: String = "tcp") throws -> Traffic.Background {
        let args = ["probe", "--host", host, "--port", "\(port)", "--proto", proto, "--timeout", "1"]
        return external ? try traffic.startInNetns(from, args) : try traffic.start(in: from, args)
    }

    func serve(_ ep: String, external: Bool = false, tcp: String, udp: String = "") throws {
        let args = ["echo-server", "--tcp", tcp, "--udp", udp, "--seconds", "300"]
        servers.append(external ? try traffic.startInNetns(ep, args, waitReady: true) : try traffic.start(in: ep, args, waitReady: true))
    }

    /// The trace's verdict for the same flow, from the kernel's own programs.
    func trace(from: String, to: String, port: Int, proto: String) throws -> String {
        let out = try node.ctlOK("policy", "trace", "--from", from, "--to", to, "--port", "\(port)/\(proto.uppercased())", "-o", "json")
        return try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])?["verdict"] as? String)
    }

    // Two namespaces, four endpoints, two hosts outside the node, and policies of both
    // kinds: allow, deny, CIDR with except, entities, port ranges, UDP. The expected
    // matrix below is written by hand from the policies' documented meaning, not computed
    // by the compiler under test.
    static let matrixPolicies = """
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: api-ingress, namespace: prod}
    spec:
      endpointSelector: {matchLabels: {app: api}}
      ingress:
      - fromEndpoints: [{matchLabels: {app: web}}]
        toPorts:
        - ports: [{port: "80", protocol: TCP}, {port: "8080", endPort: 8090, protocol: TCP}]
    ---
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: db-ingress, namespace: prod}
    spec:
      podSelector: {matchLabels: {app: db}}
      policyTypes: [Ingress]
      ingress:
      - from: [{podSelector: {matchLabels: {app: api}}}]
        ports: [{port: 5432, protocol: TCP}]
      - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: dev}}}]
        ports: [{port: 53, protocol: UDP}]
    ---
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: web-egress, namespace: prod}
    spec:
      endpointSelector: {matchLabels: {app: web}}
      egress:
      - toEndpoints: [{matchLabels: {app: api}}]
      - toCIDRSet: [{cidr: 192.0.2.0/24, except: [192.0.2.20/32]}]
        toPorts: [{ports: [{port: "80", protocol: TCP}]}]
      egressDeny:
      - toEndpoints: [{matchLabels: {app: api}}]
        toPorts: [{ports: [{port: "8085", protocol: TCP}]}]
    ---
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: dev-lockdown, namespace: dev}
    spec:
      endpointSelector: {}
      ingress:
      - fromEntities: [world]
        toPorts: [{ports: [{port: "80", protocol: TCP}]}]
    """

    func testReachabilityMatrixMatchesThePolicies() throws {
        node = try TestNode(podCIDR: "10.201.0.0/28")
        try node.start()
        try node.ctlOK("endpoint", "create", "web", "--labels", "app=web,namespace=prod")
        try node.ctlOK("endpoint", "create", "api", "--labels", "app=api,namespace=prod")
        try node.ctlOK("endpoint", "create", "db", "--labels", "app=db,namespace=prod")
        try node.ctlOK("endpoint", "create", "devweb", "--labels", "app=web,namespace=dev")
        let ext10 = try node.addExternalHost(address: "192.0.2.10", subnet: "192.0.2.0/24", nodeAddress: "192.0.2.1")
        let ext20 = try node.addExternalHost(address: "192.0.2.20", subnet: "192.0.2.0/24", nodeAddress: "192.0.2.2")
        // .20 sits behind its own veth: a /32 route in the node picks it.
        XCTAssertEqual(node.inNode("ip", "route", "replace", "192.0.2.20/32", "dev", "smx2").status, 0)
        for ep in ["web", "api", "db", "devweb"] { try serve(ep, tcp: "80,5432,8080-8090", udp: "53") }
        try serve(ext10, external: true, tcp: "80,8080", udp: "53")
        try serve(ext20, external: true, tcp: "80")

        let addr = ["web": try ip("web"), "api": try ip("api"), "db": try ip("db"), "devweb": try ip("devweb"),
                    "ext10": "192.0.2.10", "ext20": "192.0.2.20"]
        let externals = ["ext10": ext10, "ext20": ext20]

        // (from, to, port, proto, allowed before any policy, allowed under the policies)
        let matrix: [(String, String, Int, String, Bool)] = [
            ("web", "api", 80, "tcp", true),        // web egress to api ∧ api ingress from web:80
            ("web", "api", 8083, "tcp", true),      // inside 8080-8090
            ("web", "api", 8085, "tcp", false),     // egressDeny beats the allow on both sides
            ("web", "api", 5432, "tcp", false),     // api ingress: not one of its ports
            ("web", "api", 53, "udp", false),       // api ingress: TCP only
            ("db", "api", 80, "tcp", false),        // api ingress: only from app=web
            ("devweb", "api", 80, "tcp", false),    // app=web, but namespace dev
            ("api", "db", 5432, "tcp", true),       // NetworkPolicy podSelector
            ("web", "db", 5432, "tcp", false),      // web egress: no rule to db
            ("devweb", "db", 53, "udp", true),      // namespaceSelector dev, UDP 53
            ("devweb", "db", 5432, "tcp", false),
            ("api", "db", 53, "udp", false),        // prod is not dev
            ("web", "ext10", 80, "tcp", true),      // toCIDRSet 192.0.2.0/24
            ("web", "ext20", 80, "tcp", false),     // ... except 192.0.2.20/32
            ("web", "ext10", 8080, "tcp", false),   // CIDR rule is port 80 only
            ("api", "ext10", 80, "tcp", true),      // api egress not enforced
            ("ext10", "devweb", 80, "tcp", true),   // fromEntities world
            ("ext10", "devweb", 8080, "tcp", false),
            ("web", "devweb", 80, "tcp", false),    // web egress has no rule to devweb
            ("api", "devweb", 80, "tcp", false),    // devweb ingress: world only
            ("ext10", "web", 80, "tcp", true),      // web ingress not enforced; reply passes egress
            ("db", "web", 80, "tcp", true),
            ("ext20", "api", 80, "tcp", false),     // api ingress: only app=web
            ("devweb", "ext10", 53, "udp", true),   // devweb egress not enforced
        ]

        func observe(_ label: String) throws -> [String] {
            var wrong: [String] = []
            // All probes at once: each denied one waits out its one-second timeout.
            let running = try matrix.map { (from, to, port, proto, _) in
                try startProbe(from: externals[from] ?? from, external: externals[from] != nil, to: addr[to]!, port: port, proto: proto)
            }
            for ((from, to, port, proto, expected), bg) in zip(matrix, running) {
                let got = try bg.result()["ok"] as? Bool ?? false
                if label == "before" ? !got : got != expected {
                    wrong.append("\(from) -> \(to) \(port)/\(proto): got \(got ? "allowed" : "denied")")
                }
                if label == "after", externals[from] == nil || externals[to] == nil {
                    // Trace runs the kernel's programs: it must agree with what happened.
                    let t = try trace(from: externals[from] != nil ? addr[from]! : from, to: externals[to] != nil ? addr[to]! : to,
                                      port: port, proto: proto)
                    if (t == "allowed") != got { wrong.append("trace of \(from) -> \(to) \(port)/\(proto) says \(t), traffic was \(got)") }
                }
            }
            return wrong
        }

        XCTAssertEqual(try observe("before"), [], "with no policy everything is reachable")
        try apply(Self.matrixPolicies)
        XCTAssertEqual(try observe("after"), [], "observed reachability must equal the expected matrix")
        // Drops are counted by reason and direction.
        XCTAssertGreaterThan(try node.metric("mesh_drops_total", ["reason": "policy_default_deny", "direction": "ingress"]) ?? 0, 0)
        XCTAssertGreaterThan(try node.metric("mesh_drops_total", ["reason": "policy_deny", "direction": "egress"]) ?? 0, 0)
        XCTAssertGreaterThan(try node.metric("mesh_policy_verdicts_total",
                                             ["policy": "prod/api-ingress", "direction": "ingress", "verdict": "allowed"]) ?? 0, 0)
        let list = try node.ctlOK("policy", "list")
        for p in ["prod/api-ingress", "prod/db-ingress", "prod/web-egress", "dev/dev-lockdown"] { XCTAssertTrue(list.contains(p), list) }

        // Deleting a policy lifts its restrictions at once.
        try node.ctlOK("policy", "delete", "prod/web-egress")
        XCTAssertTrue(try probe(from: "web", to: addr["ext20"]!, port: 80))
        XCTAssertTrue(try probe(from: "web", to: addr["db"]!, port: 5432) == false, "db ingress still applies")
    }

    func testEveryDropNamesItsRuleInMonitorAndTrace() throws {
        node = try TestNode()
        try node.start()
        try node.ctlOK("endpoint", "create", "client", "--labels", "app=client")
        try node.ctlOK("endpoint", "create", "server", "--labels", "app=server")
        try serve("server", tcp: "80,81")
        try apply("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: server-in}
        spec:
          endpointSelector: {matchLabels: {app: server}}
          ingress:
          - toPorts: [{ports: [{port: "80", endPort: 81, protocol: TCP}]}]
          ingressDeny:
          - fromEndpoints: [{matchLabels: {app: client}}]
            toPorts: [{ports: [{port: "81", protocol: TCP}]}]
        """)
        let server = try ip("server")
        let ev = try firstMonitorEvent(type: "drop") {
            XCTAssertTrue(try probe(from: "client", to: server, port: 80))
            XCTAssertFalse(try probe(from: "client", to: server, port: 81))
        }
        XCTAssertEqual(ev["type"] as? String, "drop")
        XCTAssertEqual(ev["endpoint"] as? String, "server")
        XCTAssertEqual(ev["direction"] as? String, "ingress")
        XCTAssertEqual(ev["destinationPort"] as? Int, 81)
        XCTAssertEqual(ev["proto"] as? String, "TCP")
        XCTAssertEqual(ev["reason"] as? String, "policy_deny")
        XCTAssertEqual(ev["peer"] as? String, "app=client")
        XCTAssertEqual(ev["rule"] as? String, "default/server-in spec.ingressDeny[0] (deny)")

        // Verdict events are written only while a monitor asks for them.
        let vev = try firstMonitorEvent(type: "verdict") {
            XCTAssertTrue(try probe(from: "client", to: server, port: 80))
        }
        XCTAssertEqual(vev["type"] as? String, "verdict")
        XCTAssertEqual(vev["verdict"] as? String, "allowed")
        XCTAssertEqual(vev["rule"] as? String, "default/server-in spec.ingress[0] (allow)")
        XCTAssertEqual(vev["destinationPort"] as? Int, 80)

        let t = try node.ctlOK("policy", "trace", "--from", "client", "--to", "server", "--port", "81/TCP")
        XCTAssertTrue(t.contains("default/server-in spec.ingressDeny[0] (deny)"), t)
        XCTAssertTrue(t.contains("verdict: DENIED"), t)
        let t2 = try node.ctlOK("policy", "trace", "--from", "client", "--to", "server", "--port", "9/UDP")
        XCTAssertTrue(t2.contains("default deny (ingress): selected by default/server-in"), t2)
        let dump = try node.ctlOK("bpf", "policy", "list")
        XCTAssertTrue(dump.contains("app=client") && dump.contains("deny"), dump)
        XCTAssertTrue(try node.ctlOK("bpf", "ipcache", "list").contains("app=server"))
        XCTAssertTrue(try node.ctlOK("bpf", "ct", "list").contains("\(server):80"))
    }

    /// Starts `meshctl monitor --type TYPE --count 1 -o json`, runs `traffic`, and returns
    /// the event it printed.
    func firstMonitorEvent(type: String, _ traffic: () throws -> Void) throws -> [String: Any] {
        let out = node.dir + "/monitor-\(type).json"
        let monitor = try Run.spawn(TestNode.products + "/meshctl", ["monitor", "--type", type, "-o", "json", "--count", "1"],
                                    output: out, environment: ["SWIFTMESH_API_SOCKET": node.socket])
        usleep(500_000)
        try traffic()
        var st: Int32 = 0
        let deadline = Date().addingTimeInterval(10)
        while waitpid(monitor, &st, WNOHANG) == 0 && Date() < deadline { usleep(50_000) }
        let line = try XCTUnwrap(try String(contentsOfFile: out, encoding: .utf8).split(separator: "\n").first, "no \(type) event")
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
    }

    /// Runs `meshctl monitor --type drop -o json` while `traffic` runs, and returns the
    /// drop events it printed, once `enough` holds for them (or after 10 s).
    func dropEvents(_ traffic: () throws -> Void, until enough: ([[String: Any]]) -> Bool) throws -> [[String: Any]] {
        let out = node.dir + "/monitor-drops-\(UUID().uuidString.prefix(6)).json"
        let monitor = try Run.spawn(TestNode.products + "/meshctl", ["monitor", "--type", "drop", "-o", "json"],
                                    output: out, environment: ["SWIFTMESH_API_SOCKET": node.socket])
        defer {
            kill(monitor, SIGTERM)
            var st: Int32 = 0
            waitpid(monitor, &st, 0)
        }
        usleep(500_000)
        try traffic()
        var events: [[String: Any]] = []
        let deadline = Date().addingTimeInterval(10)
        repeat {
            usleep(100_000)
            let text = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
            events = text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        } while !enough(events) && Date() < deadline
        return events
    }

    func testEveryFragmentOfAnAllowedDatagramArrivesAndNoneOfADeniedOne() throws {
        node = try TestNode()
        try node.start()
        try node.ctlOK("endpoint", "create", "client", "--labels", "app=client")
        try node.ctlOK("endpoint", "create", "server", "--labels", "app=server")
        try apply("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: udp-5353-only}
        spec:
          endpointSelector: {matchLabels: {app: server}}
          ingress:
          - fromEndpoints: [{matchLabels: {app: client}}]
            toPorts: [{ports: [{port: "5353", protocol: UDP}]}]
        """)
        let server = try ip("server")
        let before = try node.metric("mesh_drops_total", ["reason": "policy_default_deny", "direction": "ingress"]) ?? 0
        // 4,000 bytes do not fit the endpoints' 1,500-byte MTU: three fragments each, and
        // only the first names the port.
        let allowed = try traffic.start(in: "server", ["udp-sink", "--port", "5353", "--count", "3", "--timeout", "3"], waitReady: true)
        let denied = try traffic.start(in: "server", ["udp-sink", "--port", "5354", "--count", "1", "--timeout", "3"], waitReady: true)
        _ = try traffic.run(in: "client", ["udp-send", "--host", server, "--port", "5353", "--count", "3", "--size", "4000"])
        _ = try traffic.run(in: "client", ["udp-send", "--host", server, "--port", "5354", "--count", "1", "--size", "4000"])
        let a = try allowed.result(), d = try denied.result()
        XCTAssertEqual(a["datagrams"] as? Int, 3, "every fragment of an allowed datagram arrives: \(a)")
        XCTAssertEqual(a["bytes"] as? Int, 12_000)
        XCTAssertEqual(d["datagrams"] as? Int, 0, "\(d)")
        // The denied datagram's fragments are dropped as packets of its flow, all three.
        let dropped = (try node.metric("mesh_drops_total", ["reason": "policy_default_deny", "direction": "ingress"]) ?? 0) - before
        XCTAssertGreaterThanOrEqual(dropped, 3)
    }

    func testMalformedAndNonIPv4PacketsOnAnEnforcedEndpointAreDroppedByName() throws {
        node = try TestNode()
        try node.start()
        try node.ctlOK("endpoint", "create", "client", "--labels", "app=client")
        try node.ctlOK("endpoint", "create", "server", "--labels", "app=server")
        let client = try ip("client"), server = try ip("server")
        let frames = ["raw-frames", "--kinds", "bad-version,bad-ihl,bad-length,short,ipv6", "--source", client, "--destination", server]
        // Not enforced: nothing of SwiftMesh's drops them (the stack does what it does).
        _ = try traffic.run(in: "client", frames)
        XCTAssertEqual(try node.metric("mesh_drops_total", ["reason": "malformed_ipv4", "direction": "egress"]) ?? 0, 0)
        try apply("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: client-out}
        spec:
          endpointSelector: {matchLabels: {app: client}}
          egress:
          - toEndpoints: [{matchLabels: {app: server}}]
        """)
        let events = try dropEvents({ _ = try traffic.run(in: "client", frames) }) { events in
            events.filter { $0["reason"] as? String == "malformed_ipv4" }.count >= 4
                && events.contains { $0["reason"] as? String == "unsupported_l3" }
        }
        let malformed = events.filter { $0["reason"] as? String == "malformed_ipv4" }
        XCTAssertGreaterThanOrEqual(malformed.count, 4, "\(events)")
        XCTAssertEqual(malformed.first?["endpoint"] as? String, "client")
        XCTAssertEqual(malformed.first?["direction"] as? String, "egress")
        XCTAssertTrue(events.contains { $0["reason"] as? String == "unsupported_l3" && $0["endpoint"] as? String == "client" }, "\(events)")
        XCTAssertGreaterThanOrEqual(try node.metric("mesh_drops_total", ["reason": "malformed_ipv4", "direction": "egress"]) ?? 0, 4)
        XCTAssertGreaterThanOrEqual(try node.metric("mesh_drops_total", ["reason": "unsupported_l3", "direction": "egress"]) ?? 0, 1)
        // Well-formed traffic the policy allows still flows.
        try serve("server", tcp: "80")
        XCTAssertTrue(try probe(from: "client", to: server, port: 80))
    }

    func testICMPEchoIsGovernedByIcmpsRules() throws {
        node = try TestNode()
        try node.start()
        for ep in ["client", "other", "server"] { try node.ctlOK("endpoint", "create", ep, "--labels", "app=\(ep)") }
        try serve("server", tcp: "80")
        let server = try ip("server")
        func ping(_ from: String) -> Bool {
            node.ctl("endpoint", "exec", from, "--", "ping", "-c", "1", "-W", "1", server).status == 0
        }
        XCTAssertTrue(ping("client") && ping("other"), "no policy: everyone may ping")
        try apply("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: server-pings}
        spec:
          endpointSelector: {matchLabels: {app: server}}
          ingress:
          - fromEndpoints: [{matchLabels: {app: client}}]
            icmps: [{fields: [{type: 8, family: IPv4}]}]
        """)
        XCTAssertTrue(ping("client"), "echo requests from client are allowed, and their replies pass back")
        XCTAssertFalse(ping("other"), "other has no rule")
        XCTAssertFalse(try probe(from: "client", to: server, port: 80), "the rule allows ICMP echo, not TCP")
        XCTAssertEqual(try trace(from: "client", to: "server", port: 8, proto: "icmp"), "allowed")
        XCTAssertEqual(try trace(from: "other", to: "server", port: 8, proto: "icmp"), "denied")
        XCTAssertEqual(try trace(from: "client", to: "server", port: 13, proto: "icmp"), "denied", "a timestamp request is another type")
    }

    /// Cilium's getting-started L3/L4 policy (examples/minikube/sw_l3_l4_policy.yaml in
    /// cilium/cilium, Apache-2.0), byte for byte as Cilium publishes it.
    static let ciliumGettingStartedPolicy = """
    apiVersion: "cilium.io/v2"
    kind: CiliumNetworkPolicy
    metadata:
      name: "rule1"
    spec:
      description: "L3-L4 policy to restrict deathstar access to empire ships only"
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

    """

    func testCiliumsGettingStartedPolicyAppliesAndIsEnforced() throws {
        node = try TestNode()
        try node.start()
        try node.ctlOK("endpoint", "create", "deathstar", "--labels", "org=empire,class=deathstar")
        try node.ctlOK("endpoint", "create", "tiefighter", "--labels", "org=empire,class=tiefighter")
        try node.ctlOK("endpoint", "create", "xwing", "--labels", "org=alliance,class=xwing")
        let outside = try node.addExternalHost(address: "192.0.2.10", subnet: "192.0.2.0/24", nodeAddress: "192.0.2.1")
        try serve("deathstar", tcp: "80")
        let deathstar = try ip("deathstar")
        XCTAssertTrue(try probe(from: "xwing", to: deathstar, port: 80), "no policy yet: the xwing lands")

        try apply(Self.ciliumGettingStartedPolicy)
        XCTAssertTrue(try probe(from: "tiefighter", to: deathstar, port: 80), "an empire ship may land")
        XCTAssertFalse(try probe(from: "xwing", to: deathstar, port: 80), "an alliance ship may not")

        // The same policy as older Cilium releases printed it, description at the top:
        // applied, with a warning that names the field, as the API server would prune it.
        let older = Self.ciliumGettingStartedPolicy
            .replacingOccurrences(of: "spec:\n  description: \"L3-L4 policy to restrict deathstar access to empire ships only\"\n", with: "spec:\n")
            .replacingOccurrences(of: "kind: CiliumNetworkPolicy\n", with: "kind: CiliumNetworkPolicy\ndescription: \"L3-L4 policy\"\n")
        XCTAssertNotEqual(older, Self.ciliumGettingStartedPolicy)
        let path = node.dir + "/older.yaml"
        try older.write(toFile: path, atomically: true, encoding: .utf8)
        let r = node.ctl("policy", "apply", "-f", path)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("Warning: \(path): document 1 (CiliumNetworkPolicy rule1): description: unknown field \"description\" ignored"), r.stderr)
        XCTAssertFalse(try probe(from: "xwing", to: deathstar, port: 80), "still enforced after the re-apply")

        // The cluster entity: every endpoint and the node, never the world.
        try apply("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: rule1}
        spec:
          endpointSelector: {matchLabels: {class: deathstar}}
          ingress:
          - fromEntities: [cluster]
            toPorts: [{ports: [{port: "80", protocol: TCP}]}]
        """)
        XCTAssertTrue(try probe(from: "xwing", to: deathstar, port: 80), "cluster holds every endpoint")
        XCTAssertTrue(try probe(from: node.name, external: true, to: deathstar, port: 80), "the node itself is in the cluster")
        XCTAssertFalse(try probe(from: outside, external: true, to: deathstar, port: 80), "the world is not")
    }

    func testFragmentationNeededReachesAnAllowedFlowSoPathMTUDiscoveryWorks() throws {
        node = try TestNode()
        try node.start()
        try node.ctlOK("endpoint", "create", "client", "--labels", "app=client")
        let ext = try node.addExternalHost(address: "192.0.2.10", subnet: "192.0.2.0/24", nodeAddress: "192.0.2.1")
        // The node's link to the outside carries 1,280 bytes; the client's and the external
        // host's own links 1,500, so TCP's MSS does not tell the client: only the node's
        // "fragmentation needed" does.
        XCTAssertEqual(node.inNode("ip", "link", "set", "smx1", "mtu", "1280").status, 0)
        // Nothing may reach the client but what conntrack relates to its own flows.
        try apply("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: client-closed}
        spec:
          endpointSelector: {matchLabels: {app: client}}
          ingress: [{}]
        """)
        let sink = try traffic.startInNetns(ext, ["tcp-sink", "--port", "9100"], waitReady: true)
        let sent = try traffic.run(in: "client", ["tcp-send", "--host", "192.0.2.10", "--port", "9100", "--bytes", "1000000",
                                                  "--seed", "9", "--timeout", "10"])
        let got = try sink.result()
        XCTAssertEqual(got["bytes"] as? Int, 1_000_000)
        XCTAssertEqual(got["sha256"] as? String, sent["sha256"] as? String)
        // The client learnt the path's MTU.
        let route = node.ctl("endpoint", "exec", "client", "--", "ip", "route", "get", "192.0.2.10").stdout
        XCTAssertTrue(route.contains("mtu 1280"), route)
    }

    func testTraceShowsTheEstablishedConnectionsOfAFlow() throws {
        node = try TestNode()
        try node.start()
        try node.ctlOK("endpoint", "create", "client", "--labels", "app=client")
        try node.ctlOK("endpoint", "create", "server", "--labels", "app=server")
        let server = try ip("server")
        let sink = try traffic.start(in: "server", ["stream-sink", "--port", "7000"], waitReady: true)
        let sender = try traffic.start(in: "client", ["stream-send", "--host", server, "--port", "7000", "--seconds", "3", "--rate", "100000"])
        var established: [[String: Any]] = []
        let deadline = Date().addingTimeInterval(5)
        while established.count < 2 && Date() < deadline {
            let out = try node.ctlOK("policy", "trace", "--from", "client", "--to", "server", "--port", "7000/TCP", "-o", "json")
            established = (try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])?["established"] as? [[String: Any]] ?? []
            usleep(100_000)
        }
        // One connection, tracked at both hooks it crosses, from the sender's port.
        XCTAssertEqual(Set(established.compactMap { $0["hook"] as? String }), ["egress of client", "ingress of server"], "\(established)")
        XCTAssertEqual(Set(established.compactMap { $0["sourcePort"] as? Int }).count, 1)
        XCTAssertTrue(established.allSatisfy { $0["verdict"] as? String == "allowed" }, "\(established)")
        let text = try node.ctlOK("policy", "trace", "--from", "client", "--to", "server", "--port", "7000/TCP")
        XCTAssertTrue(text.contains("established (conntrack):") && text.contains("next packet ALLOWED"), text)
        _ = try sender.result()
        _ = try sink.result()
    }

    func testAHundredRevisionsUnderLoadNeverGiveAVerdictBothRefuse() throws {
        node = try TestNode()
        try node.start()
        try node.ctlOK("endpoint", "create", "good", "--labels", "app=good")
        try node.ctlOK("endpoint", "create", "bad", "--labels", "app=bad")
        try node.ctlOK("endpoint", "create", "server", "--labels", "app=server")
        try serve("server", tcp: "80,9000")
        let server = try ip("server")
        // Every revision allows good -> server:80 and refuses bad -> server:80; they differ
        // in a churning rule, so each one rewrites the maps.
        func revision(_ i: Int) -> String {
            """
            apiVersion: cilium.io/v2
            kind: CiliumNetworkPolicy
            metadata: {name: churn}
            spec:
              endpointSelector: {matchLabels: {app: server}}
              ingress:
              - fromEndpoints: [{matchLabels: {app: good}}]
                toPorts: [{ports: [{port: "80", protocol: TCP}]}]
              - fromCIDR: [198.18.\(i % 200).0/24]
                toPorts: [{ports: [{port: "\(1000 + i)", protocol: TCP}]}]
              - fromEndpoints: [{matchLabels: {app: \(i % 2 == 0 ? "good" : "bad")}}]
                toPorts: [{ports: [{port: "9000", protocol: TCP}]}]
            """
        }
        // Every revision under load also allows the long-lived stream on 7000.
        func withStream(_ text: String) -> String {
            text.replacingOccurrences(of: "  ingress:\n", with: "  ingress:\n  - fromEndpoints: [{matchLabels: {app: good}}]\n    toPorts: [{ports: [{port: \"7000\", protocol: TCP}]}]\n")
        }
        try apply(revision(0))
        let stream = try traffic.start(in: "server", ["stream-sink", "--port", "7000"], waitReady: true)
        // A long-lived connection from good (port 7000 is allowed by no rule: open it first).
        try node.ctlOK("policy", "delete", "churn")
        // The stream and the probe loops run until the 100 revisions are in, however long
        // that takes (60 s at most), so every revision lands while they run.
        let stop = node.dir + "/revisions.done"
        let sender = try traffic.start(in: "good", ["stream-send", "--host", server, "--port", "7000", "--seconds", "60", "--rate", "500000",
                                                    "--stop-file", stop])
        usleep(300_000)
        try apply(withStream(revision(0)))
        let goodLoop = try traffic.start(in: "good", ["probe-loop", "--host", server, "--port", "80", "--seconds", "60", "--interval", "5",
                                                      "--stop-file", stop])
        let badLoop = try traffic.start(in: "bad", ["probe-loop", "--host", server, "--port", "80", "--seconds", "60", "--interval", "5",
                                                    "--timeout", "0.3", "--stop-file", stop])
        var published = 0
        for i in 1...100 {
            try apply(withStream(revision(i)))
            published += 1
        }
        FileManager.default.createFile(atPath: stop, contents: nil)
        let good = try goodLoop.result(), bad = try badLoop.result()
        let sent = try sender.result(), got = try stream.result()
        XCTAssertEqual(published, 100)
        XCTAssertGreaterThan(good["attempts"] as? Int ?? 0, 50)
        XCTAssertEqual(good["failed"] as? Int, 0, "a flow every revision allows was refused: \(good)")
        XCTAssertGreaterThan(bad["attempts"] as? Int ?? 0, 5)
        XCTAssertEqual(bad["ok"] as? Int, 0, "a flow every revision refuses got through: \(bad)")
        XCTAssertNil(sent["error"], "the established stream survived every revision: \(sent)")
        XCTAssertEqual(got["ok"] as? Bool, true)
        XCTAssertEqual(got["bytes"] as? Int, sent["bytes"] as? Int)
        XCTAssertEqual(try node.metric("mesh_policy_apply_to_enforced_seconds_count"), 102)
    }

    func testEnforcementHoldsWhileMeshdIsDeadAndAfterItsRestart() throws {
        node = try TestNode()
        try node.start()
        try node.ctlOK("endpoint", "create", "allowed", "--labels", "app=allowed")
        try node.ctlOK("endpoint", "create", "denied", "--labels", "app=denied")
        try node.ctlOK("endpoint", "create", "server", "--labels", "app=server")
        try serve("server", tcp: "80")
        let server = try ip("server")
        try apply("""
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: server-from-allowed}
        spec:
          podSelector: {matchLabels: {app: server}}
          ingress:
          - from: [{podSelector: {matchLabels: {app: allowed}}}]
            ports: [{port: 80}]
        """)
        let listBefore = try node.ctlOK("policy", "list", "-o", "json")
        let dumpBefore = try node.ctlOK("bpf", "policy", "list", "-o", "json")
        XCTAssertTrue(try probe(from: "allowed", to: server, port: 80))
        XCTAssertFalse(try probe(from: "denied", to: server, port: 80))

        node.stop(SIGKILL)
        // No meshd: the pinned programs and maps keep enforcing. (meshctl exec needs meshd,
        // so enter the namespaces directly.)
        func direct(_ ep: String) throws -> Bool {
            let bg = try traffic.startInNetns("\(node.name)-ep-\(ep)", ["probe", "--host", server, "--port", "80", "--timeout", "1"])
            return try bg.result()["ok"] as? Bool ?? false
        }
        XCTAssertTrue(try direct("allowed"), "allowed stays allowed while meshd is dead")
        XCTAssertFalse(try direct("denied"), "denied stays denied while meshd is dead")

        try node.start()
        XCTAssertEqual(try node.ctlOK("policy", "list", "-o", "json"), listBefore, "the same policies after restart")
        XCTAssertEqual(try node.ctlOK("bpf", "policy", "list", "-o", "json"), dumpBefore, "the same compiled entries")
        XCTAssertTrue(try probe(from: "allowed", to: server, port: 80))
        XCTAssertFalse(try probe(from: "denied", to: server, port: 80))
    }

    func testAnOversizedRequestIsRefusedWith413BeforeItsBodyIsRead() throws {
        node = try TestNode()
        try node.start()
        // Raw HTTP on the API socket: headers that announce 2 GiB, then the first MiB of it.
        let client = """
        import socket, sys
        s = socket.socket(socket.AF_UNIX)
        s.connect(sys.argv[1])
        s.settimeout(10)
        s.sendall(b"POST /v1/policies HTTP/1.1\\r\\nHost: meshd\\r\\nContent-Type: application/json\\r\\n"
                  b"Content-Length: 2147483648\\r\\n\\r\\n")
        try:
            for _ in range(16):
                s.sendall(b"x" * 65536)
        except OSError:
            pass  # meshd may close the connection once it has answered
        print(s.recv(65536).decode(errors="replace"))
        """
        let r = Run.run("/usr/bin/env", ["python3", "-c", client, node.socket])
        XCTAssertTrue(r.stdout.hasPrefix("HTTP/1.1 413"), r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("a policy file is larger than 67108864 bytes"), r.stdout)
        XCTAssertTrue(r.stdout.contains("too_large"), r.stdout)
        XCTAssertEqual(node.ctl("status").status, 0, "meshd answers as before")
        XCTAssertLessThan(try node.metric("process_resident_memory_bytes") ?? .infinity, 200e6, "nothing like 2 GiB was read")
    }

    func testABadDocumentRejectsTheWholeFileAndChangesNothing() throws {
        node = try TestNode()
        try node.start()
        try node.ctlOK("endpoint", "create", "server", "--labels", "app=server")
        try apply("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: first}
        spec:
          endpointSelector: {matchLabels: {app: server}}
          ingress: [{toPorts: [{ports: [{port: "80"}]}]}]
        """)
        func snapshot() throws -> String {
            let status = try JSONSerialization.jsonObject(with: Data(try node.ctlOK("status", "-o", "json").utf8)) as? [String: Any]
            return [try node.ctlOK("policy", "list", "-o", "json"), try node.ctlOK("bpf", "policy", "list", "-o", "json"),
                    "\(status?["policyRevision"] ?? "?")"].joined(separator: "\n")
        }
        let before = try snapshot()
        let bad = node.dir + "/bad.yaml"
        try """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: good-one}
        spec:
          endpointSelector: {}
          ingress: [{toPorts: [{ports: [{port: "443"}]}]}]
        ---
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: broken}
        spec:
          endpointSelector: {}
          ingress:
          - toPorts:
            - ports:
              - port: http
        """.write(toFile: bad, atomically: true, encoding: .utf8)
        let r = node.ctl("policy", "apply", "-f", bad)
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("spec.ingress[0].toPorts[0].ports[0].port"), r.stderr)
        XCTAssertTrue(r.stderr.contains("\"http\""), r.stderr)
        XCTAssertTrue(r.stderr.contains("document 2"), r.stderr)
        XCTAssertEqual(try snapshot(), before, "nothing of the file was applied")
        let v = node.ctl("policy", "validate", "-f", bad)
        XCTAssertEqual(v.status, 1)
        XCTAssertEqual(try snapshot(), before)
        XCTAssertEqual(node.ctl("policy", "delete", "nope").status, 1)
        XCTAssertTrue(node.ctl("policy", "get", "nope").stderr.contains("policy \"default/nope\" does not exist"))
        let yaml = try node.ctlOK("policy", "get", "first")
        XCTAssertTrue(yaml.contains("kind: CiliumNetworkPolicy") && yaml.contains("name: first"), yaml)
    }
}
