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
        // A failed run keeps its nodes' logs (the nodes' folders go with them).
        // (hasSucceeded is still false in tearDown: the run has not stopped yet.)
        if (testRun?.totalFailureCount ?? 0) > 0 {
            for n in fabric?.nodes ?? [] {
                let path = NSTemporaryDirectory() + "\(n.name)-meshd.log"
                try? n.meshdLog.write(toFile: path, atomically: true, encoding: .utf8)
                let proxy = NSTemporaryDirectory() + "\(n.name)-mesh-proxy.log"
                _ = Run.run("/bin/cp", [n.dir + "/state/mesh-proxy.log", proxy])
                print("meshd log of \(n.name): \(path), its proxy's: \(proxy)")
            }
        }
        fabric?.destroy()
    }

    func ip(_ node: TestNode, _ ep: String) throws -> String {
        let json = try node.ctlOK("endpoint", "get", ep, "-o", "json")
        return try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])?["ipv4"] as? String)
    }

    /// Servers outlive any test here (tearDown kills them): the rotation test's long form
    /// runs five minutes of traffic after its setup, and a server that left at 300 s cut
    /// its last connections.
    static let serverSeconds = "1200"

    func serve(_ node: TestNode, _ ep: String, tcp: String) throws {
        servers.append(try Traffic(node: node).start(in: ep, ["echo-server", "--tcp", tcp, "--udp", "", "--seconds", Self.serverSeconds],
                                                     waitReady: true))
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

    // A Kubernetes NetworkPolicy applied on one node selects pods on the other by labels
    // of pods on the first, and one applied on the second does the same the other way:
    // each allows exactly the labelled peers and no one else. (CiliumNetworkPolicy across
    // nodes: the fault tests below.)
    func testNetworkPolicyAcrossNodesBothWays() throws {
        let (a, b) = try webAndDBNodes()
        let nodes = try a.ctlOK("node", "list")
        XCTAssertTrue(nodes.contains(a.name) && nodes.contains(b.name) && nodes.contains("10.201.2.0/28"), nodes)

        // Applied on A, enforced on B (where db runs).
        try a.apply("""
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: db-from-web}
        spec:
          podSelector: {matchLabels: {app: db}}
          policyTypes: [Ingress]
          ingress:
          - from: [{podSelector: {matchLabels: {app: web}}}]
            ports: [{port: 5432, protocol: TCP}]
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

    /// Nodes A (web, with service account web; intruder) and B (db, cache), each knowing
    /// the other's endpoints.
    func webAndDBNodes() throws -> (a: TestNode, b: TestNode) {
        fabric = try ClusterFabric()
        let a = try fabric.addNode(podCIDR: "10.201.1.0/28")
        let b = try fabric.addNode(podCIDR: "10.201.2.0/28")
        try a.ctlOK("endpoint", "create", "web", "--labels", "app=web", "--service-account", "web")
        try a.ctlOK("endpoint", "create", "intruder", "--labels", "app=intruder")
        try b.ctlOK("endpoint", "create", "db", "--labels", "app=db")
        try b.ctlOK("endpoint", "create", "cache", "--labels", "app=cache")
        try waitRemote(a, 2)
        try waitRemote(b, 2)
        return (a, b)
    }

    /// Global identities by number: their label sets.
    func identities(_ node: TestNode) throws -> [Int: String] {
        let out = try node.ctlOK("identity", "list", "-o", "json")
        let list = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]])
        var ids: [Int: String] = [:]
        for i in list where i["scope"] as? String == "global" { ids[i["id"] as? Int ?? -1] = i["labels"] as? String ?? "" }
        return ids
    }

    func serveName(_ node: TestNode, _ ep: String, tcp: String = "8080") throws {
        servers.append(try Traffic(node: node).start(in: ep, ["name-server", "--name", ep, "--tcp", tcp, "--udp", "", "--seconds", Self.serverSeconds],
                                                     waitReady: true))
    }

    /// `count` new connections from `ep` to host:port: which backend answered how often,
    /// and errors by name.
    func spread(_ node: TestNode, from ep: String, to host: String, port: Int, count: Int) throws -> (counts: [String: Int], errors: [String: Int]) {
        let r = try Traffic(node: node).run(in: ep, ["lb-client", "--host", host, "--port", "\(port)", "--count", "\(count)",
                                                     "--proto", "tcp", "--timeout", "2"])
        return ((r["counts"] as? [String: Int]) ?? [:], (r["errors"] as? [String: Int]) ?? [:])
    }

    func service(_ node: TestNode, _ name: String) throws -> [String: Any] { try node.json("get", "service", name, "-o", "json") }

    func readyBackends(_ node: TestNode, _ name: String) throws -> Set<String> {
        let backends = try service(node, name)["backends"] as? [[String: Any]] ?? []
        return Set(backends.filter { $0["state"] as? String == "ready" }.compactMap { $0["endpoint"] as? String })
    }

    static let apiService = """
    apiVersion: v1
    kind: Service
    metadata: {name: api}
    spec:
      selector: {app: api}
      ports: [{name: http, port: 80, targetPort: http}]
    """

    // A Service whose backends run on two nodes, called from a third: every node serves
    // it at the same cluster IP, new connections spread over both nodes' backends, and a
    // backend deleted on its node takes no new connection a second later.
    func testServiceBackendsOnTwoNodesCalledFromAThird() throws {
        fabric = try ClusterFabric()
        let a = try fabric.addNode(podCIDR: "10.201.1.0/28")
        let b = try fabric.addNode(podCIDR: "10.201.2.0/28")
        let c = try fabric.addNode(podCIDR: "10.201.3.0/28")
        try a.ctlOK("endpoint", "create", "api-a", "--labels", "app=api", "--ports", "http=8080")
        try b.ctlOK("endpoint", "create", "api-b", "--labels", "app=api", "--ports", "http=8080")
        try c.ctlOK("endpoint", "create", "client", "--labels", "app=client")
        try serveName(a, "api-a")
        try serveName(b, "api-b")
        try b.apply(Self.apiService)
        try c.waitFor("both nodes' backends of api on node C") {
            (try? readyBackends(c, "api")) == ["\(a.name)/api-a", "\(b.name)/api-b"]
        }
        let vip = try XCTUnwrap(try service(b, "api")["clusterIP"] as? String)
        XCTAssertEqual(try service(c, "api")["clusterIP"] as? String, vip, "every node serves the service at the cluster IP its node chose")
        XCTAssertEqual(try service(a, "api")["clusterIP"] as? String, vip)

        let spread = try self.spread(c, from: "client", to: vip, port: 80, count: 200)
        XCTAssertEqual(spread.errors, [:])
        XCTAssertEqual(Set(spread.counts.keys), ["api-a", "api-b"], "\(spread.counts)")
        // Random choice of 2 at p = 0.5: fewer than 60 of 200 for either is below 1 in 10^8.
        XCTAssertGreaterThan(spread.counts["api-a"] ?? 0, 60, "\(spread.counts)")
        XCTAssertGreaterThan(spread.counts["api-b"] ?? 0, 60, "\(spread.counts)")

        // A backend whose readiness probe fails on its own node is no backend anywhere.
        try b.ctlOK("endpoint", "create", "api-b2", "--labels", "app=api", "--ports", "http=8080", "--readiness", "tcp:http")
        try c.waitFor("api-b2 known on node C, unready") {
            let backends = try service(c, "api")["backends"] as? [[String: Any]] ?? []
            return backends.contains { $0["endpoint"] as? String == "\(b.name)/api-b2" && $0["state"] as? String == "unready" }
        }

        try b.ctlOK("endpoint", "delete", "api-b")
        Thread.sleep(forTimeInterval: 1)
        let after = try self.spread(c, from: "client", to: vip, port: 80, count: 50)
        XCTAssertEqual(after.counts, ["api-a": 50], "a second after its deletion on node B, no connection goes to api-b (nor to unready api-b2): \(after)")
        // Once it serves, its node finds it ready and every node takes it as a backend.
        try serveName(b, "api-b2")
        try c.waitFor("api-b2 ready on node C") { (try? readyBackends(c, "api"))?.contains("\(b.name)/api-b2") ?? false }
        XCTAssertEqual(Set(try self.spread(c, from: "client", to: vip, port: 80, count: 60).counts.keys), ["api-a", "api-b2"])
    }

    // A node killed without notice, its namespace gone with it: once its lease lapses,
    // the others send no new connection to its endpoints, and the identities only its
    // endpoints had are released once nobody uses them.
    func testADeadNodeLeavesTheOthersWithinItsLease() throws {
        fabric = try ClusterFabric()
        let a = try fabric.addNode(podCIDR: "10.201.1.0/28", extra: ["--identity-grace", "1"])
        let b = try fabric.addNode(podCIDR: "10.201.2.0/28", extra: ["--identity-grace", "1"])
        try a.ctlOK("endpoint", "create", "api-a", "--labels", "app=api", "--ports", "http=8080")
        try a.ctlOK("endpoint", "create", "client", "--labels", "app=client")
        try b.ctlOK("endpoint", "create", "api-b", "--labels", "app=api,zone=b", "--ports", "http=8080")
        try serveName(a, "api-a")
        try serveName(b, "api-b")
        try a.apply(Self.apiService)
        try a.waitFor("api-b as a backend on node A") { (try? readyBackends(a, "api"))?.count == 2 }
        let vip = try XCTUnwrap(try service(a, "api")["clusterIP"] as? String)
        XCTAssertEqual(Set(try spread(a, from: "client", to: vip, port: 80, count: 60).counts.keys), ["api-a", "api-b"])
        let zoneB = try XCTUnwrap(try identities(a).first { $0.value.contains("zone=b") }, "A knows B's label set")

        // SIGKILL, and the node's netns (its uplink, its endpoints' veths) gone with it.
        b.stop(SIGKILL)
        let killed = Date()
        _ = Run.run("/usr/sbin/ip", ["netns", "del", b.netns])
        try a.waitFor("node B gone from node A's view", timeout: 10) {
            (try? a.ctlOK("node", "list")).map { !$0.contains(b.name) } ?? false
        }
        let gone = Date().timeIntervalSince(killed)
        XCTAssertLessThan(gone, 4 + 1.5, "lease of 4 s plus a second and the check's own interval")
        XCTAssertEqual(try readyBackends(a, "api"), ["api-a"])
        XCTAssertEqual(try spread(a, from: "client", to: vip, port: 80, count: 40).counts, ["api-a": 40])
        try a.waitFor("identity \(zoneB.key) (\(zoneB.value)) released in etcd", timeout: 15) {
            let r = fabric.etcdctl(["get", "--prefix", "--keys-only", "/swiftmesh/v1/identities/id/\(zoneB.key)"])
            return r.status == 0 && r.stdout.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty
        }
        XCTAssertNil(try identities(a)[zoneB.key], "node A no longer holds it")
        XCTAssertNotNil(try identities(a).first { $0.value.contains("app=api") && !$0.value.contains("zone") }, "api-a's stays")
    }

    // Two nodes create endpoints with new label sets at the same moment, some the same on
    // both, some different: a label set gets one number on both nodes, and no number ever
    // stands for two label sets.
    func testRacingNodesNeverShareAnIdentity() throws {
        fabric = try ClusterFabric()
        let a = try fabric.addNode(podCIDR: "10.201.1.0/27")
        let b = try fabric.addNode(podCIDR: "10.201.2.0/27")
        var jobs: [(TestNode, pid_t, String)] = []
        // Sixteen creations at once: on each node four label sets that the other node creates
        // too and four of its own (eight rounds took twice as long and proved no more).
        for i in 0..<4 {
            for (node, tag) in [(a, "a"), (b, "b")] {
                let out = node.dir + "/race-\(tag)-\(i).out"
                let both = try Run.spawn(TestNode.products + "/meshctl", ["endpoint", "create", "same\(i)-\(tag)", "--labels", "race=same-\(i)"],
                                         output: out, environment: ["SWIFTMESH_API_SOCKET": node.socket])
                let mine = try Run.spawn(TestNode.products + "/meshctl", ["endpoint", "create", "own\(i)-\(tag)", "--labels", "race=\(tag)-\(i)"],
                                         output: out + "2", environment: ["SWIFTMESH_API_SOCKET": node.socket])
                jobs += [(node, both, out), (node, mine, out + "2")]
            }
        }
        for (_, pid, out) in jobs {
            var st: Int32 = 0
            waitpid(pid, &st, 0)
            XCTAssertEqual(st, 0, (try? String(contentsOfFile: out, encoding: .utf8)) ?? "")
        }
        // etcd's own view: every number one label set, every label set one number.
        let r = fabric.etcdctl(["get", "--prefix", "/swiftmesh/v1/identities/id/"])
        let lines = r.stdout.split(separator: "\n").map(String.init)
        var byID: [String: String] = [:]
        for i in stride(from: 0, to: lines.count - 1, by: 2) { byID[lines[i]] = lines[i + 1] }
        let raceSets = byID.values.filter { $0.contains("race=") }
        XCTAssertEqual(raceSets.count, 12, "4 shared + 4 of A's own + 4 of B's own label sets: \(byID)")
        XCTAssertEqual(Set(raceSets).count, raceSets.count, "a label set with two numbers: \(byID)")
        try waitRemote(a, 8)
        try waitRemote(b, 8)
        let idsA = try identities(a), idsB = try identities(b)
        for (id, labels) in idsA where labels.contains("race=") {
            XCTAssertEqual(idsB[id], labels, "number \(id): \(labels) on A, \(idsB[id] ?? "nothing") on B")
            XCTAssertEqual(byID["/swiftmesh/v1/identities/id/\(id)"], labels.replacingOccurrences(of: "(no labels)", with: ""))
        }
    }

    static let dbPolicy = """
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: db-from-web}
    spec:
      endpointSelector: {matchLabels: {app: db}}
      ingress:
      - fromEndpoints: [{matchLabels: {app: web}}]
        toPorts: [{ports: [{port: "5432", protocol: TCP}, {port: "7000", protocol: TCP}]}]
    """

    /// Traffic that must not notice a fault: new connections back to back from web (all
    /// allowed) and from intruder (all denied), and one long-lived connection from web
    /// exchanging a line every 100 ms. Stopped by `stop`.
    func steadyTraffic(_ a: TestNode, db: String, seconds: Int, stop: String) throws -> [Traffic.Background] {
        let t = Traffic(node: a)
        let hold = try t.start(in: "web", ["lb-hold", "--host", db, "--port", "7000", "--seconds", "\(seconds)", "--stop-file", stop])
        let allowed = try t.start(in: "web", ["probe-loop", "--host", db, "--port", "5432", "--seconds", "\(seconds)", "--interval", "50",
                                              "--timeout", "1", "--stop-file", stop])
        let denied = try t.start(in: "intruder", ["probe-loop", "--host", db, "--port", "5432", "--seconds", "\(seconds)", "--interval", "200",
                                                  "--timeout", "0.5", "--stop-file", stop])
        return [hold, allowed, denied]
    }

    /// Checks steadyTraffic's outcome; returns the long-lived and the allowed runs' results.
    @discardableResult
    func checkSteady(_ runs: [Traffic.Background], timeout: TimeInterval = 60, file: StaticString = #filePath,
                     line: UInt = #line) throws -> (hold: [String: Any], allowed: [String: Any]) {
        let hold = try runs[0].result(timeout: timeout), allowed = try runs[1].result(timeout: timeout),
            denied = try runs[2].result(timeout: timeout)
        XCTAssertNil(hold["failure"] as? String, "the long-lived connection broke: \(hold)", file: file, line: line)
        XCTAssertGreaterThan(hold["exchanges"] as? Int ?? 0, 20, "\(hold)", file: file, line: line)
        XCTAssertEqual(allowed["failed"] as? Int, 0, "allowed connections failed: \(allowed)", file: file, line: line)
        XCTAssertGreaterThan(allowed["ok"] as? Int ?? 0, 20, "\(allowed)", file: file, line: line)
        XCTAssertEqual(denied["ok"] as? Int, 0, "denied connections got through: \(denied)", file: file, line: line)
        XCTAssertGreaterThan(denied["attempts"] as? Int ?? 0, 5, "\(denied)", file: file, line: line)
        return (hold, allowed)
    }

    /// Nodes A (web, intruder) and B (db: echo on 5432, name and echo on 7000) under
    /// db-from-web, applied on A.
    func twoNodesWithPolicy(_ fabric: ClusterFabric) throws -> (TestNode, TestNode, String) {
        let a = try fabric.addNode(podCIDR: "10.201.1.0/28")
        let b = try fabric.addNode(podCIDR: "10.201.2.0/28")
        try a.ctlOK("endpoint", "create", "web", "--labels", "app=web")
        try a.ctlOK("endpoint", "create", "intruder", "--labels", "app=intruder")
        try b.ctlOK("endpoint", "create", "db", "--labels", "app=db")
        try a.apply(Self.dbPolicy)
        try waitRemote(a, 1)
        try b.waitFor("db-from-web on node B") { (try? b.ctlOK("policy", "get", "db-from-web")) != nil }
        try serve(b, "db", tcp: "5432")
        try serveName(b, "db", tcp: "7000")
        return (a, b, try ip(b, "db"))
    }

    // etcd gone for 30 s under continuous traffic: no verdict changes, no connection
    // drops, the outage is reported (status, metric) and changes are refused with a clear
    // error; once etcd is back both nodes resynchronise and a change made on one node
    // then reaches the other.
    func testEtcdDownForThirtySecondsChangesNothingOnTheDataPath() throws {
        fabric = try ClusterFabric()
        let (a, b, db) = try twoNodesWithPolicy(fabric)
        let stop = a.dir + "/stop-steady"
        let runs = try steadyTraffic(a, db: db, seconds: 60, stop: stop)
        Thread.sleep(forTimeInterval: 1)

        fabric.stopEtcd(1)
        try a.waitFor("node A to notice etcd is gone", timeout: 10) {
            ((try a.json("status", "-o", "json")["cluster"] as? [String: Any])?["connected"] as? Bool) == false
        }
        XCTAssertEqual(try a.metric("mesh_cluster_etcd_up"), 0)
        XCTAssertTrue(try a.ctlOK("status").contains("UNREACHABLE"))
        let refused = b.ctl("policy", "delete", "db-from-web")
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.stderr.contains("etcd") && refused.stderr.contains("unreachable"), refused.stderr)
        XCTAssertNotNil(try? b.ctlOK("policy", "get", "db-from-web"), "a refused change changes nothing")
        Thread.sleep(forTimeInterval: 30)

        try fabric.startEtcd(1)
        try fabric.waitEtcd(1)
        for node in [a, b] {
            try node.waitFor("\(node.name) to reconnect", timeout: 15) {
                ((try node.json("status", "-o", "json")["cluster"] as? [String: Any])?["connected"] as? Bool) == true
            }
        }
        XCTAssertEqual(try a.metric("mesh_cluster_etcd_up"), 1)
        // A change on B, now that etcd is back, reaches A.
        try b.ctlOK("endpoint", "create", "db2", "--labels", "app=db")
        try waitRemote(a, 2)
        try serve(b, "db2", tcp: "5432")
        XCTAssertTrue(try probe(a, from: "web", to: try ip(b, "db2"), port: 5432), "web reaches the db made after the outage")
        XCTAssertFalse(try probe(a, from: "intruder", to: try ip(b, "db2"), port: 5432))
        FileManager.default.createFile(atPath: stop, contents: nil)
        let (_, allowed) = try checkSteady(runs)
        if (allowed["failed"] as? Int ?? 1) != 0 {
            // Rare (once in CI, never here): what both nodes made of the outage, to find why.
            print("node A's log:\n\(a.meshdLog.suffix(6000))\nnode B's log:\n\(b.meshdLog.suffix(6000))")
        }
        XCTAssertEqual(try a.ctlOK("node", "list").components(separatedBy: "\n").filter { $0.contains("smt") }.count, 2)
        // Back is back: no node lost etcd again once it had it (a client that kept backing
        // off its connections after the outage made nodes flap, and their leases lapse).
        for node in [a, b] {
            let lines = node.meshdLog.components(separatedBy: "\n")
            XCTAssertEqual(lines.filter { $0.contains("etcd connected") }.count, 2, "\(node.name):\n\(node.meshdLog.suffix(4000))")
        }
    }

    // A three-member etcd loses its leader under traffic: the nodes fail over to the
    // other members, the data path notices nothing, and changes keep flowing.
    func testEtcdLeaderKilledUnderTrafficLosesNothing() throws {
        fabric = try ClusterFabric(members: 3)
        let (a, b, db) = try twoNodesWithPolicy(fabric)
        let stop = a.dir + "/stop-steady"
        let runs = try steadyTraffic(a, db: db, seconds: 40, stop: stop)
        Thread.sleep(forTimeInterval: 1)
        let leader = try XCTUnwrap(fabric.leader(), "a leader among 3 members")
        fabric.stopEtcd(leader)
        try b.ctlOK("endpoint", "create", "db2", "--labels", "app=db")
        try waitRemote(a, 2, timeout: 15)
        try serve(b, "db2", tcp: "5432")
        XCTAssertTrue(try probe(a, from: "web", to: try ip(b, "db2"), port: 5432))
        XCTAssertNotNil(fabric.leader(), "the two members left elected a new leader")
        Thread.sleep(forTimeInterval: 2)
        FileManager.default.createFile(atPath: stop, contents: nil)
        try checkSteady(runs)
        for node in [a, b] {
            XCTAssertEqual((try node.json("status", "-o", "json")["cluster"] as? [String: Any])?["connected"] as? Bool, true, node.name)
        }
    }

    // meshd restarted on a node (SIGKILL, then started again) under traffic: it takes
    // its lease back, so the other node never sees it leave, and no flow notices.
    func testMeshdRestartInAClusterWithdrawsNothing() throws {
        fabric = try ClusterFabric()
        let (a, b, db) = try twoNodesWithPolicy(fabric)
        let stop = a.dir + "/stop-steady"
        let runs = try steadyTraffic(a, db: db, seconds: 30, stop: stop)
        Thread.sleep(forTimeInterval: 1)
        let before = try a.metric("mesh_policy_revision")
        b.stop(SIGKILL)
        Thread.sleep(forTimeInterval: 1)
        try b.start(fabric.clusterArgs(2))
        try b.waitFor("node B's view of node A back", timeout: 10) {
            ((try b.json("status", "-o", "json")["cluster"] as? [String: Any])?["remoteEndpoints"] as? Int) == 2
        }
        Thread.sleep(forTimeInterval: 2)
        FileManager.default.createFile(atPath: stop, contents: nil)
        try checkSteady(runs)
        XCTAssertFalse(a.meshdLog.contains("node left"), "node A saw node B leave:\n\(a.meshdLog.suffix(2000))")
        XCTAssertEqual(try a.metric("mesh_policy_revision"), before, "node A published nothing: B's records came back unchanged")
    }

    // A node whose pod CIDR overlaps a live node's claim does not start, and says whose.
    func testAnOverlappingPodCIDRIsRefused() throws {
        fabric = try ClusterFabric()
        let a = try fabric.addNode(podCIDR: "10.201.1.0/24")
        let b = try fabric.addNode(podCIDR: "10.201.1.128/25", start: false)
        XCTAssertThrowsError(try b.start(fabric.clusterArgs(2))) { error in
            XCTAssertTrue("\(error)".contains("overlaps 10.201.1.0/24 of node \(a.name)"), "\(error)")
        }
        XCTAssertEqual(try a.ctlOK("node", "list").components(separatedBy: "\n").filter { $0.contains("smt") }.count, 1)
    }

    // Members without a pod CIDR of their own get non-overlapping blocks of the cluster's
    // range, keep them across a restart, and reach each other's endpoints through them.
    func testPodCIDRsAreAllocatedFromTheClusterRange() throws {
        fabric = try ClusterFabric()
        let range = ["--cluster-pod-cidr", "10.202.0.0/16", "--pod-cidr-size", "26"]
        let a = try fabric.addNode(podCIDR: "", extra: range)
        let b = try fabric.addNode(podCIDR: "", extra: range)
        let cidrA = try XCTUnwrap(try a.json("status", "-o", "json")["podCIDR"] as? String)
        let cidrB = try XCTUnwrap(try b.json("status", "-o", "json")["podCIDR"] as? String)
        XCTAssertTrue(cidrA.hasPrefix("10.202.") && cidrA.hasSuffix("/26"), cidrA)
        XCTAssertTrue(cidrB.hasPrefix("10.202.") && cidrB.hasSuffix("/26"), cidrB)
        XCTAssertNotEqual(cidrA, cidrB)
        try a.ctlOK("endpoint", "create", "web", "--labels", "app=web")
        try b.ctlOK("endpoint", "create", "db", "--labels", "app=db")
        try waitRemote(a, 1)
        try serve(b, "db", tcp: "5432")
        XCTAssertTrue(try probe(a, from: "web", to: try ip(b, "db"), port: 5432))
        a.stop()
        try a.start(fabric.clusterArgs(1) + range)
        XCTAssertEqual(try a.json("status", "-o", "json")["podCIDR"] as? String, cidrA, "a restart keeps the block")
    }
}
