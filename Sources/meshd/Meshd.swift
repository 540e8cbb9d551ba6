// meshd: the SwiftMesh node daemon. Argument parsing and wiring only; see Agent.Daemon.
import Agent
import ArgumentParser
import Foundation
import Logging
import MeshModel

@main
struct Meshd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meshd",
        abstract: "The SwiftMesh node daemon: loads the eBPF datapath, manages endpoints, serves the API and /metrics.",
        discussion: """
        Runs as root in the node's network namespace. Settings come from the defaults, then \
        --config FILE (YAML, the same names without dashes, e.g. "pod-cidr: 10.200.0.0/24"), \
        then flags. Stopping meshd (SIGTERM) or killing it leaves the BPF programs attached and \
        their maps pinned; the next start adopts them without interrupting traffic.
        """,
        version: MeshVersion.string
    )

    @Option(help: "YAML file with settings; flags override it.")
    var config: String?

    @Option(help: "Name of this node; prefixes its namespaces and default paths. (default: swiftmesh)")
    var nodeName: String?

    @Option(help: "Folder of the embedded state database. (default: /var/lib/swiftmesh)")
    var stateDir: String?

    @Option(help: "The node's pin folder on bpffs. (default: /sys/fs/bpf/<node-name>)")
    var bpffs: String?

    @Option(help: "The node's cgroup v2 folder, absolute or relative to the cgroup2 mount. (default: <node-name>)")
    var cgroup: String?

    @Option(help: "IPv4 CIDR endpoints get addresses from. (default: a block of --cluster-pod-cidr in a cluster that has one, else 10.200.0.0/24)")
    var podCidr: String?

    @Option(help: "Unix socket of the API that meshctl talks to. (default: /run/swiftmesh/meshd.sock)")
    var apiSocket: String?

    @Option(help: "IPv4:port for GET /metrics. (default: 127.0.0.1:9464)")
    var metricsAddress: String?

    @Option(help: "on or off: accelerate TCP between local endpoints with sockmap redirection. (default: the last `meshctl config set`, else on)")
    var socketRedirect: String?

    @Option(help: "TCP congestion control for connections between two local endpoints, e.g. cubic or reno, or keep to leave them the node's. An application's own choice stays. (default: the last `meshctl config set`, else cubic)")
    var localCongestionControl: String?

    @Option(help: "A group whose members may use the API socket besides root. (default: root only)")
    var apiGroup: String?

    @Option(help: "Entries of the connection-tracking table (1024 to 16777216); a change starts the table empty. (default: 0.25% of the node's memory at ~128 bytes an entry, a power of two from 65536 to 1048576)")
    var conntrackMax: String?

    @Option(help: "IPv4 CIDR services' cluster IPs come from; must not overlap the pod CIDR. (default: 10.96.0.0/24)")
    var serviceCidr: String?

    @Option(help: "on or off: answer NAME, NAME.NAMESPACE and NAME.NAMESPACE.svc.cluster.local inside endpoints with services' cluster IPs (dnsmasq, started by meshd). (default: on)")
    var dns: String?

    @Option(help: "on or off: run the L7 proxy that HTTP rules need; off drops the flows they apply to. (default: on)")
    var proxy: String?

    @Option(help: "TCP port of the L7 proxy's transparent listener in the node's network namespace. (default: 15001)")
    var proxyPort: String?

    @Option(help: "The mesh-proxy executable meshd starts. (default: mesh-proxy beside meshd)")
    var proxyBinary: String?

    @Option(help: "etcd://HOST:PORT[,HOST:PORT...]: join the cluster these etcd members hold (nodes, endpoints, identities, services and policies shared). (default: a node on its own, state in SQLite only)")
    var cluster: String?

    @Option(help: "IPv4 address other nodes reach this node's pod CIDR through (needed with --cluster).")
    var nodeIp: String?

    @Option(help: "Seconds the node's cluster lease lasts unrenewed: a node that dies leaves the others' view this long after. (default: 10)")
    var clusterLeaseTtl: String?

    @Option(help: "IPv4 CIDR of the whole cluster's pods: a member without --pod-cidr gets a free block of it (claimed in etcd, kept across restarts).")
    var clusterPodCidr: String?

    @Option(help: "Prefix length of the blocks of --cluster-pod-cidr. (default: 24)")
    var podCidrSize: String?

    @Option(help: "Seconds an identity no endpoint or rule uses keeps its number, so a label set that comes back gets it again. (default: 300)")
    var identityGrace: String?

    @Option(help: "Trust domain of workloads' SPIFFE IDs (spiffe://DOMAIN/ns/NAMESPACE/sa/ACCOUNT). (default: cluster.local)")
    var trustDomain: String?

    @Option(help: "Seconds a workload certificate lives; it is replaced at half its life. (default: 86400)")
    var svidTtl: String?

    @Option(help: "PEM certificate of the operator's root CA. (default: a root made at first start, in the state folder)")
    var trustRootCert: String?

    @Option(help: "PEM ECDSA P-256 key of --trust-root-cert; without it the node needs an intermediate signed by it already.")
    var trustRootKey: String?

    @Option(help: "policy or strict: strict accepts other nodes' endpoints only through the proxies' mTLS tunnel; policy where an ingress rule says authentication: {mode: required}. (default: policy)")
    var mtls: String?

    @Option(help: "Folder of the ingress Gateway's certificates: a certificateRefs entry {kind: Secret, name: N} of namespace NS reads NS/N/tls.crt and NS/N/tls.key. (default: STATE-DIR/gateway-certs)")
    var gatewayCerts: String?

    @Option(help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "info"

    func run() async throws {
        ProcessMemory.limitArenas()
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw ValidationError("--log-level \"\(logLevel)\" is not one of trace, debug, info, notice, warning, error, critical")
        }
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let logger = Logger(label: "meshd")
        do {
            var settings = NodeConfig()
            if let config {
                guard let text = try? String(contentsOfFile: config, encoding: .utf8) else {
                    throw MeshError.invalid("cannot read config file \(config)")
                }
                try settings.apply(yaml: text, source: config)
            }
            if let nodeName { settings.nodeName = nodeName }
            if let stateDir { settings.stateDir = stateDir }
            if let bpffs { settings.bpffs = bpffs }
            if let cgroup { settings.cgroup = cgroup }
            if let podCidr { settings.podCIDR = podCidr }
            if let apiSocket { settings.apiSocket = apiSocket }
            if let metricsAddress { settings.metricsAddress = metricsAddress }
            if let socketRedirect { settings.socketRedirect = socketRedirect }
            if let localCongestionControl { settings.localCongestionControl = localCongestionControl }
            if let conntrackMax { settings.conntrackMax = conntrackMax }
            if let apiGroup { settings.apiGroup = apiGroup }
            if let serviceCidr { settings.serviceCIDR = serviceCidr }
            if let dns { settings.dns = dns }
            if let proxy { settings.proxy = proxy }
            if let proxyPort { settings.proxyPort = proxyPort }
            if let proxyBinary { settings.proxyBinary = proxyBinary }
            if let cluster { settings.cluster = cluster }
            if let nodeIp { settings.nodeIP = nodeIp }
            if let clusterLeaseTtl { settings.clusterLeaseTTL = clusterLeaseTtl }
            if let clusterPodCidr { settings.clusterPodCIDR = clusterPodCidr }
            if let podCidrSize { settings.podCIDRSize = podCidrSize }
            if let trustDomain { settings.trustDomain = trustDomain }
            if let svidTtl { settings.svidTTL = svidTtl }
            if let trustRootCert { settings.trustRootCert = trustRootCert }
            if let trustRootKey { settings.trustRootKey = trustRootKey }
            if let mtls { settings.mtls = mtls }
            if let gatewayCerts { settings.gatewayCerts = gatewayCerts }
            if let identityGrace { settings.identityGrace = identityGrace }
            try await Daemon.run(config: settings, logger: logger)
        } catch let e as MeshError {
            FileHandle.standardError.write(Data("meshd: error: \(e)\n".utf8))
            throw ExitCode(1)
        }
    }
}
