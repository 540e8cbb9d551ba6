import Foundation

// MARK: what the proxy is told

/// One port of the node's ingress gateway, as the proxy serves it: every listener of every
/// Gateway on that port (they share one protocol), picked per connection by SNI (HTTPS,
/// TLS) or per request by Host (HTTP).
public struct ProxyGatewayPort: Codable, Sendable, Equatable {
    public var port: UInt16
    public var proto: Gateway.ListenerProtocol
    public var listeners: [ProxyGatewayListener]

    public init(port: UInt16, proto: Gateway.ListenerProtocol, listeners: [ProxyGatewayListener]) {
        self.port = port
        self.proto = proto
        self.listeners = listeners
    }
}

public struct ProxyGatewayListener: Codable, Sendable, Equatable {
    /// `namespace/name` of the Gateway.
    public var gateway: String
    public var name: String
    public var hostname: String?
    /// HTTPS: the certificate and key to present.
    public var certificate: ProxyCertificateFiles?
    /// HTTP and HTTPS: the routes attached, as one routed frontend (nil: none attached, so
    /// every request gets 404).
    public var route: ProxyRoute?
    /// TLS: the TLSRoutes attached, in the order applied.
    public var passthrough: [ProxyPassthroughRoute]

    public init(gateway: String, name: String, hostname: String?, certificate: ProxyCertificateFiles? = nil, route: ProxyRoute? = nil,
                passthrough: [ProxyPassthroughRoute] = []) {
        self.gateway = gateway
        self.name = name
        self.hostname = hostname
        self.certificate = certificate
        self.route = route
        self.passthrough = passthrough
    }

    /// `namespace/gateway/listener`, in metrics and events.
    public var label: String { "\(gateway)/\(name)" }
}

/// PEM files the proxy reads (meshd checked that they read and belong together).
public struct ProxyCertificateFiles: Codable, Sendable, Equatable {
    public var certificate: String
    public var key: String

    public init(certificate: String, key: String) {
        self.certificate = certificate
        self.key = key
    }
}

public struct ProxyPassthroughRoute: Codable, Sendable, Equatable {
    /// `namespace/name` of the TLSRoute.
    public var route: String
    /// The SNIs it takes on its listener (empty: any).
    public var hostnames: [String]
    public var backends: [ProxyBackendGroup]

    public init(route: String, hostnames: [String], backends: [ProxyBackendGroup]) {
        self.route = route
        self.hostnames = hostnames
        self.backends = backends
    }
}

/// ServiceManager's part of the proxy's configuration: routed frontends inside the mesh
/// and the gateway's ports.
public struct ProxyRouting: Sendable, Equatable {
    public var routes: [ProxyRoute]
    public var gateways: [ProxyGatewayPort]

    public init(routes: [ProxyRoute], gateways: [ProxyGatewayPort]) {
        self.routes = routes
        self.gateways = gateways
    }
}

// MARK: building it

/// Turns Gateways and the HTTPRoutes and TLSRoutes attached to them into the gateway ports
/// the proxy serves, with why any part is not in force. Pure, as RouteTable.
public enum GatewayTable {
    public struct Result: Sendable {
        public var ports: [ProxyGatewayPort] = []
        /// Per Gateway key: listeners not served, and why.
        public var gatewayProblems: RouteTable.Problems = [:]
        /// Per route key (HTTPRoute or TLSRoute): parents it does not attach to, and why.
        public var routeProblems: RouteTable.Problems = [:]
        /// Per route key: the listeners (`namespace/gateway/listener`) it is attached to.
        public var attached: [String: [String]] = [:]

        public init() {}
    }

    /// `gateways`, `httpRoutes` and `tlsRoutes` in the order first applied (the older
    /// Gateway keeps a port another one also claims). `certificate` gives a reference's
    /// files, or why they cannot serve; `backends` as for RouteTable.build.
    public static func build(gateways: [Gateway], httpRoutes: [HTTPRoute], tlsRoutes: [TLSRoute],
                             certificate: (Gateway.CertificateRef) -> Swift.Result<ProxyCertificateFiles, MeshError>,
                             backends: (String, UInt16) -> [ProxyBackendEndpoint]?) -> Result {
        var out = Result()
        var ports: [UInt16: ProxyGatewayPort] = [:]
        var owners: [String: String] = [:]  // "port hostname" → listener label
        var unattached: [String: [String]] = [:]  // route key → why a listener did not take it
        for gw in gateways {
            for l in gw.listeners {
                let label = "\(gw.key)/\(l.name)"
                func refuse(_ why: String) { out.gatewayProblems[gw.key, default: []].append("listener \(l.name): \(why)") }
                if let taken = ports[l.port], taken.proto != l.proto {
                    refuse("port \(l.port) is already an \(taken.proto.rawValue) listener (\(taken.listeners[0].label))")
                    continue
                }
                let owner = "\(l.port) \(l.hostname ?? "*")"
                if let other = owners[owner] {
                    refuse("port \(l.port) for \(l.hostname ?? "every hostname") is already \(other)'s")
                    continue
                }
                var listener = ProxyGatewayListener(gateway: gw.key, name: l.name, hostname: l.hostname)
                if l.proto == .https {
                    switch certificate(l.certificates[0]) {
                    case .success(let files): listener.certificate = files
                    case .failure(let error):
                        refuse("certificate \(l.certificates[0].key): \(error.message)")
                        continue
                    }
                }
                // The routes whose parents take this listener, with the hostnames they answer for here.
                // A route that names this listener (sectionName) hears why it does not
                // attach; one that names the whole Gateway only if it attaches nowhere.
                func attaches(_ key: String, namespace: String, parents: [GatewayParentRef], hostnames: [String]) -> [String]? {
                    let naming = parents.filter { p in
                        p.gatewayKey == gw.key && p.names(l)
                    }
                    guard !naming.isEmpty else { return nil }
                    let named = naming.contains { $0.sectionName != nil }
                    guard l.routesFromAllNamespaces || namespace == gw.namespace else {
                        let why = "listener \(label) takes routes of namespace \(gw.namespace) only (allowedRoutes.namespaces.from: All opens it)"
                        if named { out.routeProblems[key, default: []].append(why) }
                        unattached[key, default: []].append(why)
                        return nil
                    }
                    guard let hosts = GatewayHostname.intersect(listener: l.hostname, route: hostnames) else {
                        let why = "no hostname in common with listener \(label) (\(l.hostname ?? "*"))"
                        if named { out.routeProblems[key, default: []].append(why) }
                        unattached[key, default: []].append(why)
                        return nil
                    }
                    out.attached[key, default: []].append(label)
                    return hosts
                }
                switch l.proto {
                case .http, .https:
                    var bound: [(index: Int, hostnames: [String])] = []
                    for (i, r) in httpRoutes.enumerated() {
                        if let hosts = attaches(r.key, namespace: r.namespace, parents: r.gatewayParents, hostnames: r.hostnames) {
                            bound.append((i, hosts))
                        }
                    }
                    if !bound.isEmpty {
                        listener.route = RouteTable.frontend(vip: IPv4Address(0), port: l.port, service: label, bound: bound,
                                                             routes: httpRoutes, problems: &out.routeProblems, backends: backends)
                    }
                case .tls:
                    for r in tlsRoutes {
                        if let hosts = attaches(r.key, namespace: r.namespace, parents: r.parents, hostnames: r.hostnames) {
                            listener.passthrough.append(ProxyPassthroughRoute(
                                route: r.key, hostnames: hosts,
                                backends: RouteTable.groups(r.backends, of: r.key, problems: &out.routeProblems, backends: backends)))
                        }
                    }
                }
                owners[owner] = label
                ports[l.port, default: ProxyGatewayPort(port: l.port, proto: l.proto, listeners: [])].listeners.append(listener)
            }
        }
        // Parents that took no listener at all.
        let byKey = Dictionary(gateways.map { ($0.key, $0) }, uniquingKeysWith: { a, _ in a })
        let parentsOf = httpRoutes.map { ($0.key, $0.gatewayParents, "HTTPRoute") } + tlsRoutes.map { ($0.key, $0.parents, "TLSRoute") }
        for (key, parents, kind) in parentsOf {
            for p in parents {
                guard let gw = byKey[p.gatewayKey] else {
                    out.routeProblems[key, default: []].append("parent Gateway \(p.gatewayKey) does not exist")
                    continue
                }
                let wanted: Set<Gateway.ListenerProtocol> = kind == "TLSRoute" ? [.tls] : [.http, .https]
                let fits = gw.listeners.contains { l in
                    wanted.contains(l.proto) && p.names(l)
                }
                if !fits {
                    let which = [p.sectionName.map { "named \($0)" }, p.port.map { "on port \($0)" }].compactMap { $0 }.joined(separator: " ")
                    out.routeProblems[key, default: []].append(
                        "Gateway \(p.gatewayKey) has no \(wanted.map(\.rawValue).sorted().joined(separator: " or ")) listener\(which.isEmpty ? "" : " " + which) for a \(kind)")
                } else if p.sectionName == nil, !(out.attached[key] ?? []).contains(where: { $0.hasPrefix(gw.key + "/") }) {
                    out.routeProblems[key, default: []].append("attached to no listener of Gateway \(p.gatewayKey): "
                                                               + (unattached[key] ?? []).joined(separator: "; "))
                }
            }
        }
        out.ports = ports.values.sorted { $0.port < $1.port }
        return out
    }
}

/// A Gateway as `meshctl get gateways` shows it: each listener with the routes attached,
/// and why any is not served.
public struct GatewayView: Codable, Sendable {
    public var gateway: Gateway
    /// Per listener name: the routes (`namespace/name`) attached.
    public var routes: [String: [String]]
    public var problems: [String]
    public var appliedAt: Date

    public init(gateway: Gateway, routes: [String: [String]], problems: [String], appliedAt: Date) {
        self.gateway = gateway
        self.routes = routes
        self.problems = problems
        self.appliedAt = appliedAt
    }
}

/// A TLSRoute as `meshctl get tlsroutes` shows it.
public struct TLSRouteView: Codable, Sendable {
    public var route: TLSRoute
    /// The listeners (`namespace/gateway/listener`) it is attached to.
    public var listeners: [String]
    public var problems: [String]
    public var appliedAt: Date

    public init(route: TLSRoute, listeners: [String], problems: [String], appliedAt: Date) {
        self.route = route
        self.listeners = listeners
        self.problems = problems
        self.appliedAt = appliedAt
    }
}
