import Foundation
import MeshModel
import NIOCore
import Proxy
import XCTest

/// A proxy whose connections all have a routed frontend as their original destination,
/// with backends that are EchoUpstreams on loopback. The frontend is a loopback port
/// nothing listens on, so a request the proxy failed to route gets 502, never traffic
/// elsewhere.
final class RoutedProxy {
    static let service = "shop/web"

    let harness: ProxyHarness
    let frontend: SocketAddress
    private var generation: UInt64 = 0

    var port: Int { harness.port }

    private init(harness: ProxyHarness, frontend: SocketAddress) {
        self.harness = harness
        self.frontend = frontend
    }

    static func start(_ adjust: (inout ProxySettings) -> Void = { _ in }) async throws -> RoutedProxy {
        let closed = try await EchoUpstream()
        let frontend = closed.address
        await closed.stop()
        let harness = try await ProxyHarness.start(destination: frontend, adjust)
        return RoutedProxy(harness: harness, frontend: frontend)
    }

    func stop() async { await harness.stop() }

    static func endpoint(_ upstream: EchoUpstream) -> ProxyBackendEndpoint {
        ProxyBackendEndpoint(ip: IPv4Address(0x7f00_0001), port: UInt16(upstream.port), name: "shop/\(upstream.name)")
    }

    static func group(_ service: String, weight: UInt32 = 1, _ upstreams: [EchoUpstream]) -> ProxyBackendGroup {
        ProxyBackendGroup(service: service, weight: weight, endpoints: upstreams.map(endpoint))
    }

    static func rule(_ name: String, _ backends: [ProxyBackendGroup], filters: [HTTPRoute.Filter] = [],
                     timeouts: HTTPRoute.Timeouts? = nil, retry: HTTPRoute.Retry? = nil) -> ProxyRouteRule {
        ProxyRouteRule(name: "shop/web-route rules[\(name)]", filters: filters, backends: backends, timeouts: timeouts,
                       retry: retry)
    }

    /// A configuration with the frontend routed by `rules` and `matches` (default: every
    /// request to rule 0), and no L7 policy.
    func config(_ rules: [ProxyRouteRule], matches: [ProxyRouteMatch]? = nil, budget: RetryBudget = .default,
                resilience: ProxyResilience = .default, endpoints: [ProxyEndpoint] = []) -> ProxyConfig {
        generation += 1
        let route = ProxyRoute(vip: IPv4Address(0x7f00_0001), port: UInt16(frontend.port ?? 0), service: Self.service,
                               routes: ["shop/web-route"], rules: rules,
                               matches: matches ?? [ProxyRouteMatch(match: HTTPRoute.Match(), rule: 0)], retryBudget: budget)
        return ProxyConfig(generation: generation, endpoints: endpoints, ipcache: [], l7: [], ruleNames: [:], routes: [route],
                           resilience: resilience)
    }

    /// Applies a configuration and fails the test unless the proxy took it.
    func route(_ rules: [ProxyRouteRule], matches: [ProxyRouteMatch]? = nil, budget: RetryBudget = .default,
               resilience: ProxyResilience = .default, endpoints: [ProxyEndpoint] = [],
               file: StaticString = #filePath, line: UInt = #line) async throws {
        let config = config(rules, matches: matches, budget: budget, resilience: resilience, endpoints: endpoints)
        let reply = try await harness.apply(config)
        XCTAssertEqual(reply.configApplied, config.generation, "config not applied: \(String(describing: reply.configRejected))",
                       file: file, line: line)
    }

    func metricsText() async throws -> String {
        try await ControlTestConnection.with(path: harness.proxy.controlPath) { control in
            try await control.send(ProxyControlMessage(metricsRequest: 1))
            return try await control.next { $0.metrics != nil }.metrics?.text ?? ""
        }
    }

    /// The value of the series `name{labels}` (labels as the exposition writes them), 0
    /// when it does not exist yet.
    func metric(_ name: String, _ labels: String) async throws -> Double {
        let prefix = "\(name){\(labels)} "
        let text = try await metricsText()
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix(prefix) }) else { return 0 }
        return Double(line.dropFirst(prefix.count)) ?? .nan
    }

    func expect(_ name: String, _ labels: String, _ value: Double, _ message: String = "",
                file: StaticString = #filePath, line: UInt = #line) async throws {
        let got = try await metric(name, labels)
        XCTAssertEqual(got, value, "\(name){\(labels)} \(message)", file: file, line: line)
    }
}

/// Starts `count` backends with names `prefix0`, `prefix1`, …
func backends(_ prefix: String, _ count: Int, _ behaviour: (Int) -> EchoUpstream.Behaviour = { _ in .init() }) async throws
    -> [EchoUpstream] {
    var started: [EchoUpstream] = []
    for i in 0..<count {
        var b = behaviour(i)
        b.name = "\(prefix)\(i)"
        started.append(try await EchoUpstream(b))
    }
    return started
}

func stopAll(_ upstreams: [EchoUpstream]) async {
    for u in upstreams { await u.stop() }
}
