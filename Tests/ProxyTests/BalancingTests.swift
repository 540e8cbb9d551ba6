import MeshModel
import NIOCore
import NIOHTTP1
import XCTest

/// Routed requests are balanced per request: weighted between backend groups, by power of
/// two choices over peak-EWMA latency within a group, around ejected endpoints and within
/// the pending limit.
final class BalancingTests: XCTestCase {
    func testNinetyTenSplitOverTwoThousandRequestsOnTwoKeepAliveConnections() async throws {
        let p = try await RoutedProxy.start()
        let stable = try await EchoUpstream(.init(name: "stable"))
        let canary = try await EchoUpstream(.init(name: "canary"))
        try await p.route([RoutedProxy.rule("split", [RoutedProxy.group("shop/stable", weight: 90, [stable]),
                                                      RoutedProxy.group("shop/canary", weight: 10, [canary])])])
        for _ in 0..<2 {
            try await HTTPTestConnection.with(port: p.port) { c in
                for _ in 0..<1000 {
                    let status = try await c.send(.GET, "/").status
                    XCTAssertEqual(status, .ok)
                }
            }
        }
        XCTAssertEqual(stable.requestCount + canary.requestCount, 2000)
        // 10% ± 3 points: 4.5 standard deviations of a fair 2000-draw binomial.
        XCTAssertTrue((140...260).contains(canary.requestCount), "canary got \(canary.requestCount) of 2000")
        XCTAssertEqual(stable.connectionCount, 2)
        XCTAssertEqual(canary.connectionCount, 2)
        // One request family; routed series carry the frontend's Service and the backend.
        let labels = #"source_namespace="",source_workload="world",destination_namespace="shop","#
            + #"destination_workload="canary",destination_service="shop/web",method="GET",code="200",verdict="forwarded""#
        let counted = try await p.metric("mesh_proxy_http_requests_total", labels)
        XCTAssertEqual(Int(counted), canary.requestCount)
        await stopAll([stable, canary])
        await p.stop()
    }

    func testPowerOfTwoChoicesSendsMostRequestsToTheFastBackend() async throws {
        let p = try await RoutedProxy.start()
        let slow = try await EchoUpstream(.init(name: "slow", delay: .milliseconds(50)))
        let fast = try await EchoUpstream(.init(name: "fast"))
        try await p.route([RoutedProxy.rule("web", [RoutedProxy.group("shop/web", [slow, fast])])])
        try await HTTPTestConnection.with(port: p.port) { c in
            for _ in 0..<100 { _ = try await c.send(.GET, "/") }
        }
        XCTAssertEqual(slow.requestCount + fast.requestCount, 100)
        XCTAssertGreaterThanOrEqual(fast.requestCount, 90, "slow \(slow.requestCount), fast \(fast.requestCount)")
        await stopAll([slow, fast])
        await p.stop()
    }

    func testRequestsOverOneKeepAliveConnectionSpreadOverThreeBackendsEachOverOneConnection() async throws {
        let p = try await RoutedProxy.start()
        let servers = try await backends("web", 3)
        try await p.route([RoutedProxy.rule("web", [RoutedProxy.group("shop/web", servers)])])
        let servedBy = try await HTTPTestConnection.with(port: p.port) { c in
            var seen: [String: Int] = [:]
            for _ in 0..<600 { seen[try await c.send(.GET, "/").headers.first(name: "x-served-by") ?? "", default: 0] += 1 }
            return seen
        }
        XCTAssertEqual(Set(servedBy.keys), ["web0", "web1", "web2"], "\(servedBy)")
        XCTAssertEqual(servers.map(\.requestCount).reduce(0, +), 600)
        XCTAssertEqual(servers.map(\.connectionCount), [1, 1, 1], "each backend's connection is kept and reused")
        await stopAll(servers)
        await p.stop()
    }

    func testARefusingBackendIsEjectedAndLaterRequestsAllGoToTheHealthyOne() async throws {
        let p = try await RoutedProxy.start()
        // The healthy backend is slower than the refusing one's unmeasured estimate, so only
        // ejection keeps requests away from the refusing one.
        let healthy = try await EchoUpstream(.init(name: "healthy", delay: .milliseconds(50)))
        let refusing = try await EchoUpstream(.init(name: "refusing"))
        await refusing.stop()
        var resilience = ProxyResilience.default
        resilience.consecutiveFailures = 3
        resilience.baseEjectionSeconds = 60
        resilience.maxEjectionSeconds = 120
        try await p.route([RoutedProxy.rule("web", [RoutedProxy.group("shop/web", [refusing, healthy])],
                                            retry: .init(attempts: 1, backoffSeconds: 0, codes: [503]))],
                          resilience: resilience)
        let ejections = #"destination_service="shop/web""#
        try await HTTPTestConnection.with(port: p.port) { c in
            var sent = 0
            while try await p.metric("mesh_proxy_ejections_total", ejections) < 1 {
                sent += 1
                XCTAssertLessThan(sent, 20, "the refusing backend was never ejected")
                if sent >= 20 { return }
                let status = try await c.send(.GET, "/").status
                XCTAssertEqual(status, .ok, "the retry should have hidden the refusal")
            }
            let retriesBefore = try await p.metric("mesh_proxy_retries_total", ejections)
            XCTAssertEqual(retriesBefore, 3)
            for _ in 0..<5 {
                let status = try await c.send(.GET, "/").status
                XCTAssertEqual(status, .ok)
            }
            let retriesAfter = try await p.metric("mesh_proxy_retries_total", ejections)
            XCTAssertEqual(retriesAfter, retriesBefore, "a request went to the ejected backend")
        }
        try await p.expect("mesh_proxy_upstream_errors_total", #"reason="connect_refused""#, 3)
        await healthy.stop()
        await p.stop()
    }

    func testWithEveryEndpointAtItsPendingLimitTheRequestGets503AtOnce() async throws {
        let p = try await RoutedProxy.start()
        let busy = try await EchoUpstream(.init(name: "busy", delay: .seconds(1)))
        var resilience = ProxyResilience.default
        resilience.maxPendingPerEndpoint = 1
        try await p.route([RoutedProxy.rule("web", [RoutedProxy.group("shop/web", [busy])])], resilience: resilience)
        let port = p.port
        let first = Task { try await HTTPTestConnection.with(port: port) { c in try await c.send(.GET, "/slow").status } }
        // Wait until the backend holds the first request.
        while busy.requestCount < 1 { try await Task.sleep(for: .milliseconds(5)) }
        let refused = try await HTTPTestConnection.with(port: p.port) { c in try await c.send(.GET, "/other") }
        XCTAssertEqual(refused.status, .serviceUnavailable)
        XCTAssertEqual(refused.text, "Every backend is at its request limit\r\n")
        let firstStatus = try await first.value
        XCTAssertEqual(firstStatus, .ok)
        XCTAssertEqual(busy.requestCount, 1)
        try await p.expect("mesh_proxy_pending_limit_total", #"destination_service="shop/web""#, 1)
        // The slot is free again once the first response ended.
        let after = try await HTTPTestConnection.with(port: p.port) { c in try await c.send(.GET, "/").status }
        XCTAssertEqual(after, .ok)
        await busy.stop()
        await p.stop()
    }
}
