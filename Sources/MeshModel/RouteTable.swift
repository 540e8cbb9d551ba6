import Foundation

/// Turns HTTPRoutes, Services and ready endpoints into what the proxy serves: one
/// ProxyRoute per routed frontend (a Service's TCP port some route binds), with every match
/// of its routes in the Gateway API's precedence order and each backendRef resolved to the
/// endpoints that serve it now. Pure, so meshd recomputes it after any change and sends it
/// only when it differs.
public enum RouteTable {
    /// A Service as the table needs it: its address and TCP ports.
    public struct ServiceFrontends: Sendable {
        public var key: String
        public var clusterIP: IPv4Address
        public var tcpPorts: [UInt16]

        public init(key: String, clusterIP: IPv4Address, tcpPorts: [UInt16]) {
            self.key = key
            self.clusterIP = clusterIP
            self.tcpPorts = tcpPorts
        }
    }

    /// Why a route is not (wholly) in force, per route key.
    public typealias Problems = [String: [String]]

    /// `routes` in the order they were first applied (older wins a precedence tie, as the
    /// Gateway API says); `backends(serviceKey, port)` gives the ready endpoints of a
    /// Service's port, or nil when the Service or the port does not exist.
    public static func build(routes: [HTTPRoute], services: [String: ServiceFrontends],
                             backends: (String, UInt16) -> [ProxyBackendEndpoint]?) -> (routes: [ProxyRoute], problems: Problems) {
        var problems: Problems = [:]
        var bound: [String: [Int]] = [:]  // "vip:port" → route indexes
        var frontends: [String: (ServiceFrontends, UInt16)] = [:]
        for (i, route) in routes.enumerated() {
            for parent in route.parents {
                guard let svc = services[parent.serviceKey] else {
                    problems[route.key, default: []].append("parent Service \(parent.serviceKey) does not exist")
                    continue
                }
                let ports = parent.port.map { [$0] } ?? svc.tcpPorts
                if let p = parent.port, !svc.tcpPorts.contains(p) {
                    problems[route.key, default: []].append("parent Service \(parent.serviceKey) has no TCP port \(p)")
                }
                for port in ports where svc.tcpPorts.contains(port) {
                    let k = "\(svc.clusterIP):\(port)"
                    if !(bound[k]?.contains(i) ?? false) { bound[k, default: []].append(i) }
                    frontends[k] = (svc, port)
                }
            }
        }
        var out: [ProxyRoute] = []
        for (k, indexes) in bound.sorted(by: { $0.key < $1.key }) {
            let (svc, port) = frontends[k]!
            out.append(frontend(vip: svc.clusterIP, port: port, service: svc.key, bound: indexes.map { ($0, routes[$0].hostnames) },
                                routes: routes, problems: &problems, backends: backends))
        }
        return (out, problems)
    }

    /// One routed frontend from the routes bound to it (indexes into `routes`, each with the
    /// hostnames it answers for there): every rule with its backends resolved, every match
    /// in precedence order.
    static func frontend(vip: IPv4Address, port: UInt16, service: String, bound: [(index: Int, hostnames: [String])],
                         routes: [HTTPRoute], problems: inout Problems,
                         backends: (String, UInt16) -> [ProxyBackendEndpoint]?) -> ProxyRoute {
        var rules: [ProxyRouteRule] = []
        var matches: [(key: PrecedenceKey, match: ProxyRouteMatch)] = []
        for (i, hostnames) in bound {
            let route = routes[i]
            for (r, rule) in route.rules.enumerated() {
                rules.append(ProxyRouteRule(name: "\(route.key) rules[\(r)]", filters: rule.filters,
                                            backends: groups(rule.backends, of: route.key, problems: &problems, backends: backends),
                                            timeouts: rule.timeouts, retry: rule.retry))
                let ruleMatches = rule.matches.isEmpty ? [HTTPRoute.Match()] : rule.matches
                for (m, match) in ruleMatches.enumerated() {
                    matches.append((PrecedenceKey(match, route: i, rule: r, index: m),
                                    ProxyRouteMatch(match: match, rule: rules.count - 1, hostnames: hostnames)))
                }
            }
        }
        matches.sort { $0.key < $1.key }
        return ProxyRoute(vip: vip, port: port, service: service, routes: bound.map { routes[$0.index].key }, rules: rules,
                          matches: matches.map(\.match))
    }

    /// `backendRefs` resolved to ready endpoints; one that names no Service port is a problem
    /// of `routeKey` (and a group with no endpoint, so its share of requests fails).
    static func groups(_ refs: [HTTPRoute.BackendRef], of routeKey: String, problems: inout Problems,
                       backends: (String, UInt16) -> [ProxyBackendEndpoint]?) -> [ProxyBackendGroup] {
        refs.map { b in
            let eps = backends(b.serviceKey, b.port)
            if eps == nil {
                let p = "backend Service \(b.serviceKey) port \(b.port) does not exist"
                if !(problems[routeKey]?.contains(p) ?? false) { problems[routeKey, default: []].append(p) }
            }
            return ProxyBackendGroup(service: b.serviceKey, weight: b.weight, endpoints: eps ?? [])
        }
    }

    /// The Gateway API's order among matches: an Exact path, then the longest prefix, then
    /// a method match, then more header matches, then more query matches; then the older
    /// route, then rule and match order. The API leaves regular expressions to the
    /// implementation: they go between Exact and PathPrefix (longer first), since after the
    /// prefixes a catch-all `/` would hide every one of them.
    struct PrecedenceKey: Comparable {
        var pathKind: Int
        var negativePathLength: Int
        var noMethod: Int
        var negativeHeaders: Int
        var negativeQueries: Int
        var route: Int
        var rule: Int
        var index: Int

        init(_ m: HTTPRoute.Match, route: Int, rule: Int, index: Int) {
            pathKind = switch m.path.type {
            case .exact: 0
            case .regularExpression: 1
            case .pathPrefix: 2
            }
            negativePathLength = m.path.type == .exact ? 0 : -m.path.value.utf8.count
            noMethod = m.method == nil ? 1 : 0
            negativeHeaders = -m.headers.count
            negativeQueries = -m.queryParams.count
            self.route = route
            self.rule = rule
            self.index = index
        }

        var ordered: [Int] { [pathKind, negativePathLength, noMethod, negativeHeaders, negativeQueries, route, rule, index] }

        static func < (a: Self, b: Self) -> Bool { a.ordered.lexicographicallyPrecedes(b.ordered) }
    }
}

/// An HTTPRoute as `meshctl get httproutes` shows it: what was applied and whether its
/// parents and backends resolve, with the reasons when they do not.
public struct HTTPRouteView: Codable, Sendable {
    public var route: HTTPRoute
    /// `vip:port` of each frontend the route is programmed on.
    public var frontends: [String]
    /// Why it is not (wholly) in force; empty when it is.
    public var problems: [String]
    public var appliedAt: Date

    public init(route: HTTPRoute, frontends: [String], problems: [String], appliedAt: Date) {
        self.route = route
        self.frontends = frontends
        self.problems = problems
        self.appliedAt = appliedAt
    }
}
