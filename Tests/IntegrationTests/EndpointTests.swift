import Foundation
import XCTest

/// Endpoint lifecycle through meshctl, and bad input that must change nothing.
final class EndpointTests: XCTestCase {
    var node: TestNode!

    override func tearDown() { node?.destroy() }

    func start(podCIDR: String = "10.201.0.0/28") throws {
        node = try TestNode(podCIDR: podCIDR)
        try node.start()
    }

    /// What a bad request must leave untouched: the endpoint list, the node's namespaces,
    /// interfaces and endpoint map.
    func snapshot() throws -> String {
        let list = try node.ctlOK("endpoint", "list", "-o", "json")
        let netns = Run.run("/usr/sbin/ip", ["netns", "list"]).stdout.split(separator: "\n")
            .filter { $0.hasPrefix(node.name + "-") }.sorted().joined(separator: ",")
        let links = node.inNode("ip", "-o", "link", "show").stdout.split(separator: "\n")
            .map { $0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces) }.sorted().joined(separator: ",")
        let map = Run.run("/usr/sbin/bpftool", ["map", "dump", "pinned", node.bpffs + "/mesh_endpoints"]).stdout
        return [list, netns, links, map].joined(separator: "\n--\n")
    }

    func assertRejected(_ args: [String], code: Int32 = 1, mentions: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        let before = try snapshot()
        let r = node.ctl(args)
        XCTAssertEqual(r.status, code, "meshctl \(args) should fail", file: file, line: line)
        for m in mentions {
            XCTAssertTrue(r.stderr.contains(m), "error for \(args) should mention \"\(m)\": \(r.stderr)", file: file, line: line)
        }
        XCTAssertEqual(try snapshot(), before, "a rejected request changed the node", file: file, line: line)
    }

    func testCreateListGetExecDelete() throws {
        try start()
        let created = try node.ctlOK("endpoint", "create", "web-1", "--labels", "app=web,env=prod", "-o", "json")
        let ep = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(created.utf8)) as? [String: Any])
        XCTAssertEqual(ep["ipv4"] as? String, "10.201.0.1")
        XCTAssertEqual(ep["labels"] as? [String: String], ["app": "web", "env": "prod"])
        XCTAssertEqual(ep["netns"] as? String, "\(node.name)-ep-web-1")
        let veth = try XCTUnwrap(ep["interface"] as? String)
        XCTAssertTrue(veth.hasPrefix("sm") && veth.hasSuffix("1") && veth.count == 8, "sm, the node's tag, the id: \(veth)")
        try node.ctlOK("endpoint", "create", "db")

        let table = try node.ctlOK("endpoint", "list")
        XCTAssertTrue(table.contains("web-1") && table.contains("10.201.0.2") && table.contains("app=web,env=prod"), table)
        let get = try node.ctlOK("endpoint", "get", "web-1")
        XCTAssertTrue(get.contains("labels:    app=web,env=prod"), get)

        // exec: output, exit status, netns and cgroup are the endpoint's.
        let r = node.ctl("endpoint", "exec", "web-1", "--", "sh", "-c", "echo out; echo err >&2; ip -4 -o addr show dev eth0; cat /proc/self/cgroup; exit 7")
        XCTAssertEqual(r.status, 7)
        XCTAssertTrue(r.stdout.hasPrefix("out\n"), r.stdout)
        XCTAssertTrue(r.stderr.contains("err"))
        XCTAssertTrue(r.stdout.contains("inet 10.201.0.1/32"), r.stdout)
        XCTAssertTrue(r.stdout.contains("0::/\(node.name)/web-1"), "process joins the endpoint's cgroup: \(r.stdout)")
        // The command starts with no signal blocked and SIGPIPE at its default, as from a
        // shell: the Swift runtime's mask would otherwise keep SIGTERM, SIGINT and SIGALRM
        // from it. (Signals the caller ignores stay ignored, as a shell leaves them.)
        let signals = node.ctl("endpoint", "exec", "web-1", "--", "grep", "-E", "^Sig(Blk|Ign):", "/proc/self/status")
        let masks = Dictionary(uniqueKeysWithValues: signals.stdout.split(separator: "\n").map { line in
            let f = line.split(separator: ":").map { $0.trimmingCharacters(in: .whitespaces) }
            return (f[0], UInt64(f[1], radix: 16) ?? .max)
        })
        XCTAssertEqual(masks["SigBlk"], 0, signals.stdout)
        XCTAssertEqual((masks["SigIgn"] ?? .max) & (1 << (UInt64(SIGPIPE) - 1)), 0, "SIGPIPE ignored: \(signals.stdout)")

        // Endpoints reach each other by IP.
        XCTAssertEqual(node.ctl("endpoint", "exec", "db", "--", "ping", "-c", "1", "-W", "2", "10.201.0.1").status, 0)

        // A process left running is killed with its endpoint; everything goes.
        let sleeper = try Run.spawn(TestNode.products + "/meshctl", ["endpoint", "exec", "web-1", "--", "sleep", "300"],
                                    output: node.dir + "/sleep.out", environment: ["SWIFTMESH_API_SOCKET": node.socket])
        usleep(300_000)
        try node.ctlOK("endpoint", "delete", "web-1")
        var st: Int32 = 0
        XCTAssertEqual(waitpid(sleeper, &st, 0), sleeper)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "/run/netns/\(node.name)-ep-web-1"))
        XCTAssertNotEqual(node.inNode("ip", "link", "show", veth).status, 0, "host veth removed")
        XCTAssertFalse(FileManager.default.fileExists(atPath: try TestNode.cgroup2Root() + "/\(node.name)/web-1"))
        XCTAssertNil(try node.metric("mesh_endpoint_forwarded_packets_total", ["endpoint": "web-1", "direction": "egress"]))
        XCTAssertEqual(try node.metric("mesh_bpf_map_entries", ["map": "mesh_endpoints"]), 1)
        XCTAssertFalse(try node.ctlOK("endpoint", "list").contains("web-1"))

        // The address is free again; the id is not reused.
        let again = try node.ctlOK("endpoint", "create", "web-2", "-o", "json")
        let ep2 = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(again.utf8)) as? [String: Any])
        XCTAssertEqual(ep2["ipv4"] as? String, "10.201.0.1")
        XCTAssertEqual(ep2["id"] as? Int, 3)
    }

    func testBadInputGetsAClearErrorAndChangesNothing() throws {
        try start()
        try node.ctlOK("endpoint", "create", "web", "--labels", "app=web")
        try assertRejected(["endpoint", "get", "nope"], mentions: ["endpoint \"nope\" does not exist"])
        try assertRejected(["endpoint", "delete", "nope"], mentions: ["endpoint \"nope\" does not exist"])
        try assertRejected(["endpoint", "exec", "nope", "--", "true"], mentions: ["does not exist"])
        try assertRejected(["endpoint", "create", "web"], mentions: ["endpoint \"web\" already exists"])
        try assertRejected(["endpoint", "create", "Web"], mentions: ["\"Web\"", "lowercase"])
        try assertRejected(["endpoint", "create", "x", "--labels", "app"], mentions: ["\"app\" is not key=value"])
        try assertRejected(["endpoint", "create", "x", "--labels", "app=a b"], mentions: ["\"a b\""])
        try assertRejected(["endpoint", "create", "x", "--labels", "bad-=1"], mentions: ["\"bad-\""])
        try assertRejected(["endpoint", "create", "x", "--labels", "a=1,a=2"], mentions: ["given twice"])
        try assertRejected(["endpoint", "create", String(repeating: "a", count: 41)], mentions: ["limit is 40"])
        try assertRejected(["endpoint", "exec", "web"], mentions: ["no command given"])
        try assertRejected(["endpoint", "create"], code: 64, mentions: ["Missing expected argument"])
    }

    func testAPlumbingFailureKeepsTheKernelsWordsAndLeavesNothingBehind() throws {
        try start()
        // Take the name the next endpoint's veth will get (ids are never reused).
        let next = String(try node.interface(of: try { try node.ctlOK("endpoint", "create", "a"); return "a" }()).dropLast()) + "2"
        XCTAssertEqual(node.inNode("ip", "link", "add", next, "type", "veth", "peer", "name", next + "p").status, 0)
        try assertRejected(["endpoint", "create", "b"], mentions: ["add veth \(next)", "File exists"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: "/run/netns/\(node.name)-ep-b"), "the new netns is gone again")
        // The name is free again: the next creation works, with the next id.
        XCTAssertEqual(node.inNode("ip", "link", "del", next).status, 0)
        try node.ctlOK("endpoint", "create", "b")
        XCTAssertEqual(node.ctl("endpoint", "exec", "b", "--", "ping", "-c", "1", "-W", "2", "169.254.1.1").status, 0)
    }

    func testAnExhaustedPodCIDRIsRefusedAndChangesNothing() throws {
        try start(podCIDR: "10.201.0.0/30")
        try node.ctlOK("endpoint", "create", "a")
        try node.ctlOK("endpoint", "create", "b")
        try assertRejected(["endpoint", "create", "c"], mentions: ["10.201.0.0/30 is exhausted", "all 2 addresses"])
        try node.ctlOK("endpoint", "delete", "a")
        try node.ctlOK("endpoint", "create", "c")
    }

    func testMeshdInstallsAnUnreachableRouteForItsPodCIDR() throws {
        try start()
        let routes = node.inNode("ip", "route", "show", "type", "unreachable").stdout
        XCTAssertTrue(routes.contains("unreachable 10.201.0.0/28"), routes)
        // An unassigned address inside the CIDR is refused at once, never routed onwards.
        try node.ctlOK("endpoint", "create", "a")
        let r = node.ctl("endpoint", "exec", "a", "--", "ping", "-c", "1", "-W", "1", "10.201.0.9")
        XCTAssertNotEqual(r.status, 0)
    }

    func testTwoNodesInOneNetnsNeverRemoveEachOthersInterfacesOrNamespaces() throws {
        try start()
        let other = try TestNode(podCIDR: "10.202.0.0/28", sharingNetnsOf: node)
        defer { other.destroy() }
        try other.start()
        // The same endpoint name on both: netns, cgroups and veths stay apart.
        try node.ctlOK("endpoint", "create", "web")
        try other.ctlOK("endpoint", "create", "web")
        let mine = try node.interface(of: "web"), theirs = try other.interface(of: "web")
        XCTAssertNotEqual(mine, theirs)
        // Leftovers in the shared netns: one in each node's naming, with no stored endpoint.
        let myLeftover = String(mine.dropLast()) + "99", theirLeftover = String(theirs.dropLast()) + "99"
        for name in [myLeftover, theirLeftover] {
            XCTAssertEqual(node.inNode("ip", "link", "add", name, "type", "veth", "peer", "name", name + "p").status, 0)
        }
        try Run.checked("ip", "netns", "add", "\(other.name)-ep-ghost")

        // A restart reconciles: only this node's leftover goes.
        node.stop(SIGTERM)
        try node.start()
        let links = node.inNode("ip", "-o", "link", "show").stdout
        func present(_ name: String) -> Bool { links.contains(" \(name)@") || links.contains(" \(name):") }
        XCTAssertFalse(present(myLeftover), "this node's leftover veth is removed: \(links)")
        XCTAssertTrue(present(theirLeftover), "the other node's is not its to remove: \(links)")
        XCTAssertTrue(present(theirs) && present(mine), "both endpoint veths stay: \(links)")
        XCTAssertTrue(FileManager.default.fileExists(atPath: "/run/netns/\(other.name)-ep-ghost"))
        XCTAssertEqual(other.ctl("endpoint", "exec", "web", "--", "ping", "-c", "1", "-W", "2", "169.254.1.1").status, 0,
                       "the other node's endpoint still reaches its gateway")
        XCTAssertTrue(node.meshdLog.contains("removing leftover interface"), node.meshdLog.suffix(2000).description)
    }

    func testMeshctlSaysWhenMeshdIsNotRunning() throws {
        try TestNode.requirePrivileges()
        let r = Run.run(TestNode.products + "/meshctl", ["status"], environment: ["SWIFTMESH_API_SOCKET": "/tmp/smt-none/api.sock"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("meshd is not running at /tmp/smt-none/api.sock"), r.stderr)
    }

    func testMeshctlTellsANonRootCallerWhatToDo() throws {
        try start()
        // The socket's folder is root-only: another user cannot even reach it.
        let r = Run.run("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups",
                                             TestNode.products + "/meshctl", "status", "--api-socket", node.socket])
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("permission denied on \(node.socket)"), r.stderr)
        XCTAssertTrue(r.stderr.contains("run it as root"), r.stderr)
        let m = Run.run("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", TestNode.products + "/meshd"])
        XCTAssertEqual(m.status, 1)
        XCTAssertTrue(m.stderr.contains("meshd must run as root"), m.stderr)
    }

    func testTheAPISocketServesRootAndTheAPIGroupOnlyWhateverTheUmask() throws {
        try TestNode.requirePrivileges()
        node = try TestNode()
        try node.start(["--api-group", "nogroup"], umask: "000")
        var st = stat()
        XCTAssertEqual(stat(node.socket, &st), 0)
        XCTAssertEqual(st.st_mode & 0o7777, 0o660, "0660 under umask 000")
        XCTAssertEqual(st.st_uid, 0)
        XCTAssertEqual(st.st_gid, getgrnam("nogroup")?.pointee.gr_gid)
        func ctl(as id: Int) -> Run.Result {
            Run.run("/usr/bin/setpriv", ["--reuid=\(id)", "--regid=\(id)", "--clear-groups",
                                        TestNode.products + "/meshctl", "status", "--api-socket", node.socket])
        }
        // nobody's group is the API group: it may.
        XCTAssertEqual(ctl(as: 65534).status, 0, ctl(as: 65534).stderr)
        // Another user cannot reach the socket; with its mode loosened by mistake, meshd
        // itself still refuses it, and says who may.
        XCTAssertNotEqual(ctl(as: 4242).status, 0)
        XCTAssertEqual(chmod(node.socket, 0o666), 0)
        let r = ctl(as: 4242)
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("the meshd API serves root or members of group nogroup; this caller is uid 4242, gid 4242"), r.stderr)
        XCTAssertEqual(ctl(as: 65534).status, 0, "the group still may")
        XCTAssertEqual(node.ctl("status").status, 0, "and root")
    }

    func testMeshdRejectsBadSettingsBeforeTouchingAnything() throws {
        try TestNode.requirePrivileges()
        let dir = NSTemporaryDirectory() + "smt\(getpid())cfg"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cases: [([String], String)] = [
            (["--pod-cidr", "10.201.0.1/24"], "host bits set"),
            (["--pod-cidr", "10.201.0.0/32"], "no addresses to hand out"),
            (["--metrics-address", "localhost"], "must be IPv4:port"),
            (["--bpffs", "/tmp/x"], "under /sys/fs/bpf"),
            (["--bpffs", "/sys/fs/bpf/../../tmp/x"], "bpffs folder \"/sys/fs/bpf/../../tmp/x\" must not contain \"..\""),
            (["--cgroup", "../escape"], "cgroup \"../escape\" must not contain \"..\""),
            (["--node-name", "Bad_Name"], "node name \"Bad_Name\""),
            (["--node-name", "web-ep-1"], "node name \"web-ep-1\" must not contain \"-ep-\""),
            (["--node-name", "web-ep"], "node name \"web-ep\" must not contain \"-ep-\" or end in \"-ep\""),
            (["--config", dir + "/missing.yaml"], "cannot read config file"),
            (["--conntrack-max", "12"], "conntrack-max \"12\" must be a number of entries from 1024 to 16777216"),
            (["--conntrack-max", "lots"], "conntrack-max \"lots\" must be"),
            (["--api-group", "no-such-group-here"], "api-group \"no-such-group-here\" is not a group of this system"),
            (["--conntrack-max", "99999999999"], "conntrack-max \"99999999999\" must be"),
        ]
        for (args, message) in cases {
            let r = Run.run(TestNode.products + "/meshd", ["--state-dir", dir + "/state", "--api-socket", dir + "/s.sock"] + args)
            XCTAssertEqual(r.status, 1, "\(args)")
            XCTAssertTrue(r.stderr.contains(message), "\(args): \(r.stderr)")
        }
        try "pod-cidr: 10.201.0.0/28\nbogus: 1\n".write(toFile: dir + "/bad.yaml", atomically: true, encoding: .utf8)
        let r = Run.run(TestNode.products + "/meshd", ["--config", dir + "/bad.yaml"])
        XCTAssertTrue(r.stderr.contains("unknown setting \"bogus\""), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/state"), "nothing created")
    }
}
