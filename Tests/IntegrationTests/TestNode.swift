import Foundation
import XCTest

/// One SwiftMesh node for a test: its own network namespace, pin folder, cgroup, state
/// folder and API socket, all named `smt<runner pid>x<n>` so that nodes of one run never
/// meet, and `tools/setup` can sweep what a killed run left behind.
final class TestNode {
    nonisolated(unsafe) private static var counter = 0

    let name: String
    let dir: String
    let podCIDR: String
    /// The netns meshd runs in: the node's own (named like the node), or another node's.
    let netns: String
    /// Whether this node made `netns` (and removes it).
    private let ownsNetns: Bool
    let metricsPort: Int
    private(set) var pid: pid_t = 0
    var socket: String { dir + "/api.sock" }
    var bpffs: String { "/sys/fs/bpf/\(name)" }

    /// Fails (or, off this project's machines, skips) when the test cannot run as root.
    static func requirePrivileges() throws {
        guard geteuid() == 0 else {
            if ProcessInfo.processInfo.environment["SWIFTMESH_REQUIRE_PRIVILEGED"] == "1" {
                XCTFail("this test needs root (BPF, netns, cgroups); tools/test runs it as root")
                throw XCTSkip("not root")
            }
            throw XCTSkip("needs root: BPF programs, network namespaces and cgroups (run tools/test as root)")
        }
    }

    /// `sharingNetnsOf`: run in that node's netns (two meshd side by side), with metrics
    /// on the next port.
    init(podCIDR: String = "10.201.0.0/28", sharingNetnsOf other: TestNode? = nil) throws {
        try Self.requirePrivileges()
        Self.counter += 1
        name = "smt\(getpid())x\(Self.counter)"
        dir = NSTemporaryDirectory() + name
        self.podCIDR = podCIDR
        netns = other?.netns ?? name
        ownsNetns = other == nil
        metricsPort = (other?.metricsPort).map { $0 + 1 } ?? 9464
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        if ownsNetns { try Run.checked("ip", "netns", "add", name) }
    }

    static var products: String {
        // The xctest bundle sits in the products folder next to meshd and meshctl.
        var url = Bundle(for: TestNode.self).bundleURL
        while url.pathExtension == "xctest" || url.lastPathComponent == "Contents" || url.lastPathComponent == "MacOS" {
            url.deleteLastPathComponent()
        }
        return url.path
    }

    /// Starts meshd inside the node's netns and waits until its API answers. `umask`, when
    /// given, is the file mode mask meshd starts with.
    func start(_ extra: [String] = [], umask: String? = nil) throws {
        let log = dir + "/meshd.log"
        FileManager.default.createFile(atPath: log, contents: nil)
        // An empty podCIDR: none given (a cluster member allocates one from its range).
        let args = ["--net=/run/netns/\(netns)", Self.products + "/meshd",
                    "--node-name", name, "--state-dir", dir + "/state", "--api-socket", socket] +
                   (podCIDR.isEmpty ? [] : ["--pod-cidr", podCIDR]) +
                   ["--metrics-address", "127.0.0.1:\(metricsPort)", "--log-level", "debug"] + extra
        if let umask {
            pid = try Run.spawn("/bin/sh", ["-c", "umask \(umask) && exec /usr/bin/nsenter \"$@\"", "sh"] + args, output: log)
        } else {
            pid = try Run.spawn("/usr/bin/nsenter", args, output: log)
        }
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if ctl("status").status == 0 { return }
            var st: Int32 = 0
            if waitpid(pid, &st, WNOHANG) == pid {
                pid = 0
                throw TestFailure("meshd exited during start-up:\n\(meshdLog)")
            }
            usleep(100_000)
        }
        throw TestFailure("meshd did not answer within 20 s:\n\(meshdLog)")
    }

    var meshdLog: String { (try? String(contentsOfFile: dir + "/meshd.log", encoding: .utf8)) ?? "" }

    /// Sends `signal` to meshd and reaps it.
    func stop(_ signal: Int32 = SIGTERM) {
        guard pid > 0 else { return }
        kill(pid, signal)
        var st: Int32 = 0
        waitpid(pid, &st, 0)
        pid = 0
    }

    func ctl(_ args: String...) -> Run.Result { ctl(args) }

    func ctl(_ args: [String]) -> Run.Result {
        Run.run(Self.products + "/meshctl", args, environment: ["SWIFTMESH_API_SOCKET": socket])
    }

    /// meshctl that must succeed; returns its stdout.
    @discardableResult
    func ctlOK(_ args: String..., file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let r = ctl(args)
        guard r.status == 0 else {
            throw TestFailure("meshctl \(args.joined(separator: " ")) exited \(r.status): \(r.stderr)\n\(meshdLog.suffix(2000))")
        }
        return r.stdout
    }

    /// Runs a command in the node's own netns (where meshd runs).
    func inNode(_ args: String...) -> Run.Result {
        Run.run("/usr/bin/nsenter", ["--net=/run/netns/\(netns)"] + args)
    }

    /// The host-side veth of endpoint `endpoint`, as meshd named it.
    func interface(of endpoint: String) throws -> String {
        let json = try ctlOK("endpoint", "get", endpoint, "-o", "json")
        guard let name = (try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])?["interface"] as? String else {
            throw TestFailure("endpoint \(endpoint) has no interface: \(json)")
        }
        return name
    }

    func scrape() throws -> String {
        let r = inNode("curl", "-sf", "http://127.0.0.1:\(metricsPort)/metrics")
        guard r.status == 0 else { throw TestFailure("scrape failed: \(r.stderr)") }
        return r.stdout
    }

    /// The value of one sample, matched by name and exact labels.
    func metric(_ name: String, _ labels: [String: String] = [:]) throws -> Double? {
        try Self.sample(in: scrape(), name, labels)
    }

    static func sample(in text: String, _ name: String, _ labels: [String: String]) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(name) && !line.hasPrefix("#") {
            let rest = line.dropFirst(name.count)
            var found: [String: String] = [:]
            var valuePart = rest
            if rest.hasPrefix("{") {
                guard let close = rest.firstIndex(of: "}") else { continue }
                for pair in rest[rest.index(after: rest.startIndex)..<close].split(separator: ",") {
                    let kv = pair.split(separator: "=", maxSplits: 1)
                    if kv.count == 2 { found[String(kv[0])] = String(kv[1].dropFirst().dropLast()) }
                }
                valuePart = rest[rest.index(after: close)...]
            } else if !rest.hasPrefix(" ") { continue }
            if found == labels, let v = Double(valuePart.trimmingCharacters(in: .whitespaces)) { return v }
        }
        return nil
    }

    private var externalCount = 0

    /// A host outside the node (a "world" peer): its own netns `<node>-x<n>`, wired to the
    /// node's netns by a veth, with `address` in `subnet` and the node at `.1` of it.
    /// Returns the netns name.
    @discardableResult
    func addExternalHost(address: String, subnet: String, nodeAddress: String) throws -> String {
        externalCount += 1
        let ns = "\(name)-x\(externalCount)"
        let ifname = "smx\(externalCount)"
        try Run.checked("ip", "netns", "add", ns)
        try Run.checked("ip", "-n", netns, "link", "add", ifname, "type", "veth", "peer", "name", "eth0", "netns", ns)
        try Run.checked("ip", "-n", netns, "addr", "add", "\(nodeAddress)/\(subnet.split(separator: "/")[1])", "dev", ifname)
        try Run.checked("ip", "-n", netns, "link", "set", ifname, "up")
        try Run.checked("ip", "-n", ns, "addr", "add", "\(address)/\(subnet.split(separator: "/")[1])", "dev", "eth0")
        try Run.checked("ip", "-n", ns, "link", "set", "lo", "up")
        try Run.checked("ip", "-n", ns, "link", "set", "eth0", "up")
        try Run.checked("ip", "-n", ns, "route", "add", "default", "via", nodeAddress)
        return ns
    }

    /// Removes everything the node made, whatever state it is in.
    func destroy() {
        stop(SIGKILL)
        // The L7 proxy outlives meshd by design; this node's is the one on its control socket.
        _ = Run.run("/usr/bin/pkill", ["-KILL", "-f", "--", "--control \(dir)/state/proxy.sock"])
        let list = Run.run("/usr/sbin/ip", ["netns", "list"]).stdout
        for line in list.split(separator: "\n") {
            let ns = String(line.split(separator: " ").first ?? "")
            if ns.hasPrefix(name + "-ep-") || ns.hasPrefix(name + "-x") { _ = Run.run("/usr/sbin/ip", ["netns", "del", ns]) }
        }
        if ownsNetns { _ = Run.run("/usr/sbin/ip", ["netns", "del", name]) }
        _ = Run.run("/bin/rm", ["-rf", bpffs, dir, "/run/swiftmesh-dns/\(name)"])
        for ns in (try? FileManager.default.contentsOfDirectory(atPath: "/etc/netns")) ?? [] where ns.hasPrefix(name + "-ep-") {
            _ = Run.run("/bin/rm", ["-rf", "/etc/netns/\(ns)"])
        }
        if let root = try? Self.cgroup2Root() {
            let cg = root + "/" + name
            if let kids = try? FileManager.default.contentsOfDirectory(atPath: cg) {
                for k in kids where !k.contains(".") {
                    try? "1".write(toFile: "\(cg)/\(k)/cgroup.kill", atomically: false, encoding: .utf8)
                    // A killed process leaves its cgroup a moment later (dnsmasq in _dns
                    // was seen to outlast one 20 ms wait): try for up to a second.
                    // (A loop, not `for … where`: a where clause filters iterations and would
                    // sleep through all fifty once rmdir had succeeded, failing with ENOENT.)
                    var tries = 0
                    while rmdir("\(cg)/\(k)") != 0 && errno != ENOENT && tries < 50 { usleep(20_000); tries += 1 }
                }
            }
            rmdir(cg)
        }
    }

    static func cgroup2Root() throws -> String {
        let text = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
        for line in text.split(separator: "\n") where line.contains(" - cgroup2 ") {
            return String(line.split(separator: " ")[4])
        }
        throw TestFailure("no cgroup2 mount")
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// Small process helpers for tests (run in the test runner's own netns).
enum Run {
    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    static func run(_ exe: String, _ args: [String], environment: [String: String] = [:]) -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        var env = ProcessInfo.processInfo.environment
        env.merge(environment) { $1 }
        p.environment = env
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = FileHandle.nullDevice
        do { try p.run() } catch { return Result(status: 127, stdout: "", stderr: "\(error)") }
        // Read both pipes concurrently: a full stderr pipe must not stall the child.
        nonisolated(unsafe) var errData = Data()
        let t = Thread { errData = err.fileHandleForReading.readDataToEndOfFile() }
        t.start()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        while t.isExecuting || !t.isFinished { usleep(1000) }
        return Result(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: errData, as: UTF8.self))
    }

    static func checked(_ args: String...) throws {
        let r = run("/usr/bin/env", args)
        guard r.status == 0 else { throw TestFailure("\(args.joined(separator: " ")) failed: \(r.stderr)") }
    }

    /// Starts a process in the background with stdout and stderr going to `output`.
    static func spawn(_ exe: String, _ args: [String], output: String, environment: [String: String] = [:]) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let argv = ([exe] + args).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var env = ProcessInfo.processInfo.environment
        env.merge(environment) { $1 }
        let envp = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { envp.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, exe, &actions, nil, argv, envp)
        guard rc == 0 else { throw TestFailure("spawn \(exe): \(String(cString: strerror(rc)))") }
        return pid
    }
}

/// What scenario tests ask of a node again and again: apply a file, read JSON, wait.
extension TestNode {
    @discardableResult
    func apply(_ yaml: String) throws -> String {
        let path = dir + "/apply-\(UUID().uuidString.prefix(6)).yaml"
        try yaml.write(toFile: path, atomically: true, encoding: .utf8)
        return try ctlOK("apply", "-f", path)
    }

    func json(_ args: String...) throws -> [String: Any] {
        let r = ctl(args)
        guard r.status == 0 else { throw TestFailure("meshctl \(args.joined(separator: " ")): \(r.stderr)") }
        guard let object = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else {
            throw TestFailure("meshctl \(args.joined(separator: " ")): not a JSON object: \(r.stdout.prefix(200))")
        }
        return object
    }

    func waitFor(_ what: String, timeout: TimeInterval = 15, _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if try condition() { return }
            usleep(50_000)
        }
        throw TestFailure("timed out waiting for \(what)\n\(meshdLog.suffix(3000))")
    }
}
