/// The proxy's control socket: a unix stream socket the proxy listens on and meshd connects
/// to, carrying one JSON object (a ProxyControlMessage) per line each way.
///
/// The proxy is the server so that it outlives meshd: when meshd restarts or dies, the
/// proxy keeps serving with its last configuration and waits for the next meshd to
/// connect, which adopts it instead of starting another.
///
///   meshd → proxy: `config` (a whole ProxyConfig), `events` (true while a monitor wants
///                  L7 events), `metricsRequest` (an id; answered by `metrics`).
///   proxy → meshd: `hello` (first, on connect), `event`, `metrics`, `configApplied`
///                  (or `configRejected`, with the reason).
public struct ProxyControlMessage: Codable, Sendable {
    public var config: ProxyConfig?
    public var events: Bool?
    public var metricsRequest: UInt64?
    public var hello: ProxyHello?
    public var event: L7Event?
    public var metrics: ProxyMetricsReply?
    public var configApplied: UInt64?
    public var configRejected: ProxyConfigRejection?

    public init(config: ProxyConfig? = nil, events: Bool? = nil, metricsRequest: UInt64? = nil, hello: ProxyHello? = nil,
                event: L7Event? = nil, metrics: ProxyMetricsReply? = nil, configApplied: UInt64? = nil,
                configRejected: ProxyConfigRejection? = nil) {
        self.config = config
        self.events = events
        self.metricsRequest = metricsRequest
        self.hello = hello
        self.event = event
        self.metrics = metrics
        self.configApplied = configApplied
        self.configRejected = configRejected
    }
}

public struct ProxyHello: Codable, Sendable, Equatable {
    public var pid: Int32
    /// The TCP port of the transparent listener.
    public var port: UInt16
    /// Generation of the configuration in force (0: none yet).
    public var generation: UInt64
    /// Seconds since the proxy started.
    public var uptimeSeconds: Double
    /// What the proxy reads: 2 and up take the ipcache as one string (CompactIPCache); 3
    /// and up also a configuration that keeps the ipcache the connection last carried
    /// (ProxyConfig.ipcacheUnchanged); a proxy before 2 sends none. meshd adopts a running
    /// proxy across its own upgrades, so it writes to each in the form it reads.
    public var protocolVersion: Int?

    public static let currentProtocol = 3

    public init(pid: Int32, port: UInt16, generation: UInt64, uptimeSeconds: Double, protocolVersion: Int? = ProxyHello.currentProtocol) {
        self.pid = pid
        self.port = port
        self.generation = generation
        self.uptimeSeconds = uptimeSeconds
        self.protocolVersion = protocolVersion
    }
}

public struct ProxyConfigRejection: Codable, Sendable, Equatable {
    public var generation: UInt64
    public var reason: String
    /// true: the configuration kept an ipcache this connection does not hold (none came, or
    /// a line that could not be read came after it): meshd sends it again whole.
    public var ipcacheMissing: Bool?

    public init(generation: UInt64, reason: String, ipcacheMissing: Bool? = nil) {
        self.generation = generation
        self.reason = reason
        self.ipcacheMissing = ipcacheMissing
    }
}

/// The proxy's metrics in Prometheus text format, for meshd's /metrics.
public struct ProxyMetricsReply: Codable, Sendable, Equatable {
    public var id: UInt64
    public var text: String

    public init(id: UInt64, text: String) {
        self.id = id
        self.text = text
    }
}

/// One HTTP request the proxy handled, for `meshctl monitor --type l7`.
public struct L7Event: Codable, Sendable, Equatable {
    public enum Verdict: String, Codable, Sendable {
        /// Forwarded; `status` is the upstream's.
        case forwarded
        /// Refused by L7 policy with 403.
        case denied
        /// Allowed, but the proxy answered itself (upstream unreachable, timeout, bad request).
        case error
    }

    /// Nanoseconds since the Unix epoch.
    public var timestamp: UInt64
    public var source: String       // "10.200.0.2:43122"
    public var sourceEndpoint: String?   // "default/tiefighter"
    public var sourceIdentity: UInt32
    public var destination: String  // "10.200.0.3:80"
    public var destinationEndpoint: String?
    public var method: String
    /// The request target, cut to 256 bytes.
    public var path: String
    public var host: String
    public var status: Int
    public var verdict: Verdict
    public var latencySeconds: Double
    public var ruleID: UInt32
    public var rule: String
    /// Why the proxy answered itself (`verdict == .error`).
    public var error: String?
    /// Routed requests only (the original destination was a ProxyRoute frontend): the
    /// frontend's Service (`namespace/name`), the route rule that matched, the backend
    /// endpoint the last attempt went to (`destination` is its address) and how many
    /// attempts were made (1 without retries).
    public var service: String?
    public var routeRule: String?
    public var backend: String?
    public var attempts: Int?
    /// Connections through an mTLS tunnel between nodes (`method` is `CONNECT`): which end
    /// reported it (`inbound`, `outbound`) and the SPIFFE ID the other end proved.
    public var tunnel: String?
    public var peerIdentity: String?

    public init(timestamp: UInt64, source: String, sourceEndpoint: String?, sourceIdentity: UInt32, destination: String,
                destinationEndpoint: String?, method: String, path: String, host: String, status: Int, verdict: Verdict,
                latencySeconds: Double, ruleID: UInt32, rule: String, error: String? = nil, service: String? = nil,
                routeRule: String? = nil, backend: String? = nil, attempts: Int? = nil, tunnel: String? = nil,
                peerIdentity: String? = nil) {
        self.timestamp = timestamp
        self.source = source
        self.sourceEndpoint = sourceEndpoint
        self.sourceIdentity = sourceIdentity
        self.destination = destination
        self.destinationEndpoint = destinationEndpoint
        self.method = method
        self.path = path
        self.host = host
        self.status = status
        self.verdict = verdict
        self.latencySeconds = latencySeconds
        self.ruleID = ruleID
        self.rule = rule
        self.error = error
        self.service = service
        self.routeRule = routeRule
        self.backend = backend
        self.attempts = attempts
        self.tunnel = tunnel
        self.peerIdentity = peerIdentity
    }
}
