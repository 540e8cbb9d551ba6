import Datapath
import MeshABI
import Foundation
import MeshModel
import Yams

/// Everything one `meshd` needs to know about the node it runs. Flags, a YAML config file
/// and the defaults below combine into one of these; `resolve()` validates it whole.
public struct NodeConfig: Sendable, Equatable {
    public var nodeName = "swiftmesh"
    public var stateDir = "/var/lib/swiftmesh"
    /// The node's own pin folder on bpffs. Default: /sys/fs/bpf/<node-name>.
    public var bpffs: String?
    /// The node's cgroup v2 folder: absolute, or relative to the cgroup2 mount.
    /// Default: <cgroup2 mount>/<node-name>.
    public var cgroup: String?
    /// nil: allocated from `clusterPodCIDR` in a cluster that has one, else the default.
    public var podCIDR: String?
    public static let defaultPodCIDR = "10.200.0.0/24"
    /// Where services' cluster IPs come from: a range of its own, routed nowhere (the
    /// addresses only ever exist inside connect()).
    public var serviceCIDR = "10.96.0.0/24"
    /// on or off: answer service names inside endpoints (dnsmasq, run by meshd).
    public var dns = "on"
    public var apiSocket = "/run/swiftmesh/meshd.sock"
    public var metricsAddress = "127.0.0.1:9464"
    /// nil: keep what `meshctl config set` stored last (default on).
    public var socketRedirect: String?
    /// nil: keep what `meshctl config set` stored last (default cubic).
    public var localCongestionControl: String?
    /// Entries of the conntrack table; nil: sized for the node's memory.
    public var conntrackMax: String?
    /// A group whose members may use the API besides root; nil: root only.
    public var apiGroup: String?
    /// on or off: run the L7 proxy (HTTP rules, and later routes, need it).
    public var proxy = "on"
    /// The proxy's transparent listener, in the node's network namespace.
    public var proxyPort = "\(MESH_PROXY_DEFAULT_PORT)"
    /// The `mesh-proxy` executable; nil: the one beside meshd's own.
    public var proxyBinary: String?
    /// `etcd://HOST:PORT[,HOST:PORT…]`: join the cluster these etcd members hold; nil: a
    /// node on its own (SQLite only).
    public var cluster: String?
    /// The node's address on the network between nodes (needed with `cluster`).
    public var nodeIP: String?
    /// Seconds the node's cluster lease lasts without renewal.
    public var clusterLeaseTTL = "10"
    /// The range members without a `podCIDR` of their own get theirs from.
    public var clusterPodCIDR: String?
    /// Prefix length of the pod CIDRs allocated from `clusterPodCIDR`.
    public var podCIDRSize = "24"
    /// The trust domain of workloads' SPIFFE IDs.
    public var trustDomain = "cluster.local"
    /// Seconds a workload certificate lives (rotated at half-life).
    public var svidTTL = "86400"
    /// An operator's root CA (PEM certificate and ECDSA P-256 key); nil: made at first start.
    public var trustRootCert: String?
    public var trustRootKey: String?
    /// policy or strict: whether endpoints accept other nodes' endpoints in the clear where
    /// no rule requires authentication (policy), or only through the mTLS tunnel (strict).
    public var mtls = "policy"
    /// The ingress Gateway's certificate files (NAMESPACE/NAME/tls.crt, tls.key).
    public var gatewayCerts: String?
    /// Seconds an identity nothing uses any more keeps its number.
    public var identityGrace = "300"

    public init() {}

    /// Bounds of conntrack-max: below 1024 a busy endpoint evicts its own flows; above
    /// 2^24 the table alone would take gigabytes of kernel memory.
    public static let conntrackMaxRange: ClosedRange<UInt32> = 1024...(1 << 24)

    /// conntrack-max when none is given, as Cilium sizes its tables: 0.25% of the node's
    /// memory at about 128 bytes an entry (key, value and the kernel's own element), as a
    /// power of two between 65,536 and 1,048,576. 24 GiB gives 262,144.
    public static func defaultConntrackMax(memoryBytes: UInt64) -> UInt32 {
        let fit = memoryBytes / 400 / 128
        var n: UInt64 = 65536
        while n * 2 <= fit && n < 1 << 20 { n *= 2 }
        return UInt32(n)
    }

    /// MemTotal from /proc/meminfo, in bytes (nil if it cannot be read).
    static func memoryBytes() -> UInt64? {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("MemTotal:") }),
              let kib = line.split(separator: " ").dropFirst().first.flatMap({ UInt64($0) }) else { return nil }
        return kib * 1024
    }

    /// The keys a config file may set, as on the command line without the dashes.
    public static let fileKeys = ["node-name", "state-dir", "bpffs", "cgroup", "pod-cidr", "api-socket", "metrics-address",
                                  "socket-redirect", "local-congestion-control", "conntrack-max", "api-group", "service-cidr", "dns",
                                  "proxy", "proxy-port", "proxy-binary", "cluster", "node-ip", "cluster-lease-ttl", "identity-grace",
                                  "cluster-pod-cidr", "pod-cidr-size", "trust-domain", "svid-ttl", "trust-root-cert", "trust-root-key", "mtls",
                                  "gateway-certs"]

    /// Applies a YAML mapping of `fileKeys` to strings. Unknown keys are an error.
    public mutating func apply(yaml text: String, source: String) throws(MeshError) {
        let loaded: Any?
        do { loaded = try Yams.load(yaml: text) } catch {
            throw .invalid("\(source): not valid YAML: \(error)")
        }
        guard let loaded else { return }
        guard let map = loaded as? [String: Any] else {
            throw .invalid("\(source): expected a mapping of settings, e.g. \"pod-cidr: 10.200.0.0/24\"")
        }
        for (key, value) in map.sorted(by: { $0.key < $1.key }) {
            guard Self.fileKeys.contains(key) else {
                throw .invalid("\(source): unknown setting \"\(key)\"", hint: "known settings: \(Self.fileKeys.joined(separator: ", "))")
            }
            guard let s = value as? String ?? (value as? CustomStringConvertible)?.description,
                  !(value is [Any]), !(value is [String: Any]) else {
                throw .invalid("\(source): \(key) must be a string")
            }
            set(key, s)
        }
    }

    mutating func set(_ key: String, _ value: String) {
        switch key {
        case "node-name": nodeName = value
        case "state-dir": stateDir = value
        case "bpffs": bpffs = value
        case "cgroup": cgroup = value
        case "pod-cidr": podCIDR = value
        case "api-socket": apiSocket = value
        case "metrics-address": metricsAddress = value
        case "socket-redirect": socketRedirect = value
        case "local-congestion-control": localCongestionControl = value
        case "conntrack-max": conntrackMax = value
        case "api-group": apiGroup = value
        case "service-cidr": serviceCIDR = value
        case "dns": dns = value
        case "proxy": proxy = value
        case "proxy-port": proxyPort = value
        case "proxy-binary": proxyBinary = value
        case "cluster": cluster = value
        case "node-ip": nodeIP = value
        case "cluster-lease-ttl": clusterLeaseTTL = value
        case "identity-grace": identityGrace = value
        case "cluster-pod-cidr": clusterPodCIDR = value
        case "pod-cidr-size": podCIDRSize = value
        case "trust-domain": trustDomain = value
        case "svid-ttl": svidTTL = value
        case "trust-root-cert": trustRootCert = value
        case "trust-root-key": trustRootKey = value
        case "mtls": mtls = value
        case "gateway-certs": gatewayCerts = value
        default: break
        }
    }

    /// Validates and fills in derived values.
    public func resolve(cgroup2Root: String) throws(MeshError) -> NodeSettings {
        guard !nodeName.isEmpty, nodeName.count <= 24, isNodeName(nodeName) else {
            throw .invalid("node name \"\(nodeName)\" must be 1-24 lowercase letters, digits and '-', starting with a letter")
        }
        // Endpoint netns are <node>-ep-<endpoint>: node "a" must never own those of node
        // "a-ep-b" ("a-ep-b-ep-x") or of node "a-ep" ("a-ep-ep-x").
        guard !nodeName.contains("-ep-"), !nodeName.hasSuffix("-ep") else {
            throw .invalid("node name \"\(nodeName)\" must not contain \"-ep-\" or end in \"-ep\": \"-ep-\" separates node and endpoint in netns names")
        }
        let cidr: IPv4CIDR
        do { cidr = try IPv4CIDR(parsing: podCIDR ?? Self.defaultPodCIDR) } catch { throw .invalid("pod CIDR: \(error.message)", hint: error.hint) }
        if let range = try clusterPodRange() {
            guard range.range.contains(cidr.network), cidr.prefixLength >= range.range.prefixLength else {
                throw .invalid("pod CIDR \(cidr) is not inside cluster-pod-cidr \(range.range)", hint: "leave --pod-cidr out to get a block of the range")
            }
        }
        guard cidr.assignableCount > 0 else {
            throw .invalid("pod CIDR \(cidr) has no addresses to hand out; use a /30 or larger")
        }
        let services: IPv4CIDR
        do { services = try IPv4CIDR(parsing: serviceCIDR) } catch { throw .invalid("service CIDR: \(error.message)", hint: error.hint) }
        guard services.assignableCount > 0 else { throw .invalid("service CIDR \(services) has no addresses to hand out; use a /30 or larger") }
        guard !services.overlaps(cidr) else {
            throw .invalid("service CIDR \(services) overlaps the pod CIDR \(cidr)", hint: "give them separate ranges")
        }
        guard let dnsOn = RuntimeConfig.parseSwitch(dns) else { throw .invalid("dns \"\(dns)\" must be on or off") }
        guard let proxyOn = RuntimeConfig.parseSwitch(proxy) else { throw .invalid("proxy \"\(proxy)\" must be on or off") }
        guard let proxyPortNumber = UInt16(proxyPort), proxyPortNumber > 0 else {
            throw .invalid("proxy-port \"\(proxyPort)\" must be a port number (1-65535)")
        }
        let proxyExecutable = proxyBinary ?? Self.besideThisExecutable("mesh-proxy")
        guard proxyExecutable.hasPrefix("/") else { throw .invalid("proxy-binary \"\(proxyExecutable)\" must be an absolute path") }
        let parts = metricsAddress.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, IPv4Address(String(parts[0])) != nil, let port = Int(parts[1]), (1...65535).contains(port) else {
            throw .invalid("metrics address \"\(metricsAddress)\" must be IPv4:port, e.g. 127.0.0.1:9464")
        }
        for (what, path) in [("state dir", stateDir), ("api socket", apiSocket), ("gateway-certs", gatewayCerts ?? "/")] where !path.hasPrefix("/") {
            throw .invalid("\(what) \"\(path)\" must be an absolute path")
        }
        if let socketRedirect, RuntimeConfig.parseSwitch(socketRedirect) == nil {
            throw .invalid("socket-redirect \"\(socketRedirect)\" must be on or off")
        }
        if let cc = localCongestionControl, !RuntimeConfig.isCongestionControlName(cc) {
            throw .invalid("local-congestion-control \"\(cc)\" must be a congestion control name such as cubic or reno, or keep")
        }
        var ctMax = Self.defaultConntrackMax(memoryBytes: Self.memoryBytes() ?? 0)
        if let conntrackMax {
            guard let n = UInt32(conntrackMax), Self.conntrackMaxRange.contains(n) else {
                throw .invalid("conntrack-max \"\(conntrackMax)\" must be a number of entries from \(Self.conntrackMaxRange.lowerBound) to \(Self.conntrackMaxRange.upperBound)")
            }
            ctMax = n
        }
        // A ".." would lead out of the folder the prefix checks below vouch for.
        for (what, path) in [("bpffs folder", bpffs), ("cgroup", cgroup)] {
            if let path, path.split(separator: "/").contains("..") {
                throw .invalid("\(what) \"\(path)\" must not contain \"..\"", hint: "give the folder itself, e.g. /sys/fs/bpf/\(nodeName)")
            }
        }
        var group: (name: String, gid: gid_t)?
        if let apiGroup {
            guard let gr = getgrnam(apiGroup) else {
                throw .invalid("api-group \"\(apiGroup)\" is not a group of this system", hint: "create it (groupadd \(apiGroup)) or name another")
            }
            group = (apiGroup, gr.pointee.gr_gid)
        }
        let clusterSettings = try resolveCluster()
        guard let grace = Int(identityGrace), (0...86_400).contains(grace) else {
            throw .invalid("identity-grace \"\(identityGrace)\" must be a number of seconds from 0 to 86400")
        }
        let trust = try resolveTrust()
        let pin = bpffs ?? "/sys/fs/bpf/\(nodeName)"
        guard pin.hasPrefix("/sys/fs/bpf/"), pin.count > "/sys/fs/bpf/".count else {
            throw .invalid("bpffs folder \"\(pin)\" must be a folder under /sys/fs/bpf")
        }
        var cg = cgroup ?? nodeName
        if !cg.hasPrefix("/") { cg = cgroup2Root + "/" + cg }
        guard cg.hasPrefix(cgroup2Root + "/") else {
            throw .invalid("cgroup \"\(cg)\" is not under the cgroup2 mount \(cgroup2Root)")
        }
        return NodeSettings(nodeName: nodeName, stateDir: stateDir, bpffs: pin, cgroup: cg, podCIDR: cidr,
                            apiSocket: apiSocket, metricsHost: String(parts[0]), metricsPort: port,
                            socketRedirect: socketRedirect.flatMap(RuntimeConfig.parseSwitch),
                            localCongestionControl: localCongestionControl, conntrackMax: ctMax,
                            apiAccess: APIAccess(group: group), serviceCIDR: services, dns: dnsOn,
                            proxy: proxyOn ? ProxySettings(port: proxyPortNumber, binary: proxyExecutable) : nil,
                            cluster: clusterSettings, identityGrace: TimeInterval(grace), trust: trust,
                            gatewayCertificates: gatewayCerts ?? stateDir + "/gateway-certs")
    }

    /// The trust domain (a DNS name, as SPIFFE requires), the certificates' lifetime and
    /// the operator's root files, if any.
    func resolveTrust() throws(MeshError) -> TrustSettings {
        let labels = trustDomain.split(separator: ".", omittingEmptySubsequences: false)
        guard !trustDomain.isEmpty, trustDomain.count <= 253, labels.allSatisfy({ l in
            !l.isEmpty && l.count <= 63 && l.first != "-" && l.last != "-" && l.allSatisfy { $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "-") }
        }) else {
            throw .invalid("trust-domain \"\(trustDomain)\" must be a lowercase DNS name, e.g. cluster.local")
        }
        guard let ttl = Int(svidTTL), (5...(90 * 86400)).contains(ttl) else {
            throw .invalid("svid-ttl \"\(svidTTL)\" must be a number of seconds from 5 to 7776000 (90 days)")
        }
        if trustRootKey != nil, trustRootCert == nil { throw .invalid("trust-root-key needs trust-root-cert: the root's certificate") }
        for (what, path) in [("trust-root-cert", trustRootCert), ("trust-root-key", trustRootKey)] {
            if let path, !path.hasPrefix("/") { throw .invalid("\(what) \"\(path)\" must be an absolute path") }
        }
        guard mtls == "policy" || mtls == "strict" else {
            throw .invalid("mtls \"\(mtls)\" must be policy (authenticate where a rule requires it) or strict (every flow between nodes' endpoints)")
        }
        return TrustSettings(trustDomain: trustDomain, svidTTL: TimeInterval(ttl), rootCertFile: trustRootCert, rootKeyFile: trustRootKey,
                             mtlsStrict: mtls == "strict")
    }

    /// `cluster-pod-cidr` and `pod-cidr-size`, validated; nil without a range.
    public func clusterPodRange() throws(MeshError) -> (range: IPv4CIDR, size: Int)? {
        guard let clusterPodCIDR else { return nil }
        guard cluster != nil else { throw .invalid("cluster-pod-cidr is for cluster members: give --cluster etcd://HOST:PORT too") }
        let range: IPv4CIDR
        do { range = try IPv4CIDR(parsing: clusterPodCIDR) } catch { throw .invalid("cluster-pod-cidr: \(error.message)", hint: error.hint) }
        guard let size = Int(podCIDRSize), (range.prefixLength...30).contains(size) else {
            throw .invalid("pod-cidr-size \"\(podCIDRSize)\" must be a prefix length from \(range.prefixLength) (the range's) to 30")
        }
        return (range, size)
    }

    /// `etcd://HOST:PORT[,HOST:PORT…]` and the node IP, or nil without `cluster`.
    func resolveCluster() throws(MeshError) -> ClusterSettings? {
        guard let cluster else {
            if nodeIP != nil { throw .invalid("node-ip is for cluster members: give --cluster etcd://HOST:PORT too") }
            return nil
        }
        guard cluster.hasPrefix("etcd://") else {
            throw .invalid("cluster \"\(cluster)\" must be etcd://HOST:PORT[,HOST:PORT...]", hint: "for example etcd://10.99.0.1:2379")
        }
        var members: [String] = []
        for member in cluster.dropFirst("etcd://".count).split(separator: ",", omittingEmptySubsequences: false) {
            let parts = member.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[0].isEmpty, parts[0].allSatisfy({ $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" }),
                  let port = Int(parts[1]), (1...65535).contains(port) else {
                throw .invalid("cluster member \"\(member)\" must be HOST:PORT", hint: "for example etcd://10.99.0.1:2379,10.99.0.2:2379")
            }
            members.append(String(member))
        }
        guard let nodeIP else { throw .invalid("a cluster member needs --node-ip: the address other nodes reach its pod CIDR through") }
        guard let ip = IPv4Address(nodeIP) else { throw .invalid("node-ip \"\(nodeIP)\" is not an IPv4 address") }
        guard let ttl = Int(clusterLeaseTTL), (2...3600).contains(ttl) else {
            throw .invalid("cluster-lease-ttl \"\(clusterLeaseTTL)\" must be a number of seconds from 2 to 3600")
        }
        return ClusterSettings(etcd: members, nodeIP: ip, leaseTTL: ttl)
    }

    /// `name` in the folder of the running executable (meshd's own).
    static func besideThisExecutable(_ name: String) -> String {
        let me = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: me).deletingLastPathComponent().appendingPathComponent(name).path
    }

    private func isNodeName(_ s: String) -> Bool {
        guard let f = s.first, f.isASCII, f.isLowercase, let l = s.last, l != "-" else { return false }
        return s.allSatisfy { $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "-") }
    }
}

public struct ProxySettings: Sendable, Equatable {
    public let port: UInt16
    public let binary: String
}

/// A validated NodeConfig with every default filled in.
public struct NodeSettings: Sendable {
    public let nodeName: String
    public let stateDir: String
    public let bpffs: String
    public let cgroup: String
    public let podCIDR: IPv4CIDR
    public let apiSocket: String
    public let metricsHost: String
    public let metricsPort: Int
    /// Set by flag or config file; nil keeps the stored run-time value.
    public let socketRedirect: Bool?
    /// Set by flag or config file (a name or keep); nil keeps the stored run-time value.
    public let localCongestionControl: String?
    /// Entries of the conntrack table.
    public let conntrackMax: UInt32
    /// Who may use the API (root, and the --api-group's members).
    let apiAccess: APIAccess
    /// Where cluster IPs come from.
    public let serviceCIDR: IPv4CIDR
    /// Whether meshd runs the node's DNS for service names.
    public let dns: Bool
    /// The L7 proxy meshd runs; nil: none (flows that need it are dropped).
    public let proxy: ProxySettings?
    /// The cluster the node is a member of; nil: a node on its own.
    public let cluster: ClusterSettings?
    /// How long an unused identity keeps its number.
    public let identityGrace: TimeInterval
    /// Workload certificates: trust domain, lifetime, root.
    public let trust: TrustSettings
    /// Where the ingress Gateway's certificate files are.
    public let gatewayCertificates: String

    /// The sizes the node's BPF maps load with (every object that declares them).
    public var mapSizes: MapSizes { MapSizes(conntrack: conntrackMax) }

    /// Named netns of an endpoint: `<node>-ep-<endpoint>`, so that nodes sharing one kernel
    /// never collide and leftovers are recognisable.
    public func netnsName(_ endpoint: String) -> String { "\(netnsPrefix)\(endpoint)" }
    /// Every endpoint netns of this node starts with this; nothing else may.
    public var netnsPrefix: String { "\(nodeName)-ep-" }
    /// Host-side veth of endpoint `id` (in the node's netns; 15 characters at most):
    /// `interfacePrefix` and the id in decimal.
    public func interfaceName(_ id: Int) -> String { "\(interfacePrefix)\(id)" }
    /// `sm` and a 5-character tag of the node name, so that nodes sharing one netns (tests,
    /// several meshd on one machine) never make, or reconcile away, each other's veths.
    /// Endpoints made before the tag keep their stored `smv<id>` names.
    public var interfacePrefix: String { "sm" + Self.tag(nodeName) }

    /// Five base-36 characters of the node name's FNV-1a hash: two names share a tag once
    /// in about 60 million, and ids up to eight digits still fit in 15 characters.
    static func tag(_ name: String) -> String {
        var h = FNV1a.hash32(name)
        let digits = Array("0123456789abcdefghijklmnopqrstuvwxyz")
        var out = ""
        for _ in 0..<5 {
            out.append(digits[Int(h % 36)])
            h /= 36
        }
        return out
    }
    public func cgroupPath(_ endpoint: String) -> String { "\(cgroup)/\(endpoint)" }
}
