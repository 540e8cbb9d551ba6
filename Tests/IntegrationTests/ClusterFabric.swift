import Foundation
import XCTest

/// The network between a test's nodes, and the etcd they share: a netns of its own
/// (`smt<pid>f<n>`) with a bridge, one veth to each node's netns (the node's `uplink`,
/// 10.99.0.<k>), and one to three etcd members from Debian's `etcd-server` on addresses
/// of the bridge (10.99.0.201…). Nothing of it leaves the namespaces the test made.
final class ClusterFabric {
    nonisolated(unsafe) private static var counter = 0

    let name: String
    let dir: String
    let members: Int
    private(set) var etcdPIDs: [Int: pid_t] = [:]
    private(set) var nodes: [TestNode] = []
    private(set) var outsiders: [String] = []

    static func memberIP(_ i: Int) -> String { "10.99.0.\(200 + i)" }
    var etcdURL: String { "etcd://" + (1...members).map { "\(Self.memberIP($0)):2379" }.joined(separator: ",") }

    init(members: Int = 1) throws {
        try TestNode.requirePrivileges()
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/etcd") else {
            throw TestFailure("etcd is not installed (Debian's etcd-server): tools/setup installs it")
        }
        Self.counter += 1
        name = "smt\(getpid())f\(Self.counter)"
        dir = NSTemporaryDirectory() + name
        self.members = members
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try Run.checked("ip", "netns", "add", name)
        try Run.checked("ip", "-n", name, "link", "set", "lo", "up")
        // A fixed MAC: a bridge otherwise takes its lowest port's, and changes it (breaking
        // every neighbour's ARP entry for etcd) when that port's node goes away.
        try Run.checked("ip", "-n", name, "link", "add", "br0", "address", "02:00:0a:63:00:c8", "type", "bridge")
        try Run.checked("ip", "-n", name, "link", "set", "br0", "up")
        for i in 1...members {
            try Run.checked("ip", "-n", name, "addr", "add", "\(Self.memberIP(i))/24", "dev", "br0")
        }
        for i in 1...members { try startEtcd(i) }
        for i in 1...members { try waitEtcd(i) }
    }

    /// A node of the cluster: its netns gets the uplink 10.99.0.<k>; meshd starts with
    /// `--cluster` and `--node-ip` (and `extra`).
    @discardableResult
    func addNode(podCIDR: String, extra: [String] = [], start: Bool = true) throws -> TestNode {
        let node = try TestNode(podCIDR: podCIDR)
        nodes.append(node)
        let k = nodes.count
        try Run.checked("ip", "-n", name, "link", "add", "n\(k)", "type", "veth", "peer", "name", "uplink", "netns", node.netns)
        try Run.checked("ip", "-n", name, "link", "set", "n\(k)", "master", "br0")
        try Run.checked("ip", "-n", name, "link", "set", "n\(k)", "up")
        try Run.checked("ip", "-n", node.netns, "addr", "add", "\(nodeIP(k))/24", "dev", "uplink")
        try Run.checked("ip", "-n", node.netns, "link", "set", "uplink", "up")
        if start { try node.start(clusterArgs(k) + extra) }
        return node
    }

    func nodeIP(_ k: Int) -> String { "10.99.0.\(k)" }

    /// A host on the link between the nodes that is no node of the mesh (an attacker on
    /// the wire): its own netns on the bridge, with `address` (any address, an endpoint's
    /// included) and a route to `podCIDR` through node `k`. Returns the netns.
    func addOutsider(address: String, routeTo podCIDR: String, via k: Int) throws -> String {
        let ns = "\(name)o\(outsiders.count + 1)"
        outsiders.append(ns)
        try Run.checked("ip", "netns", "add", ns)
        try Run.checked("ip", "-n", name, "link", "add", "o\(outsiders.count)", "type", "veth", "peer", "name", "eth0", "netns", ns)
        try Run.checked("ip", "-n", name, "link", "set", "o\(outsiders.count)", "master", "br0")
        try Run.checked("ip", "-n", name, "link", "set", "o\(outsiders.count)", "up")
        try Run.checked("ip", "-n", ns, "link", "set", "lo", "up")
        try Run.checked("ip", "-n", ns, "addr", "add", "\(address)/32", "dev", "eth0")
        try Run.checked("ip", "-n", ns, "link", "set", "eth0", "up")
        try Run.checked("ip", "-n", ns, "route", "add", podCIDR, "via", nodeIP(k), "dev", "eth0", "onlink")
        return ns
    }

    func clusterArgs(_ k: Int) -> [String] {
        ["--cluster", etcdURL, "--node-ip", nodeIP(k), "--cluster-lease-ttl", "4"]
    }

    func startEtcd(_ i: Int) throws {
        let ip = Self.memberIP(i)
        let cluster = (1...members).map { "m\($0)=http://\(Self.memberIP($0)):2380" }.joined(separator: ",")
        let args = ["--net=/run/netns/\(name)", "/usr/bin/etcd", "--name", "m\(i)", "--data-dir", "\(dir)/m\(i)",
                    "--listen-client-urls", "http://\(ip):2379", "--advertise-client-urls", "http://\(ip):2379",
                    "--listen-peer-urls", "http://\(ip):2380", "--initial-advertise-peer-urls", "http://\(ip):2380",
                    "--initial-cluster", cluster, "--initial-cluster-state", "new",
                    // Elections in a second, not ten: a killed leader is replaced while the test watches.
                    "--heartbeat-interval", "50", "--election-timeout", "500", "--log-level", "warn"]
        etcdPIDs[i] = try Run.spawn("/usr/bin/nsenter", args, output: "\(dir)/etcd-m\(i).log")
    }

    func waitEtcd(_ i: Int, timeout: TimeInterval = 20) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if etcdctl(["endpoint", "health", "--endpoints", "http://\(Self.memberIP(i)):2379"]).status == 0 { return }
            usleep(100_000)
        }
        throw TestFailure("etcd member m\(i) did not become healthy:\n\(etcdLog(i))")
    }

    func etcdLog(_ i: Int) -> String { (try? String(contentsOfFile: "\(dir)/etcd-m\(i).log", encoding: .utf8)) ?? "" }

    /// Stops member `i` (SIGKILL: a crash, or SIGSTOP: a member that hangs).
    func stopEtcd(_ i: Int, signal: Int32 = SIGKILL) {
        guard let pid = etcdPIDs[i] else { return }
        kill(pid, signal)
        if signal == SIGKILL {
            var st: Int32 = 0
            waitpid(pid, &st, 0)
            etcdPIDs[i] = nil
        }
    }

    /// etcdctl (v3) in the fabric's netns, against every member.
    func etcdctl(_ args: [String]) -> Run.Result {
        Run.run("/usr/bin/nsenter", ["--net=/run/netns/\(name)", "/usr/bin/etcdctl"] +
                (args.contains("--endpoints") ? [] : ["--endpoints", (1...members).map { "http://\(Self.memberIP($0)):2379" }.joined(separator: ",")]) +
                args, environment: ["ETCDCTL_API": "3"])
    }

    /// The leader's member number.
    func leader() -> Int? {
        for i in 1...members where etcdPIDs[i] != nil {
            let r = etcdctl(["endpoint", "status", "--endpoints", "http://\(Self.memberIP(i)):2379", "-w", "json"])
            guard let list = try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]],
                  let st = list.first?["Status"] as? [String: Any], let header = st["header"] as? [String: Any] else { continue }
            if "\(header["member_id"] ?? "")" == "\(st["leader"] ?? "")" { return i }
        }
        return nil
    }

    func destroy() {
        for node in nodes { node.destroy() }
        for (_, pid) in etcdPIDs {
            kill(pid, SIGKILL)
            var st: Int32 = 0
            waitpid(pid, &st, 0)
        }
        etcdPIDs = [:]
        for ns in outsiders { _ = Run.run("/usr/sbin/ip", ["netns", "del", ns]) }
        _ = Run.run("/usr/sbin/ip", ["netns", "del", name])
        _ = Run.run("/bin/rm", ["-rf", dir])
    }
}
