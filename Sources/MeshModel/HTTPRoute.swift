/// A Gateway API `HTTPRoute` (`gateway.networking.k8s.io/v1`) bound to Services, as the
/// GAMMA initiative defines routing inside a mesh: a parent that is a Service means "every
/// request to this Service's address goes through these rules", and its `backendRefs`
/// name the Services (usually subsets: `web-v1`, `web-v2`) that serve the request. A parent
/// that is a Gateway puts the same rules on the Gateway's HTTP and HTTPS listeners, for
/// clients outside the mesh.
public struct HTTPRoute: Codable, Sendable, Equatable {
    public var name: String
    public var namespace: String
    public var parents: [ParentRef]
    public var gatewayParents: [GatewayParentRef]
    public var hostnames: [String]
    public var rules: [Rule]

    public var key: String { "\(namespace)/\(name)" }

    public init(name: String, namespace: String, parents: [ParentRef], gatewayParents: [GatewayParentRef] = [],
                hostnames: [String] = [], rules: [Rule]) {
        self.name = name
        self.namespace = namespace
        self.parents = parents
        self.gatewayParents = gatewayParents
        self.hostnames = hostnames
        self.rules = rules
    }

    enum CodingKeys: String, CodingKey { case name, namespace, parents, gatewayParents, hostnames, rules }

    /// Routes stored before Gateway parents existed have no `gatewayParents`.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        namespace = try c.decode(String.self, forKey: .namespace)
        parents = try c.decode([ParentRef].self, forKey: .parents)
        gatewayParents = try c.decodeIfPresent([GatewayParentRef].self, forKey: .gatewayParents) ?? []
        hostnames = try c.decode([String].self, forKey: .hostnames)
        rules = try c.decode([Rule].self, forKey: .rules)
    }

    /// `parentRefs[]` of kind Service: the Service (in `namespace`, else the route's) and
    /// optionally one of its ports; without a port the route takes every TCP port.
    public struct ParentRef: Codable, Sendable, Equatable, Hashable {
        public var name: String
        public var namespace: String
        public var port: UInt16?

        public init(name: String, namespace: String, port: UInt16? = nil) {
            self.name = name
            self.namespace = namespace
            self.port = port
        }

        public var serviceKey: String { "\(namespace)/\(name)" }
    }

    public struct Rule: Codable, Sendable, Equatable {
        /// Empty: every request (Gateway API's default match, `PathPrefix /`).
        public var matches: [Match]
        public var filters: [Filter]
        /// Empty: the rule answers 500 itself, as the Gateway API says for a rule with no
        /// backend to forward to.
        public var backends: [BackendRef]
        public var timeouts: Timeouts?
        public var retry: Retry?

        public init(matches: [Match] = [], filters: [Filter] = [], backends: [BackendRef], timeouts: Timeouts? = nil,
                    retry: Retry? = nil) {
            self.matches = matches
            self.filters = filters
            self.backends = backends
            self.timeouts = timeouts
            self.retry = retry
        }
    }

    public struct Match: Codable, Sendable, Equatable, Hashable {
        public var path: PathMatch
        public var headers: [ValueMatch]
        public var queryParams: [ValueMatch]
        /// Upper case, e.g. `GET`; nil: any method.
        public var method: String?

        public init(path: PathMatch = PathMatch(type: .pathPrefix, value: "/"), headers: [ValueMatch] = [],
                    queryParams: [ValueMatch] = [], method: String? = nil) {
            self.path = path
            self.headers = headers
            self.queryParams = queryParams
            self.method = method
        }
    }

    public struct PathMatch: Codable, Sendable, Equatable, Hashable {
        public enum Kind: String, Codable, Sendable, CaseIterable {
            case exact = "Exact"
            case pathPrefix = "PathPrefix"
            case regularExpression = "RegularExpression"
        }

        public var type: Kind
        public var value: String

        public init(type: Kind, value: String) {
            self.type = type
            self.value = value
        }
    }

    /// A header (names compare without case; stored lower case) or query parameter (names
    /// compare exactly) match.
    public struct ValueMatch: Codable, Sendable, Equatable, Hashable {
        public enum Kind: String, Codable, Sendable, CaseIterable {
            case exact = "Exact"
            case regularExpression = "RegularExpression"
        }

        public var type: Kind
        public var name: String
        public var value: String

        public init(type: Kind, name: String, value: String) {
            self.type = type
            self.name = name
            self.value = value
        }
    }

    public enum Filter: Codable, Sendable, Equatable {
        case requestHeaderModifier(HeaderModifier)
        case responseHeaderModifier(HeaderModifier)
        case urlRewrite(URLRewrite)
    }

    /// `set` replaces (or adds), `add` appends, `remove` deletes; names compare without case.
    public struct HeaderModifier: Codable, Sendable, Equatable {
        public var set: [Header]
        public var add: [Header]
        public var remove: [String]

        public init(set: [Header] = [], add: [Header] = [], remove: [String] = []) {
            self.set = set
            self.add = add
            self.remove = remove
        }
    }

    /// Whether `s` may be a header name: an RFC 9110 token.
    public static func isHeaderName(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || "!#$%&'*+-.^_`|~".utf8.contains(c)
        }
    }

    public struct Header: Codable, Sendable, Equatable, Hashable {
        public var name: String
        public var value: String

        public init(name: String, value: String) {
            self.name = name
            self.value = value
        }
    }

    public struct URLRewrite: Codable, Sendable, Equatable {
        public enum PathRewrite: Codable, Sendable, Equatable {
            case replaceFullPath(String)
            /// Replaces the part the rule's `PathPrefix` match matched.
            case replacePrefixMatch(String)
        }

        public var hostname: String?
        public var path: PathRewrite?

        public init(hostname: String? = nil, path: PathRewrite? = nil) {
            self.hostname = hostname
            self.path = path
        }
    }

    /// A Service (in `namespace`) and one of its ports, with a weight (default 1).
    public struct BackendRef: Codable, Sendable, Equatable {
        public var name: String
        public var namespace: String
        public var port: UInt16
        public var weight: UInt32

        public init(name: String, namespace: String, port: UInt16, weight: UInt32 = 1) {
            self.name = name
            self.namespace = namespace
            self.port = port
            self.weight = weight
        }

        public var serviceKey: String { "\(namespace)/\(name)" }
    }

    /// Seconds. `request`: from the request's arrival to the end of its response, retries
    /// included; `backendRequest`: each attempt's own limit.
    public struct Timeouts: Codable, Sendable, Equatable {
        public var request: Double?
        public var backendRequest: Double?

        public init(request: Double? = nil, backendRequest: Double? = nil) {
            self.request = request
            self.backendRequest = backendRequest
        }
    }

    /// `retry`: up to `attempts` more tries of a request whose answer is one of `codes`
    /// (or that got none: refused, reset, timed out), `backoff` seconds apart.
    public struct Retry: Codable, Sendable, Equatable {
        public var attempts: Int
        public var backoffSeconds: Double
        public var codes: [Int]

        public init(attempts: Int, backoffSeconds: Double, codes: [Int]) {
            self.attempts = attempts
            self.backoffSeconds = backoffSeconds
            self.codes = codes
        }

        /// Without `codes`: the 5xx answers that say nothing was done (Gateway API leaves
        /// the default to the implementation; these are the ones safe to repeat).
        public static let defaultCodes = [502, 503, 504]
    }
}

// MARK: what the proxy is told

/// One routed frontend, as the proxy serves it: every TCP connection to `vip:port` reaches
/// the proxy (the datapath leaves such a VIP untranslated at connect() and hands its flows
/// over), and each request on it goes to a backend its rules choose.
public struct ProxyRoute: Codable, Sendable, Equatable {
    public var vip: IPv4Address
    public var port: UInt16
    /// The parent Service, `namespace/name`: the destination service in metrics.
    public var service: String
    /// The routes bound to this frontend, `namespace/name`, for status and events.
    public var routes: [String]
    public var rules: [ProxyRouteRule]
    /// Every (match, rule) pair of the bound routes, in Gateway API precedence order: the
    /// first that matches a request decides. No match: 404.
    public var matches: [ProxyRouteMatch]
    public var retryBudget: RetryBudget

    public init(vip: IPv4Address, port: UInt16, service: String, routes: [String], rules: [ProxyRouteRule],
                matches: [ProxyRouteMatch], retryBudget: RetryBudget = .default) {
        self.vip = vip
        self.port = port
        self.service = service
        self.routes = routes
        self.rules = rules
        self.matches = matches
        self.retryBudget = retryBudget
    }
}

public struct ProxyRouteMatch: Codable, Sendable, Equatable {
    public var match: HTTPRoute.Match
    /// Index into ProxyRoute.rules.
    public var rule: Int
    /// Hostnames the route accepts (empty: any), compared with the Host header.
    public var hostnames: [String]

    public init(match: HTTPRoute.Match, rule: Int, hostnames: [String] = []) {
        self.match = match
        self.rule = rule
        self.hostnames = hostnames
    }
}

public struct ProxyRouteRule: Codable, Sendable, Equatable {
    /// `namespace/route rules[i]`, for events and logs.
    public var name: String
    public var filters: [HTTPRoute.Filter]
    public var backends: [ProxyBackendGroup]
    public var timeouts: HTTPRoute.Timeouts?
    public var retry: HTTPRoute.Retry?

    public init(name: String, filters: [HTTPRoute.Filter], backends: [ProxyBackendGroup], timeouts: HTTPRoute.Timeouts?,
                retry: HTTPRoute.Retry?) {
        self.name = name
        self.filters = filters
        self.backends = backends
        self.timeouts = timeouts
        self.retry = retry
    }
}

/// One `backendRefs[]` entry made concrete: the ready endpoints of the backend Service,
/// each at the port the Service's port targets on it.
public struct ProxyBackendGroup: Codable, Sendable, Equatable {
    /// `namespace/name`.
    public var service: String
    public var weight: UInt32
    public var endpoints: [ProxyBackendEndpoint]

    public init(service: String, weight: UInt32, endpoints: [ProxyBackendEndpoint]) {
        self.service = service
        self.weight = weight
        self.endpoints = endpoints
    }
}

public struct ProxyBackendEndpoint: Codable, Sendable, Equatable, Hashable {
    public var ip: IPv4Address
    public var port: UInt16
    /// `namespace/name` of the endpoint (the destination workload in metrics).
    public var name: String

    public init(ip: IPv4Address, port: UInt16, name: String) {
        self.ip = ip
        self.port = port
        self.name = name
    }
}

/// How many retries a frontend may add, as Linkerd's (and Finagle's) budgets count: over
/// the last `windowSeconds`, retries may reach `percent`% of the requests plus
/// `minPerSecond` per second, so an outage cannot multiply the load.
public struct RetryBudget: Codable, Sendable, Equatable {
    public var percent: Double
    public var minPerSecond: Double
    public var windowSeconds: Double

    public init(percent: Double, minPerSecond: Double, windowSeconds: Double) {
        self.percent = percent
        self.minPerSecond = minPerSecond
        self.windowSeconds = windowSeconds
    }

    /// Linkerd's default: 20% extra, at least 10 per second, over 10 seconds.
    public static let `default` = RetryBudget(percent: 20, minPerSecond: 10, windowSeconds: 10)
}

/// Per-request load balancing and outlier ejection, the same for every routed frontend.
public struct ProxyResilience: Codable, Sendable, Equatable {
    /// An endpoint is ejected after this many failures in a row (5xx, refused, reset,
    /// timed out).
    public var consecutiveFailures: Int
    /// First ejection's length in seconds; each further one in a row doubles it, up to
    /// `maxEjectionSeconds`.
    public var baseEjectionSeconds: Double
    public var maxEjectionSeconds: Double
    /// At most this share (percent) of a backend group's endpoints are ejected at once.
    public var maxEjectedPercent: Double
    /// Requests in flight to one endpoint beyond which it is not chosen; when every
    /// endpoint is at the limit the request gets 503 at once.
    public var maxPendingPerEndpoint: Int

    public init(consecutiveFailures: Int, baseEjectionSeconds: Double, maxEjectionSeconds: Double,
                maxEjectedPercent: Double, maxPendingPerEndpoint: Int) {
        self.consecutiveFailures = consecutiveFailures
        self.baseEjectionSeconds = baseEjectionSeconds
        self.maxEjectionSeconds = maxEjectionSeconds
        self.maxEjectedPercent = maxEjectedPercent
        self.maxPendingPerEndpoint = maxPendingPerEndpoint
    }

    /// Linkerd's failure accrual (7 in a row, 1 s back-off up to a minute), Envoy's cap of
    /// half the endpoints ejected, and a pending limit a single client cannot reach.
    public static let `default` = ProxyResilience(consecutiveFailures: 7, baseEjectionSeconds: 1, maxEjectionSeconds: 60,
                                                  maxEjectedPercent: 50, maxPendingPerEndpoint: 1000)
}
