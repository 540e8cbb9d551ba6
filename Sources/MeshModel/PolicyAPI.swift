import Foundation

/// API paths and wire types of policies, tracing, monitoring and BPF map dumps.
extension APIPath {
    public static let policies = "/v1/policies"
    public static func policy(_ key: String) -> String { "/v1/policies/\(key)" }
    public static let trace = "/v1/policy/trace"
    public static let monitor = "/v1/monitor"
    public static let bpfPolicy = "/v1/bpf/policy"
    public static let bpfIPCache = "/v1/bpf/ipcache"
    public static let bpfConntrack = "/v1/bpf/ct"
}

/// Body of `POST /v1/policies`: one or many YAML documents, applied whole or not at all.
public struct PolicyApplyRequest: Codable, Sendable {
    public var yaml: String
    /// Where the text came from, for error messages (a file name or `-`).
    public var source: String
    /// Validate only: parse, check and compile, change nothing.
    public var dryRun: Bool
    public init(yaml: String, source: String, dryRun: Bool) {
        self.yaml = yaml
        self.source = source
        self.dryRun = dryRun
    }
}

public struct PolicyApplyResult: Codable, Sendable {
    /// `namespace/name` of each document in the file.
    public var documents: [String]
    public var policies: Int
    public var rules: Int
    public var revision: Int
    public var dryRun: Bool
    /// Map entries the compiled set needs.
    public var entries: Int
    public var enforcedSeconds: Double
    /// Fields left out as the Kubernetes API server would prune them, one line each.
    public var warnings: [String]
    public init(documents: [String], policies: Int, rules: Int, revision: Int, dryRun: Bool, entries: Int, enforcedSeconds: Double,
                warnings: [String] = []) {
        self.warnings = warnings
        self.documents = documents
        self.policies = policies
        self.rules = rules
        self.revision = revision
        self.dryRun = dryRun
        self.entries = entries
        self.enforcedSeconds = enforcedSeconds
    }
}

public struct PolicySummary: Codable, Sendable {
    public var key: String
    public var kind: String
    public var appliedAt: Date
    /// Endpoints the document's policies select.
    public var selects: [String]
    public var rules: Int
    public init(key: String, kind: String, appliedAt: Date, selects: [String], rules: Int) {
        self.key = key
        self.kind = kind
        self.appliedAt = appliedAt
        self.selects = selects
        self.rules = rules
    }
}

public struct PolicyDocumentView: Codable, Sendable {
    public var key: String
    public var kind: String
    public var yaml: String
    public var policies: [Policy]
    public init(key: String, kind: String, yaml: String, policies: [Policy]) {
        self.key = key
        self.kind = kind
        self.yaml = yaml
        self.policies = policies
    }
}

/// `meshctl policy trace`: the decision of each hook a first packet crosses.
public struct TraceRequest: Codable, Sendable {
    public var from: String
    public var to: String
    public var port: Int
    public var proto: String
    public init(from: String, to: String, port: Int, proto: String) {
        self.from = from
        self.to = to
        self.port = port
        self.proto = proto
    }
}

public struct TraceHop: Codable, Sendable {
    /// `egress of web` / `ingress of db`.
    public var hook: String
    public var enforced: Bool
    public var verdict: String
    public var reason: String
    public var rule: String
    public var peerIdentity: Int
    public var peer: String
    public init(hook: String, enforced: Bool, verdict: String, reason: String, rule: String, peerIdentity: Int, peer: String) {
        self.hook = hook
        self.enforced = enforced
        self.verdict = verdict
        self.reason = reason
        self.rule = rule
        self.peerIdentity = peerIdentity
        self.peer = peer
    }
}

public struct TraceResponse: Codable, Sendable {
    public var from: String
    public var to: String
    public var port: Int
    public var proto: String
    public var revision: Int
    public var hops: [TraceHop]
    /// The verdict for a new connection (or datagram).
    public var verdict: String
    /// Connections of this flow already tracked (any source port): what their next packet
    /// meets at each hook.
    public var established: [TracedConnection]
    public init(from: String, to: String, port: Int, proto: String, revision: Int, hops: [TraceHop], verdict: String,
                established: [TracedConnection] = []) {
        self.from = from
        self.to = to
        self.port = port
        self.proto = proto
        self.revision = revision
        self.hops = hops
        self.verdict = verdict
        self.established = established
    }
}

/// A tracked connection of a traced flow, at one hook (endpoint and direction).
public struct TracedConnection: Codable, Sendable, Equatable {
    public var hook: String
    public var sourcePort: Int
    /// The revision it was last allowed under, and the rule that allowed it.
    public var revision: Int
    public var rule: String
    public var idleSeconds: Double
    /// What its next packet meets: `allowed` (tracked, and the revision has not changed, or
    /// the one in force allows it too) or `denied` (the revision in force refuses it: the
    /// next packet is dropped and the entry removed).
    public var verdict: String
    public init(hook: String, sourcePort: Int, revision: Int, rule: String, idleSeconds: Double, verdict: String) {
        self.hook = hook
        self.sourcePort = sourcePort
        self.revision = revision
        self.rule = rule
        self.idleSeconds = idleSeconds
        self.verdict = verdict
    }
}

/// One event of `meshctl monitor`, names resolved.
public struct MonitorEvent: Codable, Sendable {
    public var time: Date
    /// `drop`, `verdict`, `lb` or `l7`.
    public var type: String
    public var endpoint: String
    public var direction: String
    public var source: String
    public var destination: String
    public var sourcePort: Int
    public var destinationPort: Int
    public var proto: String
    public var peerIdentity: Int
    public var peer: String
    public var verdict: String
    public var reason: String
    public var rule: String
    public var revision: Int
    /// `lb` events: the service port connected to (`default/web:http`), and the backend
    /// endpoint chosen (empty when refused: no backend).
    public var service: String?
    public var backend: String?
    /// `l7` events: the request and its answer.
    public var http: HTTPInfo?

    public struct HTTPInfo: Codable, Sendable {
        public var method: String
        public var path: String
        public var host: String
        public var status: Int
        public var latencySeconds: Double
        public var destinationEndpoint: String?
        /// A routed request: the Service it was sent to (`namespace/name`), the route rule
        /// that matched, and how many attempts it took.
        public var service: String?
        public var routeRule: String?
        public var attempts: Int?
        /// A connection through an mTLS tunnel between nodes (`method` CONNECT): which end
        /// saw it (`inbound`, `outbound`) and the SPIFFE ID the other end proved.
        public var tunnel: String?
        public var peerSPIFFEID: String?

        public init(method: String, path: String, host: String, status: Int, latencySeconds: Double, destinationEndpoint: String?) {
            self.method = method
            self.path = path
            self.host = host
            self.status = status
            self.latencySeconds = latencySeconds
            self.destinationEndpoint = destinationEndpoint
        }
    }

    public init(time: Date, type: String, endpoint: String, direction: String, source: String, destination: String,
                sourcePort: Int, destinationPort: Int, proto: String, peerIdentity: Int, peer: String,
                verdict: String, reason: String, rule: String, revision: Int) {
        self.time = time
        self.type = type
        self.endpoint = endpoint
        self.direction = direction
        self.source = source
        self.destination = destination
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
        self.proto = proto
        self.peerIdentity = peerIdentity
        self.peer = peer
        self.verdict = verdict
        self.reason = reason
        self.rule = rule
        self.revision = revision
    }
}

/// Rows of `meshctl bpf … list`.
public struct BPFPolicyRow: Codable, Sendable {
    public var endpoint: String
    public var direction: String
    public var identity: Int
    public var peer: String
    public var proto: String
    public var ports: String
    public var action: String
    public var rule: String
    public init(endpoint: String, direction: String, identity: Int, peer: String, proto: String, ports: String, action: String, rule: String) {
        self.endpoint = endpoint
        self.direction = direction
        self.identity = identity
        self.peer = peer
        self.proto = proto
        self.ports = ports
        self.action = action
        self.rule = rule
    }
}

public struct BPFIPCacheRow: Codable, Sendable {
    public var prefix: String
    public var identity: Int
    public var labels: String
    public var endpoint: String
    /// Another node's endpoint that this node reaches only through an mTLS tunnel.
    public var tunnel: Bool?
    public init(prefix: String, identity: Int, labels: String, endpoint: String, tunnel: Bool = false) {
        self.prefix = prefix
        self.identity = identity
        self.labels = labels
        self.endpoint = endpoint
        self.tunnel = tunnel
    }
}

public struct BPFConntrackRow: Codable, Sendable {
    public var endpoint: String
    public var direction: String
    public var flow: String
    public var proto: String
    public var revision: Int
    public var rule: String
    public var closing: Bool
    public var ageSeconds: Double
    public var idleSeconds: Double
    public init(endpoint: String, direction: String, flow: String, proto: String, revision: Int, rule: String,
                closing: Bool, ageSeconds: Double, idleSeconds: Double) {
        self.endpoint = endpoint
        self.direction = direction
        self.flow = flow
        self.proto = proto
        self.revision = revision
        self.rule = rule
        self.closing = closing
        self.ageSeconds = ageSeconds
        self.idleSeconds = idleSeconds
    }
}

public enum ProtocolName {
    public static func name(_ n: UInt8) -> String {
        PortRange.L4Protocol.allCases.first { $0.number == n }?.rawValue ?? "proto-\(n)"
    }
}
