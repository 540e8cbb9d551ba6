import MeshModel
import NIOCore
import NIOHTTP1
import XCTest

/// Allowed requests reach the upstream as sent and come back as it answered.
final class ForwardingTests: XCTestCase {
    func testAllowedRequestIsForwardedIntactWithOneMebibyteBothWays() async throws {
        let h = try await ProxyHarness.start()
        try await h.allow(nil)
        var payload = ByteBuffer()
        for i in 0..<(1 << 20) { payload.writeInteger(UInt8(truncatingIfNeeded: i &* 31 &+ 7)) }
        let sent = payload
        let (echo, big) = try await HTTPTestConnection.with(port: h.port) { c in
            let echo = try await c.send(.PUT, "/upload?x=1&y=%2F", headers: [
                ("x-custom", "one"), ("x-custom", "two"), ("te", "trailers"), ("keep-alive", "timeout=9"),
                ("connection", "keep-alive ,\tX-Drop-Me,"), ("x-drop-me", "1"),
            ], body: sent)
            let big = try await c.send(.GET, "/big/\(1 << 20)")
            return (echo, big)
        }
        XCTAssertEqual(echo.status, .ok)
        XCTAssertEqual(echo.body, sent, "the request body did not come back byte for byte")
        XCTAssertEqual(echo.headers.first(name: "x-seen-method"), "PUT")
        XCTAssertEqual(echo.headers.first(name: "x-seen-target"), "/upload?x=1&y=%2F")
        XCTAssertEqual(echo.headers.first(name: "x-seen-host"), "upstream.test")
        XCTAssertEqual(echo.headers.first(name: "x-seen-custom"), "one,two")
        XCTAssertEqual(echo.headers.first(name: "x-seen-hop-by-hop"), "", "hop-by-hop headers reached the upstream")
        XCTAssertEqual(echo.headers.first(name: "x-from-upstream"), "yes")
        XCTAssertFalse(echo.headers.contains(name: "keep-alive"), "the upstream's hop-by-hop header reached the client")
        XCTAssertEqual(big.status, .ok)
        XCTAssertEqual(big.body.readableBytes, 1 << 20)
        await h.stop()
    }

    func testTwoRequestsOnOneKeepAliveConnectionUseOneUpstreamConnection() async throws {
        let h = try await ProxyHarness.start()
        try await h.allow(nil)
        let statuses = try await HTTPTestConnection.with(port: h.port) { c in
            [try await c.send(.GET, "/one").status, try await c.send(.GET, "/two").status]
        }
        XCTAssertEqual(statuses, [.ok, .ok])
        XCTAssertEqual(h.upstream.connectionCount, 1)
        await h.stop()
    }

    func testPipelinedRequestsAreAnsweredInOrderAndHTTP10ClosesAfterTheResponse() async throws {
        let h = try await ProxyHarness.start()
        try await h.allow([HTTPRule(path: "/a|/c")])
        let answer = try await RawClient.exchange(port: h.port,
            "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        let statuses = answer.components(separatedBy: "\r\n").filter { $0.hasPrefix("HTTP/1.1 ") }
        XCTAssertEqual(statuses, ["HTTP/1.1 200 OK", "HTTP/1.1 403 Forbidden", "HTTP/1.1 200 OK"], answer)
        let targets = answer.components(separatedBy: "\r\n").filter { $0.lowercased().hasPrefix("x-seen-target") }
        XCTAssertEqual(targets.map { $0.lowercased() }, ["x-seen-target: /a", "x-seen-target: /c"])
        // The read ends only because the proxy closes after an HTTP/1.0 response.
        let old = try await RawClient.exchange(port: h.port, "GET /a HTTP/1.0\r\nHost: x\r\n\r\n")
        XCTAssertTrue(old.hasPrefix("HTTP/1.0 200"), old)
        await h.stop()
    }

    /// Pipelined requests with bodies, chunked and not, sent in one write: the proxy holds
    /// each until the previous response has ended, and every body reaches the upstream whole
    /// and in order, the refused one's discarded.
    func testPipelinedRequestsWithBodiesEachReachTheUpstreamWhole() async throws {
        let h = try await ProxyHarness.start()
        try await h.allow([HTTPRule(path: "/a|/c|/d")])
        let answer = try await RawClient.exchange(port: h.port,
            "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nfirst"
                + "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nsecret"
                + "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nthi\r\n2\r\nrd\r\n0\r\n\r\n"
                + "POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nConnection: close\r\n\r\nfourth")
        // A status line follows the previous response's body with no line break between.
        let statuses = answer.components(separatedBy: "HTTP/1.1 ").dropFirst().map { $0.prefix { $0 != "\r\n" } }
        XCTAssertEqual(statuses, ["200 OK", "403 Forbidden", "200 OK", "200 OK"], answer)
        let lines = answer.components(separatedBy: "\r\n")
        XCTAssertEqual(lines.filter { $0.lowercased().hasPrefix("x-seen-target") }.map { $0.lowercased() },
                       ["x-seen-target: /a", "x-seen-target: /c", "x-seen-target: /d"])
        for body in ["first", "third", "fourth"] { XCTAssertTrue(answer.contains(body), "\(body) not echoed: \(answer)") }
        XCTAssertFalse(answer.contains("secret"), answer)
        await h.stop()
    }

    func testDeniedRequestGets403AndTheConnectionServesTheNextRequest() async throws {
        let h = try await ProxyHarness.start()
        try await h.allow([HTTPRule(path: "/public")])
        let (denied, allowed) = try await HTTPTestConnection.with(port: h.port) { c in
            let denied = try await c.send(.POST, "/private", body: ByteBuffer(string: String(repeating: "x", count: 100_000)))
            let allowed = try await c.send(.GET, "/public")
            return (denied, allowed)
        }
        XCTAssertEqual(denied.status, .forbidden)
        XCTAssertEqual(denied.text, "Access denied\r\n")
        XCTAssertEqual(denied.headers.first(name: "content-type")?.hasPrefix("text/plain"), true)
        XCTAssertEqual(allowed.status, .ok)
        XCTAssertEqual(allowed.headers.first(name: "x-seen-target"), "/public")
        await h.stop()
    }

    func testUpgradeAndConnectAreRefusedWith501() async throws {
        let h = try await ProxyHarness.start()
        try await h.allow(nil)
        let upgrade = try await RawClient.exchange(port: h.port,
            "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        XCTAssertTrue(upgrade.hasPrefix("HTTP/1.1 501"), upgrade)
        let connect = try await RawClient.exchange(port: h.port, "CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n")
        XCTAssertTrue(connect.hasPrefix("HTTP/1.1 501"), connect)
        XCTAssertEqual(h.upstream.connectionCount, 0)
        await h.stop()
    }

    func testUpstreamDownGets502AndTheProxyKeepsServing() async throws {
        let closed = try await EchoUpstream()
        let deadAddress = closed.address
        await closed.stop()
        let h = try await ProxyHarness.start(destination: deadAddress)
        try await h.apply(ProxyHarness.config(generation: 1, port: deadAddress.port ?? 0, nil))
        // Bodies larger than one read: the proxy must go on reading them after the failure.
        let body = ByteBuffer(repeating: UInt8(ascii: "u"), count: 512 * 1024)
        let statuses = try await HTTPTestConnection.with(port: h.port) { c in
            [try await c.send(.POST, "/", body: body).status, try await c.send(.POST, "/", body: body).status]
        }
        XCTAssertEqual(statuses, [.badGateway, .badGateway])
        let metrics = try await ControlTestConnection.with(path: h.proxy.controlPath) { control in
            try await control.send(ProxyControlMessage(metricsRequest: 1))
            return try await control.next { $0.metrics != nil }.metrics?.text ?? ""
        }
        XCTAssertTrue(metrics.contains(#"mesh_proxy_upstream_errors_total{reason="connect_refused"} 2"#), metrics)
        await h.stop()
    }

    func testUpstreamSilentPastTheTimeoutGets504() async throws {
        let h = try await ProxyHarness.start { $0.upstreamTimeout = .milliseconds(300) }
        try await h.allow(nil)
        let (timedOut, next) = try await HTTPTestConnection.with(port: h.port) { c in
            (try await c.send(.GET, "/hang"), try await c.send(.GET, "/after"))
        }
        XCTAssertEqual(timedOut.status, .gatewayTimeout)
        XCTAssertEqual(next.status, .ok, "the connection should serve the next request on a fresh upstream connection")
        XCTAssertEqual(h.upstream.connectionCount, 2)
        await h.stop()
    }

    /// The connection's clocks are set again on every request and kept lazily (one task,
    /// moved on when it fires early): a clock set later must not run out at an earlier
    /// deadline. Requests 150 ms apart on one keep-alive connection, for longer than the idle
    /// timeout (300 ms), are all served; answers that each take 200 ms of a 300 ms upstream
    /// timeout are never cut off, though the first request's deadline passes mid-answer of
    /// the second.
    func testClocksSetAgainOnEveryRequestDoNotRunOutAtAnEarlierDeadline() async throws {
        let slow = try await EchoUpstream(.init(delay: .milliseconds(200)))
        let h = try await ProxyHarness.start(destination: slow.address) {
            $0.idleTimeout = .milliseconds(300)
            $0.upstreamTimeout = .milliseconds(300)
        }
        try await h.apply(ProxyHarness.config(generation: 1, port: slow.port, nil))
        let statuses = try await HTTPTestConnection.with(port: h.port) { c in
            var got: [HTTPResponseStatus] = []
            for _ in 0..<6 {
                got.append(try await c.send(.GET, "/").status)
                try await Task.sleep(for: .milliseconds(150))
            }
            return got
        }
        XCTAssertEqual(statuses, Array(repeating: .ok, count: 6))
        XCTAssertEqual(slow.connectionCount, 1, "the keep-alive connection upstream was not kept")
        await h.stop()
        await slow.stop()
    }

    /// Shutdown closes an idle keep-alive connection at once and lets the response under way
    /// finish, marked as the last (`connection: close`): the drain ends long before the
    /// grace period, which only a connection left open would wait out.
    func testShutdownClosesIdleConnectionsAndEndsBusyOnesAfterTheirResponse() async throws {
        let slow = try await EchoUpstream(.init(delay: .milliseconds(800)))
        let h = try await ProxyHarness.start(destination: slow.address)
        try await h.apply(ProxyHarness.config(generation: 1, port: slow.port, nil))
        let port = h.port
        async let idle = RawClient.exchange(port: port, "GET /idle HTTP/1.1\r\nHost: x\r\n\r\n")
        try await Task.sleep(for: .milliseconds(1500))   // answered by now, and idle since
        async let busy = RawClient.exchange(port: port, "GET /busy HTTP/1.1\r\nHost: x\r\n\r\n")
        try await Task.sleep(for: .milliseconds(300))    // at the upstream, not answered yet
        let started = ContinuousClock.now
        await h.proxy.shutdown(gracePeriod: .seconds(30))
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(10), "a connection was left for the grace period to close")
        let (idleAnswer, busyAnswer) = try await (idle, busy)
        XCTAssertTrue(idleAnswer.hasPrefix("HTTP/1.1 200"), idleAnswer)
        XCTAssertFalse(idleAnswer.lowercased().contains("connection: close"), idleAnswer)
        XCTAssertTrue(busyAnswer.hasPrefix("HTTP/1.1 200"), busyAnswer)
        XCTAssertTrue(busyAnswer.lowercased().contains("connection: close"), "the last response says so: \(busyAnswer)")
        await h.upstream.stop()
        await slow.stop()
        try? FileManager.default.removeItem(at: h.folder)
    }

    /// The proxy's own answer on a connection that then closes (the client asked for the
    /// close) is counted like any other.
    func testARefusalOnAClosingConnectionIsCounted() async throws {
        let h = try await ProxyHarness.start()
        try await h.allow([HTTPRule(path: "/ok")])
        let answer = try await RawClient.exchange(port: h.port, "GET /no HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        XCTAssertTrue(answer.hasPrefix("HTTP/1.1 403"), answer)
        let text = try await ControlTestConnection.with(path: h.proxy.controlPath) { control in
            try await control.send(ProxyControlMessage(metricsRequest: 1))
            return try await control.next { $0.metrics != nil }.metrics?.text ?? ""
        }
        let denied = text.split(separator: "\n").filter {
            $0.hasPrefix("mesh_proxy_http_requests_total{") && $0.contains(#"code="403""#) && $0.contains(#"verdict="denied""#)
        }
        XCTAssertEqual(denied.count, 1, text)
        XCTAssertTrue(denied.first?.hasSuffix(" 1") == true, "\(denied)")
        await h.stop()
    }
}
