import MeshModel
import NIOCore

/// The routed frontends of one configuration, compiled and checked once, immutable and
/// shared by every connection until the next configuration replaces it (with the L7
/// policy of the same configuration: see PolicyStore).
final class RoutedFrontends: Sendable {
    let resilience: ProxyResilience
    private let frontends: [PeerAddress: RoutedFrontend]

    static let empty = RoutedFrontends()

    private init() {
        resilience = .default
        frontends = [:]
    }

    init(_ config: ProxyConfig) throws(MeshError) {
        try Self.check(config.resilience)
        resilience = config.resilience
        var frontends: [PeerAddress: RoutedFrontend] = [:]
        for route in config.routes {
            let key = PeerAddress(ip: route.vip, port: route.port)
            if let other = frontends[key] {
                throw MeshError.invalid("routes: \(key) is the frontend of both \(other.service) and \(route.service); "
                                        + "a VIP and port can have one route list only")
            }
            frontends[key] = try RoutedFrontend(route, address: key)
        }
        self.frontends = frontends
    }

    func frontend(for destination: PeerAddress) -> RoutedFrontend? { frontends[destination] }

    var isEmpty: Bool { frontends.isEmpty }

    /// Every backend address any frontend can send to: the endpoint state worth keeping.
    var backendAddresses: Set<PeerAddress> {
        var all = Set<PeerAddress>()
        for f in frontends.values {
            for rule in f.rules { for group in rule.rule.backends { for e in group.endpoints { all.insert(PeerAddress(e)) } } }
        }
        return all
    }

    var frontendAddresses: Set<PeerAddress> { Set(frontends.keys) }

    private static func check(_ r: ProxyResilience) throws(MeshError) {
        guard r.consecutiveFailures >= 1 else {
            throw MeshError.invalid("resilience.consecutiveFailures must be at least 1, not \(r.consecutiveFailures)")
        }
        guard r.baseEjectionSeconds.isFinite, r.baseEjectionSeconds > 0, r.maxEjectionSeconds.isFinite,
              r.maxEjectionSeconds >= r.baseEjectionSeconds else {
            throw MeshError.invalid("resilience: ejection times must be finite and positive, with maxEjectionSeconds "
                                    + "(\(r.maxEjectionSeconds)) at least baseEjectionSeconds (\(r.baseEjectionSeconds))")
        }
        guard (0...100).contains(r.maxEjectedPercent) else {
            throw MeshError.invalid("resilience.maxEjectedPercent must be between 0 and 100, not \(r.maxEjectedPercent)")
        }
        guard r.maxPendingPerEndpoint >= 1 else {
            throw MeshError.invalid("resilience.maxPendingPerEndpoint must be at least 1, not \(r.maxPendingPerEndpoint)")
        }
    }
}

/// One VIP:port whose requests are routed: its matches in precedence order and its rules.
final class RoutedFrontend: Sendable {
    let address: PeerAddress
    /// The parent Service, `namespace/name`.
    let service: String
    let budget: RetryBudget
    let rules: [RoutedRule]
    private let matches: [CompiledRouteMatch]

    init(_ route: ProxyRoute, address: PeerAddress) throws(MeshError) {
        self.address = address
        service = route.service
        budget = route.retryBudget
        let place = "route \(address) (\(route.service))"
        let b = route.retryBudget
        guard b.percent.isFinite, b.percent >= 0, b.minPerSecond.isFinite, b.minPerSecond >= 0,
              b.windowSeconds.isFinite, b.windowSeconds > 0 else {
            throw MeshError.invalid("\(place) retryBudget: percent and minPerSecond must be finite and not negative, "
                                    + "windowSeconds finite and positive")
        }
        rules = try route.rules.enumerated().map { (i, rule) throws(MeshError) in
            try RoutedRule(rule, place: "\(place) rules[\(i)] (\(rule.name))")
        }
        matches = try route.matches.enumerated().map { (i, m) throws(MeshError) in
            guard route.rules.indices.contains(m.rule) else {
                throw MeshError.invalid("\(place) matches[\(i)]: rule \(m.rule) does not exist (the route has \(route.rules.count))")
            }
            return try CompiledRouteMatch(m, place: "\(place) matches[\(i)]")
        }
    }

    /// The rule of the first match that fits `request` and what its path prefix matched;
    /// nil when none does (404).
    func select(_ request: RouteRequest) -> (rule: RoutedRule, matchedPrefix: Substring?)? {
        for m in matches {
            let result = m.matches(request)
            if result.matched { return (rules[m.rule], result.prefix) }
        }
        return nil
    }
}

/// A route rule made ready: its filters checked, its timeouts as NIO amounts.
struct RoutedRule: Sendable {
    let rule: ProxyRouteRule
    let filters: RouteFilters
    let requestTimeout: TimeAmount?
    let attemptTimeout: TimeAmount?
    /// Status codes that make an attempt worth retrying.
    let retryCodes: Set<Int>

    var name: String { rule.name }
    var retry: HTTPRoute.Retry? { rule.retry }

    init(_ rule: ProxyRouteRule, place: String) throws(MeshError) {
        self.rule = rule
        filters = try RouteFilters(rule.filters, place: place)
        requestTimeout = try Self.seconds(rule.timeouts?.request, "\(place) timeouts.request")
        attemptTimeout = try Self.seconds(rule.timeouts?.backendRequest, "\(place) timeouts.backendRequest")
        if let retry = rule.retry {
            guard retry.attempts >= 0, retry.backoffSeconds.isFinite, retry.backoffSeconds >= 0 else {
                throw MeshError.invalid("\(place) retry: attempts (\(retry.attempts)) and backoffSeconds "
                                        + "(\(retry.backoffSeconds)) must not be negative")
            }
            if let bad = retry.codes.first(where: { !(100...599).contains($0) }) {
                throw MeshError.invalid("\(place) retry.codes: \(bad) is not an HTTP status code")
            }
        }
        retryCodes = Set(rule.retry.map { $0.codes.isEmpty ? HTTPRoute.Retry.defaultCodes : $0.codes } ?? [])
        for (g, group) in rule.backends.enumerated() where group.endpoints.contains(where: { $0.port == 0 }) {
            throw MeshError.invalid("\(place) backends[\(g)] (\(group.service)): an endpoint has port 0")
        }
    }

    private static func seconds(_ value: Double?, _ place: String) throws(MeshError) -> TimeAmount? {
        guard let value else { return nil }
        guard value.isFinite, value > 0 else {
            throw MeshError.invalid("\(place) must be a positive number of seconds, not \(value)")
        }
        return .configured(seconds: value)
    }
}

extension TimeAmount {
    /// Seconds from a configuration; anything beyond a year is as good as never.
    static func configured(seconds value: Double) -> TimeAmount {
        .nanoseconds(Int64(min(value, 365 * 86_400) * 1e9))
    }
}

extension PeerAddress {
    init(_ endpoint: ProxyBackendEndpoint) { self.init(ip: endpoint.ip, port: endpoint.port) }
}
