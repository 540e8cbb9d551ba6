/// A Gateway API `Gateway` (`gateway.networking.k8s.io/v1`): the node's way in for clients
/// outside the mesh. Each listener is a port on every address of the node: `HTTP`, `HTTPS`
/// (TLS ended here with the listener's certificate, picked by SNI among the listeners of a
/// port) or `TLS` (passthrough: the TLS stream goes, unopened, to the backend a `TLSRoute`
/// names for its SNI). HTTPRoutes attach to HTTP and HTTPS listeners and route requests to
/// Services as inside the mesh.
public struct Gateway: Codable, Sendable, Equatable {
    public var name: String
    public var namespace: String
    /// `spec.gatewayClassName`; SwiftMesh serves a Gateway of any class it is given.
    public var className: String
    public var listeners: [Listener]

    public var key: String { "\(namespace)/\(name)" }

    public init(name: String, namespace: String, className: String, listeners: [Listener]) {
        self.name = name
        self.namespace = namespace
        self.className = className
        self.listeners = listeners
    }

    public enum ListenerProtocol: String, Codable, Sendable, CaseIterable {
        case http = "HTTP", https = "HTTPS", tls = "TLS"

        /// The route kind that attaches to a listener of this protocol.
        public var routeKind: String { self == .tls ? "TLSRoute" : "HTTPRoute" }
    }

    public struct Listener: Codable, Sendable, Equatable {
        public var name: String
        public var port: UInt16
        public var proto: ListenerProtocol
        /// Lower case; may start with `*.`; nil: every hostname.
        public var hostname: String?
        /// HTTPS: the certificate (and key) to present, first one first. Empty otherwise.
        public var certificates: [CertificateRef]
        /// `allowedRoutes.namespaces.from: All`; otherwise (`Same`, the default) only routes
        /// of the Gateway's namespace attach.
        public var routesFromAllNamespaces: Bool

        public init(name: String, port: UInt16, proto: ListenerProtocol, hostname: String? = nil, certificates: [CertificateRef] = [],
                    routesFromAllNamespaces: Bool = false) {
            self.name = name
            self.port = port
            self.proto = proto
            self.hostname = hostname
            self.certificates = certificates
            self.routesFromAllNamespaces = routesFromAllNamespaces
        }
    }

    /// A `certificateRefs[]` entry: a Secret of type `kubernetes.io/tls` by name. SwiftMesh
    /// keeps no Secrets: meshd reads the pair from files (`--gateway-certs`), laid out as
    /// the Secret's keys, `NAMESPACE/NAME/tls.crt` and `tls.key`.
    public struct CertificateRef: Codable, Sendable, Equatable, Hashable {
        public var name: String
        public var namespace: String

        public init(name: String, namespace: String) {
            self.name = name
            self.namespace = namespace
        }

        public var key: String { "\(namespace)/\(name)" }
    }
}

/// A `parentRefs[]` entry that names a Gateway: optionally one listener (`sectionName`) or
/// the listeners of one port.
public struct GatewayParentRef: Codable, Sendable, Equatable, Hashable {
    public var name: String
    public var namespace: String
    public var sectionName: String?
    public var port: UInt16?

    public init(name: String, namespace: String, sectionName: String? = nil, port: UInt16? = nil) {
        self.name = name
        self.namespace = namespace
        self.sectionName = sectionName
        self.port = port
    }

    public var gatewayKey: String { "\(namespace)/\(name)" }

    /// Whether this parent, of the listener's Gateway, takes `listener`: its sectionName
    /// and port, where given, are the listener's.
    func names(_ listener: Gateway.Listener) -> Bool {
        (sectionName ?? listener.name) == listener.name && (port ?? listener.port) == listener.port
    }
}

/// A Gateway API `TLSRoute` (`gateway.networking.k8s.io/v1alpha2`): TLS connections to a
/// passthrough listener whose SNI is one of `hostnames` go, still encrypted, to one of
/// `backends` (by weight).
public struct TLSRoute: Codable, Sendable, Equatable {
    public var name: String
    public var namespace: String
    public var parents: [GatewayParentRef]
    /// Lower case, may start with `*.`; empty: every SNI the listener takes.
    public var hostnames: [String]
    public var backends: [HTTPRoute.BackendRef]

    public var key: String { "\(namespace)/\(name)" }

    public init(name: String, namespace: String, parents: [GatewayParentRef], hostnames: [String], backends: [HTTPRoute.BackendRef]) {
        self.name = name
        self.namespace = namespace
        self.parents = parents
        self.hostnames = hostnames
        self.backends = backends
    }
}

/// Hostname rules of the Gateway API, shared by meshd (which routes attach to which
/// listener) and the proxy (which listener an SNI or Host picks).
public enum GatewayHostname {
    /// Whether `name` (exact, or itself a wildcard) lies within `pattern` (exact, or
    /// `*.suffix`, which takes one or more labels before the suffix). Lower case both.
    public static func covers(_ pattern: String, _ name: String) -> Bool {
        if pattern == name { return true }
        guard pattern.hasPrefix("*.") else { return false }
        let suffix = pattern.dropFirst(1)  // ".example.com"
        let bare = name.hasPrefix("*.") ? String(name.dropFirst(2)) : name
        return bare.hasSuffix(suffix) && bare.count > suffix.count
    }

    /// The hostnames a route answers for on a listener: nil when they have none in common
    /// (the route does not attach there); empty when both take any hostname.
    public static func intersect(listener: String?, route: [String]) -> [String]? {
        guard let listener else { return route }
        if route.isEmpty { return [listener] }
        var out: [String] = []
        for h in route {
            if covers(listener, h) {
                out.append(h)
            } else if covers(h, listener) {
                out.append(listener)
            }
        }
        return out.isEmpty ? nil : Array(Set(out)).sorted()
    }

    /// How well `pattern` (nil: any) takes `host`: nil when it does not; larger is more
    /// specific (an exact name beats the longest wildcard, which beats any).
    public static func specificity(_ pattern: String?, host: String) -> Int? {
        guard let pattern else { return 0 }
        guard covers(pattern, host.lowercased()) else { return nil }
        return pattern.hasPrefix("*.") ? pattern.count : 1_000
    }

    /// A valid listener or route hostname: a DNS name, optionally with a leading `*.`.
    static func isValid(_ h: String) -> Bool {
        let bare = h.hasPrefix("*.") ? String(h.dropFirst(2)) : h
        return isDNSSubdomain(bare) && (bare.contains(".") || !h.hasPrefix("*."))
    }
}

/// A Gateway or a TLSRoute, as meshd stores and orders them.
public enum GatewayDocument: Codable, Sendable, Equatable {
    case gateway(Gateway)
    case tlsRoute(TLSRoute)

    public var kind: String {
        switch self {
        case .gateway: "Gateway"
        case .tlsRoute: "TLSRoute"
        }
    }

    /// `namespace/name`.
    public var key: String {
        switch self {
        case .gateway(let g): g.key
        case .tlsRoute(let r): r.key
        }
    }

    /// `Kind:namespace/name`: these share the HTTPRoutes' table, and so their apply order.
    public var storeKey: String { "\(kind):\(key)" }

    public static func isStoreKey(_ key: String) -> Bool { key.hasPrefix("Gateway:") || key.hasPrefix("TLSRoute:") }
}
