import Foundation

/// The versioned HTTP/JSON API between `meshctl` and `meshd` (served on a unix socket).
/// Paths live here so both sides name them once.
public enum APIPath {
    public static let status = "/v1/status"
    public static let endpoints = "/v1/endpoints"
    public static func endpoint(_ name: String) -> String { "/v1/endpoints/\(name)" }
    public static func endpointLabels(_ name: String) -> String { "/v1/endpoints/\(name)/labels" }
    public static let identities = "/v1/identities"
    public static let nodes = "/v1/nodes"
    public static let svids = "/v1/svids"
    public static let trust = "/v1/trust"
    public static let trustRoll = "/v1/trust/roll"
}

/// A CA certificate as `meshctl trust status` shows it.
public struct CertificateSummary: Codable, Sendable, Equatable {
    public var subject: String
    /// SHA-256 of the DER, the first 16 hex digits.
    public var fingerprint: String
    public var notAfter: Date

    public init(subject: String, fingerprint: String, notAfter: Date) {
        self.subject = subject
        self.fingerprint = fingerprint
        self.notAfter = notAfter
    }
}

/// The node's trust: the root its certificates chain to, the roots its bundle accepts
/// from peers, and the cluster's root roll, if one ran here.
public struct TrustStatusView: Codable, Sendable {
    public var trustDomain: String
    public var root: CertificateSummary
    public var intermediate: CertificateSummary
    public var bundle: [CertificateSummary]
    /// This node holds the cluster root's key (it signs the other nodes' intermediates and
    /// can roll the root).
    public var holdsRootKey: Bool
    public var roll: TrustRollView?

    public init(trustDomain: String, root: CertificateSummary, intermediate: CertificateSummary, bundle: [CertificateSummary],
                holdsRootKey: Bool, roll: TrustRollView?) {
        self.trustDomain = trustDomain
        self.root = root
        self.intermediate = intermediate
        self.bundle = bundle
        self.holdsRootKey = holdsRootKey
        self.roll = roll
    }
}

/// A roll of the cluster's root to a new one, with an overlap in which both are trusted.
public struct TrustRollView: Codable, Sendable, Equatable {
    public enum Phase: String, Codable, Sendable {
        /// The new root is being added to every node's bundle (both trusted from then on).
        case adding
        /// Nodes' intermediates (and so every workload certificate) move to the new root.
        case switching
        /// Every node is on the new root; the old one is still trusted for `overlap`.
        case overlap
        /// The old root leaves every node's bundle.
        case dropping
        case done
        /// Stopped; `error` says why. Before `switching` nothing changed; after it the
        /// cluster is on the new root and still trusts the old one.
        case failed
    }

    public var phase: Phase
    public var startedAt: Date
    public var finishedAt: Date?
    public var oldRoot: String
    public var newRoot: String?
    public var overlapSeconds: Double
    public var error: String?
    /// One line per step, with when it ended.
    public var steps: [String]

    public init(phase: Phase, startedAt: Date, oldRoot: String, overlapSeconds: Double) {
        self.phase = phase
        self.startedAt = startedAt
        self.oldRoot = oldRoot
        self.overlapSeconds = overlapSeconds
        steps = []
    }

    public var finished: Bool { phase == .done || phase == .failed }
}

public struct TrustRollRequest: Codable, Sendable {
    public var overlapSeconds: Double

    public init(overlapSeconds: Double) { self.overlapSeconds = overlapSeconds }
}

/// A workload certificate (X.509 SVID) the node holds for one of its endpoints.
public struct SVIDView: Codable, Sendable {
    public var endpoint: String
    public var spiffeID: String
    public var serial: String
    public var notBefore: Date
    public var notAfter: Date
    /// When the node replaces it (half its life gone).
    public var rotatesAt: Date
    /// Times it was replaced since meshd started.
    public var rotations: Int
    public init(endpoint: String, spiffeID: String, serial: String, notBefore: Date, notAfter: Date, rotatesAt: Date, rotations: Int) {
        self.endpoint = endpoint
        self.spiffeID = spiffeID
        self.serial = serial
        self.notBefore = notBefore
        self.notAfter = notAfter
        self.rotatesAt = rotatesAt
        self.rotations = rotations
    }
}

/// A cluster member's view of the cluster (`meshctl status`).
public struct ClusterStatus: Codable, Sendable {
    /// The etcd members (`host:port`).
    public var etcd: [String]
    public var connected: Bool
    public var lastError: String?
    public var lastContact: Date?
    public var nodeIP: String
    public var nodes: Int
    public var remoteEndpoints: Int
    public var leaseTTL: Int
    /// etcd's revision as last seen, and the one this node has applied: the watch's lag.
    public var etcdRevision: Int64
    public var appliedRevision: Int64
    public var resyncs: Int
    public var leasesLost: Int
    public init(etcd: [String], connected: Bool, lastError: String?, lastContact: Date?, nodeIP: String, nodes: Int, remoteEndpoints: Int,
                leaseTTL: Int, etcdRevision: Int64, appliedRevision: Int64, resyncs: Int, leasesLost: Int) {
        self.etcd = etcd
        self.connected = connected
        self.lastError = lastError
        self.lastContact = lastContact
        self.nodeIP = nodeIP
        self.nodes = nodes
        self.remoteEndpoints = remoteEndpoints
        self.leaseTTL = leaseTTL
        self.etcdRevision = etcdRevision
        self.appliedRevision = appliedRevision
        self.resyncs = resyncs
        self.leasesLost = leasesLost
    }
}

/// One node of the cluster (`meshctl node list`).
public struct NodeView: Codable, Sendable {
    public var name: String
    public var ip: String
    public var podCIDR: String
    public var endpoints: Int
    /// When the node last renewed its lease.
    public var heartbeat: Date
    public var version: String
    /// The node answering.
    public var local: Bool
    public init(name: String, ip: String, podCIDR: String, endpoints: Int, heartbeat: Date, version: String, local: Bool) {
        self.name = name
        self.ip = ip
        self.podCIDR = podCIDR
        self.endpoints = endpoints
        self.heartbeat = heartbeat
        self.version = version
        self.local = local
    }
}

/// Body of `PATCH /v1/endpoints/NAME/labels`: labels to set (added or changed) and label
/// keys to remove, as `meshctl endpoint label NAME k=v k2-` writes them.
public struct EndpointLabelRequest: Codable, Sendable, Equatable {
    public var set: [String: String]
    public var remove: [String]
    public init(set: [String: String], remove: [String]) {
        self.set = set
        self.remove = remove
    }

    /// Reads kubectl-style arguments: `k=v` sets, `k-` removes. The error names the argument.
    public init(parsing args: [String]) throws(MeshError) {
        var set: [String: String] = [:], remove: [String] = []
        guard !args.isEmpty else {
            throw .invalid("no label changes given", hint: "meshctl endpoint label NAME app=web tier-   (k=v sets, k- removes)")
        }
        for (i, arg) in args.enumerated() {
            if let eq = arg.firstIndex(of: "=") {
                let key = String(arg[..<eq]), value = String(arg[arg.index(after: eq)...])
                try Labels.validateKey(key)
                try Labels.validateValue(value, key: key)
                guard set[key] == nil, !remove.contains(key) else { throw .invalid("label \"\(key)\" is changed twice (argument \(i + 1))") }
                set[key] = value
            } else if arg.hasSuffix("-") {
                let key = String(arg.dropLast())
                try Labels.validateKey(key)
                guard set[key] == nil, !remove.contains(key) else { throw .invalid("label \"\(key)\" is changed twice (argument \(i + 1))") }
                remove.append(key)
            } else {
                throw .invalid("argument \(i + 1) \"\(arg)\" is neither key=value (set) nor key- (remove)")
            }
        }
        self.init(set: set, remove: remove)
    }
}

/// An identity as the allocator holds it (`GET /v1/identities`).
public struct IdentityView: Codable, Sendable {
    public var id: Int
    /// `global` (a label set) or `local` (a CIDR, this node's own).
    public var scope: String
    public var labels: String
    /// Endpoints with this label set.
    public var endpoints: [String]
    public var unusedSince: Date?
    public init(id: Int, scope: String, labels: String, endpoints: [String], unusedSince: Date?) {
        self.id = id
        self.scope = scope
        self.labels = labels
        self.endpoints = endpoints
        self.unusedSince = unusedSince
    }
}

/// Body of `POST /v1/endpoints`.
public struct EndpointCreateRequest: Codable, Sendable {
    public var name: String
    public var labels: [String: String]
    /// Named ports (`http: 8080`), for services' `targetPort: http`.
    public var ports: [String: UInt16]?
    public var readiness: ReadinessProbe?
    /// Default `default`.
    public var serviceAccount: String?
    public init(name: String, labels: [String: String], ports: [String: UInt16]? = nil, readiness: ReadinessProbe? = nil,
                serviceAccount: String? = nil) {
        self.serviceAccount = serviceAccount
        self.name = name
        self.labels = labels
        self.ports = ports
        self.readiness = readiness
    }
}

/// An endpoint as stored and as shown: a workload with its own namespace, veth and cgroup.
public struct Endpoint: Codable, Sendable, Equatable {
    public var id: Int
    public var name: String
    public var labels: Labels
    public var ipv4: IPv4Address
    /// Named network namespace (`ip netns`) of the workload.
    public var netns: String
    /// Host-side veth, in the node's namespace.
    public var interface: String
    /// Absolute cgroup v2 directory the workload's processes join.
    public var cgroup: String
    public var createdAt: Date
    /// Named ports (`http: 8080`).
    public var ports: [String: UInt16]
    public var readiness: ReadinessProbe?
    /// The service account its workload certificate names (`.../sa/ACCOUNT`).
    public var serviceAccount: String
    /// `ready` or `unready` (its readiness probe fails or has not passed yet); set in
    /// answers, not stored.
    public var state: String?

    enum CodingKeys: String, CodingKey {
        case id, name, labels, ipv4, netns, interface, cgroup, createdAt, ports, readiness, serviceAccount, state
    }

    public static let defaultServiceAccount = "default"

    /// Endpoints written before named ports and probes existed decode with none.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = try c.decode(Int.self, forKey: .id)
        name = try c.decode(String.self, forKey: .name)
        labels = try c.decode(Labels.self, forKey: .labels)
        ipv4 = try c.decode(IPv4Address.self, forKey: .ipv4)
        netns = try c.decode(String.self, forKey: .netns)
        interface = try c.decode(String.self, forKey: .interface)
        cgroup = try c.decode(String.self, forKey: .cgroup)
        createdAt = try c.decode(Date.self, forKey: .createdAt)
        ports = try c.decodeIfPresent([String: UInt16].self, forKey: .ports) ?? [:]
        readiness = try c.decodeIfPresent(ReadinessProbe.self, forKey: .readiness)
        serviceAccount = try c.decodeIfPresent(String.self, forKey: .serviceAccount) ?? Self.defaultServiceAccount
        state = try c.decodeIfPresent(String.self, forKey: .state)
    }

    public init(id: Int, name: String, labels: Labels, ipv4: IPv4Address, netns: String,
                interface: String, cgroup: String, createdAt: Date, ports: [String: UInt16] = [:],
                readiness: ReadinessProbe? = nil, serviceAccount: String = Endpoint.defaultServiceAccount) {
        self.serviceAccount = serviceAccount
        self.ports = ports
        self.readiness = readiness
        self.id = id
        self.name = name
        self.labels = labels
        self.ipv4 = ipv4
        self.netns = netns
        self.interface = interface
        self.cgroup = cgroup
        self.createdAt = createdAt
    }
}

/// `GET /v1/status`.
public struct NodeStatus: Codable, Sendable {
    public struct Program: Codable, Sendable {
        public var name: String
        public var id: Int
        /// Hooks it is attached to right now, e.g. `sm4k2x03/ingress`.
        public var attachments: [String]
        public init(name: String, id: Int, attachments: [String]) {
            self.name = name
            self.id = id
            self.attachments = attachments
        }
    }

    public struct Map: Codable, Sendable {
        public var name: String
        public var type: String
        public var entries: Int
        public var capacity: Int
        public init(name: String, type: String, entries: Int, capacity: Int) {
            self.name = name
            self.type = type
            self.entries = entries
            self.capacity = capacity
        }
    }

    public var version: String
    public var node: String
    public var podCIDR: String
    public var bpffs: String
    public var cgroup: String
    public var startedAt: Date
    public var programs: [Program]
    public var maps: [Map]
    public var endpoints: Int
    public var policies: Int = 0
    public var policyRevision: Int = 0
    /// The last revision this meshd published: what it wrote into the kernel and how long
    /// compiling and publishing took.
    public var lastPublish: PublishSummary?
    /// The L7 proxy, when this node runs one.
    public var proxy: ProxyStatus?
    /// The cluster, when this node is a member of one.
    public var cluster: ClusterStatus?

    public struct ProxyStatus: Codable, Sendable {
        public var port: Int
        public var connected: Bool
        public var pid: Int?
        /// The proxy was running before this meshd started (it kept serving meanwhile).
        public var adopted: Bool
        public var restarts: Int
        public var generation: Int
        public var lastRejection: String?
        /// Service frontends an HTTPRoute binds, which the proxy routes per request.
        public var routedFrontends: Int?
        public init(port: Int, connected: Bool, pid: Int?, adopted: Bool, restarts: Int, generation: Int, lastRejection: String?,
                    routedFrontends: Int? = nil) {
            self.routedFrontends = routedFrontends
            self.port = port
            self.connected = connected
            self.pid = pid
            self.adopted = adopted
            self.restarts = restarts
            self.generation = generation
            self.lastRejection = lastRejection
        }
    }

    public init(version: String, node: String, podCIDR: String, bpffs: String, cgroup: String,
                startedAt: Date, programs: [Program], maps: [Map], endpoints: Int) {
        self.version = version
        self.node = node
        self.podCIDR = podCIDR
        self.bpffs = bpffs
        self.cgroup = cgroup
        self.startedAt = startedAt
        self.programs = programs
        self.maps = maps
        self.endpoints = endpoints
    }
}

public struct PublishSummary: Codable, Sendable, Equatable {
    public var revision: Int
    /// Policy map entries of the revision.
    public var entries: Int
    /// Map entries written and deleted to get there (all maps): only what changed since
    /// the revision before.
    public var written: Int
    public var deleted: Int
    public var compileSeconds: Double
    public var publishSeconds: Double
    public init(revision: Int, entries: Int, written: Int, deleted: Int, compileSeconds: Double, publishSeconds: Double) {
        self.revision = revision
        self.entries = entries
        self.written = written
        self.deleted = deleted
        self.compileSeconds = compileSeconds
        self.publishSeconds = publishSeconds
    }
}

/// Every non-2xx answer carries one of these.
public struct ErrorResponse: Codable, Sendable {
    public var error: MeshError
    public init(error: MeshError) { self.error = error }
}

/// The JSON coding both sides use: ISO 8601 dates, sorted keys for stable output.
public enum MeshJSON {
    public static func encoder() -> JSONEncoder {
        let e = JSONEncoder()
        e.dateEncodingStrategy = .iso8601
        e.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        return e
    }

    public static func decoder() -> JSONDecoder {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        return d
    }
}

/// The version every binary reports.
public enum MeshVersion {
    public static let string = "0.1.0"
}

/// Settings that can change while meshd runs (`meshctl config get|set`).
public enum RuntimeConfig {
    public static let socketRedirect = "socket-redirect"
    /// Writes above this many bytes make that direction of a connection take the stack
    /// for good; 0 (the default) redirects writes of any size.
    public static let socketRedirectMaxWrite = "socket-redirect-max-write"
    public static let socketRedirectMaxQueued = "socket-redirect-max-queued"
    /// The TCP congestion control that connections between two local endpoints get, or
    /// `keep` (`localCongestionControlKeep`) to leave them the node's.
    public static let localCongestionControl = "local-congestion-control"
    public static let localCongestionControlKeep = "keep"
    public static let keys = [socketRedirect, socketRedirectMaxWrite, socketRedirectMaxQueued, localCongestionControl]
    public static let path = "/v1/config"

    /// Whether `s` can name a congestion control at all: `keep`, or a name of at most 15
    /// lowercase letters, digits, '_' and '-' (the kernel's TCP_CA_NAME_MAX is 16 with NUL).
    /// Whether the kernel has it is for meshd to check.
    public static func isCongestionControlName(_ s: String) -> Bool {
        (1...15).contains(s.utf8.count) && s.utf8.allSatisfy { (0x61...0x7a).contains($0) || (0x30...0x39).contains($0) || $0 == 0x5f || $0 == 0x2d }
    }

    /// `on`/`off` (also true/false, enabled/disabled).
    public static func parseSwitch(_ s: String) -> Bool? {
        switch s.lowercased() {
        case "on", "true", "enabled", "1": true
        case "off", "false", "disabled", "0": false
        default: nil
        }
    }
}

/// Body of `PUT /v1/config/KEY`.
public struct ConfigSetRequest: Codable, Sendable {
    public var value: String
    public init(value: String) { self.value = value }
}

/// A row of `meshctl bpf sockmap list`.
public struct BPFSocketRow: Codable, Sendable {
    public var local: String
    public var remote: String
    public var client: String
    public var server: String
    public var mode: String
    public var fallback: String
    public var revision: Int
    public var ageSeconds: Double
    public init(local: String, remote: String, client: String, server: String, mode: String, fallback: String, revision: Int, ageSeconds: Double) {
        self.local = local
        self.remote = remote
        self.client = client
        self.server = server
        self.mode = mode
        self.fallback = fallback
        self.revision = revision
        self.ageSeconds = ageSeconds
    }
}
