import Foundation
import MeshModel
import NIOCore
import NIOHTTP1
import XCTest

/// Routed requests are retried within the frontend's budget and bounded by the rule's
/// timeouts, on real backends that fail or stall.
final class RetryTimeoutTests: XCTestCase {
    private let service = #"destination_service="shop/web""#

    func testRetriesHideABackendFailingOneRequestInThreeAndEventsNameTheAttempts() async throws {
        let p = try await RoutedProxy.start()
        let flaky = try await EchoUpstream(.init(name: "flaky", failEvery: 3))
        try await p.route([RoutedProxy.rule("web", [RoutedProxy.group("shop/web", [flaky])],
                                            retry: .init(attempts: 2, backoffSeconds: 0, codes: [503]))])
        let events = try await ControlTestConnection.with(path: p.harness.proxy.controlPath) { control in
            try await control.send(ProxyControlMessage(events: true))
            try await HTTPTestConnection.with(port: p.port) { c in
                for i in 0..<60 {
                    // Bodies too: a retry must send the request again whole.
                    let r = try await c.send(.POST, "/order", body: ByteBuffer(string: "order \(i)"))
                    XCTAssertEqual(r.status, .ok)
                    XCTAssertEqual(r.text, "order \(i)")
                }
            }
            var events: [L7Event] = []
            while events.count < 60 {
                if let event = try await control.next(where: { $0.event != nil }).event { events.append(event) }
            }
            return events
        }
        // Failures fall on the server's 3rd, 6th, … requests, each retried once at once; the
        // 60 successes are the numbers up to 89 that are not multiples of 3.
        XCTAssertEqual(flaky.requestCount, 89)
        try await p.expect("mesh_proxy_retries_total", service, 29)
        XCTAssertEqual(events.filter { $0.attempts == 2 }.count, 29)
        XCTAssertEqual(events.filter { $0.attempts == 1 }.count, 31)
        let event = try XCTUnwrap(events.first)
        XCTAssertEqual(event.service, "shop/web")
        XCTAssertEqual(event.routeRule, "shop/web-route rules[web]")
        XCTAssertEqual(event.backend, "shop/flaky")
        XCTAssertEqual(event.destination, "127.0.0.1:\(flaky.port)")
        XCTAssertEqual(event.status, 200)
        await flaky.stop()
        await p.stop()
    }

    func testWithTheBudgetSpentFailuresReachTheClientAsTheBackendSentThem() async throws {
        let p = try await RoutedProxy.start()
        let flaky = try await EchoUpstream(.init(name: "flaky", failEvery: 3))
        try await p.route([RoutedProxy.rule("web", [RoutedProxy.group("shop/web", [flaky])],
                                            retry: .init(attempts: 2, backoffSeconds: 0, codes: [503]))],
                          budget: RetryBudget(percent: 0, minPerSecond: 0, windowSeconds: 10))
        let responses = try await HTTPTestConnection.with(port: p.port) { c in
            var responses: [TestResponse] = []
            for _ in 0..<60 { responses.append(try await c.send(.GET, "/")) }
            return responses
        }
        let failed = responses.filter { $0.status == .serviceUnavailable }
        XCTAssertEqual(failed.count, 20)
        XCTAssertEqual(failed.first?.headers.first(name: "x-served-by"), "flaky", "the backend's own response, as it sent it")
        XCTAssertEqual(flaky.requestCount, 60)
        try await p.expect("mesh_proxy_retry_budget_exhausted_total", service, 20)
        try await p.expect("mesh_proxy_retries_total", service, 0)
        await flaky.stop()
        await p.stop()
    }

    func testRequestTimeoutAnswers504BeforeTheSlowBackendWouldHaveAnswered() async throws {
        let p = try await RoutedProxy.start()
        let slow = try await EchoUpstream(.init(name: "slow", delay: .seconds(3)))
        let fast = try await EchoUpstream(.init(name: "fast"))
        try await p.route([
            RoutedProxy.rule("slow", [RoutedProxy.group("shop/slow", [slow])], timeouts: .init(request: 0.3)),
            RoutedProxy.rule("fast", [RoutedProxy.group("shop/fast", [fast])]),
        ], matches: [
            ProxyRouteMatch(match: HTTPRoute.Match(path: .init(type: .exact, value: "/slow")), rule: 0),
            ProxyRouteMatch(match: HTTPRoute.Match(), rule: 1),
        ])
        let clock = ContinuousClock()
        let started = clock.now
        let (timedOut, waited, next) = try await HTTPTestConnection.with(port: p.port) { c in
            let timedOut = try await c.send(.GET, "/slow")
            let waited = clock.now - started
            return (timedOut, waited, try await c.send(.GET, "/"))
        }
        XCTAssertEqual(timedOut.status, .gatewayTimeout)
        XCTAssertEqual(timedOut.text, "Request timed out\r\n")
        // Behaviour, not speed: the answer came from the proxy's clock, not the backend's.
        XCTAssertLessThan(waited, .seconds(3), "the 504 waited for the backend")
        XCTAssertEqual(next.status, .ok, "the connection serves the next request")
        try await p.expect("mesh_proxy_timeouts_total", service + #",kind="request""#, 1)
        await stopAll([slow, fast])
        await p.stop()
    }

    func testEachAttemptHasTheBackendRequestLimitAndTheLastFailureReachesTheClient() async throws {
        let p = try await RoutedProxy.start()
        let stalled = try await EchoUpstream(.init(name: "stalled", delay: .seconds(3)))
        try await p.route([RoutedProxy.rule("web", [RoutedProxy.group("shop/web", [stalled])],
                                            timeouts: .init(request: 10, backendRequest: 0.2),
                                            retry: .init(attempts: 1, backoffSeconds: 0.05, codes: []))])
        let response = try await HTTPTestConnection.with(port: p.port) { c in try await c.send(.GET, "/") }
        XCTAssertEqual(response.status, .gatewayTimeout)
        XCTAssertEqual(stalled.requestCount, 2, "the timed-out attempt was retried once")
        try await p.expect("mesh_proxy_timeouts_total", service + #",kind="backend_request""#, 2)
        try await p.expect("mesh_proxy_timeouts_total", service + #",kind="request""#, 0)
        try await p.expect("mesh_proxy_retries_total", service, 1)
        await stalled.stop()
        await p.stop()
    }

    func testABodyLargerThanWhatIsKeptIsNotRetried() async throws {
        let p = try await RoutedProxy.start()
        let flaky = try await EchoUpstream(.init(name: "flaky", failEvery: 1))
        try await p.route([RoutedProxy.rule("web", [RoutedProxy.group("shop/web", [flaky])],
                                            retry: .init(attempts: 3, backoffSeconds: 0, codes: [503]))])
        let (small, large) = try await HTTPTestConnection.with(port: p.port) { c in
            (try await c.send(.POST, "/", body: ByteBuffer(repeating: 1, count: 1000)),
             try await c.send(.POST, "/", body: ByteBuffer(repeating: 2, count: 100 * 1024)))
        }
        XCTAssertEqual(small.status, .serviceUnavailable)
        XCTAssertEqual(large.status, .serviceUnavailable)
        XCTAssertEqual(large.body.readableBytes, 100 * 1024, "the backend's response, echoing the whole body")
        XCTAssertEqual(flaky.requestCount, 4 + 1, "the small body tried 4 times, the large one once")
        await flaky.stop()
        await p.stop()
    }
}
