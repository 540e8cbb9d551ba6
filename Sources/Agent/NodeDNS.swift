import Foundation
import Logging
import MeshModel
import ServiceLifecycle

/// Service names inside endpoints: `NAME`, `NAME.NAMESPACE` and
/// `NAME.NAMESPACE.svc.cluster.local` resolve to the service's cluster IP.
///
/// The server is Debian's dnsmasq, not one written here: it is small, maintained, and
/// reads a folder of hosts files that it re-reads by itself (inotify) when meshd
/// replaces the file, so a name follows its service within milliseconds and nothing has
/// to be signalled. meshd starts it in the node's netns, bound to 169.254.1.1:53 only (the
/// gateway address every endpoint has a route to; `--bind-dynamic`, so it binds once the
/// first endpoint's veth holds it, and never a wildcard), answering only for `cluster.local`
/// and forwarding nothing anywhere. Endpoints get a resolv.conf through `ip netns`'s own
/// convention, /etc/netns/<netns>/resolv.conf, with Kubernetes' search path, so glibc,
/// curl and Python resolve short names unchanged.
///
/// dnsmasq runs in a cgroup of its own under the node's (`_dns`), drops to `nobody`, and
/// outlives meshd like the datapath does: a restarted meshd adopts it.
public final class NodeDNS: Service, @unchecked Sendable {
    let settings: NodeSettings
    let logger: Logger
    /// Served files: world-readable, outside the state folder (0700) that dnsmasq, once
    /// it has dropped to nobody, could not enter.
    let folder: String
    var hostsDir: String { folder + "/hosts" }
    var pidFile: String { folder + "/dnsmasq.pid" }
    var cgroup: String { settings.cgroup + "/_dns" }
    static let listenAddress = Plumbing.gateway
    static let domain = "cluster.local"
    private let lock = NSLock()
    private var lastRecords: [String]?
    private var process: Process?

    init(settings: NodeSettings, logger: Logger) {
        self.settings = settings
        self.logger = logger
        self.folder = "/run/swiftmesh-dns/\(settings.nodeName)"
    }

    /// The folders and an empty hosts file, before the first publish.
    func prepare() throws(MeshError) {
        do {
            for dir in ["/run/swiftmesh-dns", folder, hostsDir] {
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                chmod(dir, 0o755)
            }
        } catch {
            throw MeshError(.internalError, "cannot create the DNS folder \(folder): \(error.localizedDescription)")
        }
    }

    /// Replaces the served names: `records` are (fully qualified name, address). The file is
    /// written beside the watched folder and renamed into it, so dnsmasq never reads half.
    func publish(_ records: [(name: String, address: IPv4Address)]) {
        let lines = records.map { "\($0.address) \($0.name)" }.sorted()
        guard lock.withLock({ lastRecords != lines }) else { return }
        let tmp = folder + "/.services.tmp", target = hostsDir + "/services"
        let text = "# written by meshd: one line per service, NAME.NAMESPACE.svc.cluster.local\n" + lines.map { $0 + "\n" }.joined()
        guard FileManager.default.createFile(atPath: tmp, contents: Data(text.utf8), attributes: [.posixPermissions: 0o644]),
              rename(tmp, target) == 0 else {
            logger.error("cannot write the DNS hosts file", metadata: ["file": "\(target)", "error": "\(String(cString: strerror(errno)))"])
            return // the next publish tries again
        }
        lock.withLock { lastRecords = lines }
    }

    /// resolv.conf for an endpoint in `namespace`, as Kubernetes writes a pod's.
    static func resolvConf(namespace: String) -> String {
        """
        # written by meshd for a SwiftMesh endpoint
        nameserver \(listenAddress)
        search \(namespace).svc.\(domain) svc.\(domain) \(domain)
        options ndots:5

        """
    }

    /// Gives an endpoint its resolv.conf (read by `ip netns exec`, so by `meshctl endpoint exec`).
    func configure(_ ep: Endpoint) {
        let dir = "/etc/netns/\(ep.netns)"
        let text = Self.resolvConf(namespace: ep.labels.namespace)
        // A relabel that leaves the namespace alone leaves the file alone: the atomic
        // write (a new file, renamed over) cost a relabel 1 to 12 ms.
        if (try? String(contentsOfFile: dir + "/resolv.conf", encoding: .utf8)) == text { return }
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try text.write(toFile: dir + "/resolv.conf", atomically: true, encoding: .utf8)
            chmod(dir + "/resolv.conf", 0o644)
        } catch {
            logger.warning("cannot write the endpoint's resolv.conf", metadata: ["endpoint": "\(ep.name)", "error": "\(error)"])
        }
    }

    static func unconfigure(netns: String) {
        unlink("/etc/netns/\(netns)/resolv.conf")
        rmdir("/etc/netns/\(netns)")
    }

    // MARK: The dnsmasq process

    var arguments: [String] {
        ["--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--no-poll",
         "--hostsdir=\(hostsDir)", "--local=/\(Self.domain)/", "--domain-needed", "--bogus-priv",
         "--listen-address=\(Self.listenAddress)", "--bind-dynamic", "--port=53", "--user=nobody", "--pid-file=",
         "--log-facility=-", "--cache-size=0"]
    }

    /// The pid of a dnsmasq serving this node's folder, if one runs (a meshd before this one
    /// may have started it).
    func runningPID() -> pid_t? {
        guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
              let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0,
              let cmd = try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline")) else { return nil }
        let args = cmd.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        guard args.first.map({ $0.hasSuffix("dnsmasq") }) == true, args.contains("--hostsdir=\(hostsDir)") else { return nil }
        return pid
    }

    private func start() throws {
        let exe = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"].first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let exe else {
            throw MeshError(.unavailable, "dnsmasq is not installed", hint: "apt-get install dnsmasq-base (tools/setup does), or run meshd with --dns off")
        }
        try Cgroup2.create(cgroup)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = arguments
        let log = folder + "/dnsmasq.log"
        FileManager.default.createFile(atPath: log, contents: nil)
        p.standardOutput = FileHandle(forWritingAtPath: log)
        p.standardError = FileHandle(forWritingAtPath: log)
        p.standardInput = FileHandle.nullDevice
        try p.run()
        lock.withLock { process = p } // Foundation reaps it when it exits
        // Its own cgroup: the node's cleanup finds it, and it never counts as an endpoint's.
        try? "\(p.processIdentifier)".write(toFile: cgroup + "/cgroup.procs", atomically: false, encoding: .utf8)
        try "\(p.processIdentifier)\n".write(toFile: pidFile, atomically: true, encoding: .utf8)
        logger.info("started dnsmasq for service names", metadata: ["pid": "\(p.processIdentifier)", "listen": "\(Self.listenAddress):53"])
    }

    /// Keeps one dnsmasq running: adopts a running one, starts one when there is none and
    /// restarts it when it dies (its log says why). Stopping meshd leaves it running.
    public func run() async throws {
        var failures = 0
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            if runningPID() == nil {
                do {
                    if failures > 0 {
                        let tail = (try? String(contentsOfFile: folder + "/dnsmasq.log", encoding: .utf8))?.split(separator: "\n").suffix(3).joined(separator: " | ") ?? ""
                        logger.warning("dnsmasq is not running; starting it", metadata: ["restarts": "\(failures)", "last_log": "\(tail)"])
                    }
                    try start()
                } catch {
                    logger.error("cannot start dnsmasq; service names do not resolve", metadata: ["error": "\(error)"])
                }
                failures += 1
            }
            // Woken by a graceful shutdown at once, so meshd stops without waiting out a sleep.
            let pause = min(1 + Double(failures) / 10, 5)
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(pause)) }
        }
    }
}
