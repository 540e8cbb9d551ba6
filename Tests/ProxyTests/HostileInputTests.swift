import MeshModel
import NIOCore
import XCTest

/// Input meant to hurt: each case gets its answer and a closed connection, and the next
/// ordinary client is still served.
final class HostileInputTests: XCTestCase {
    private func assertStillServing(_ h: ProxyHarness, file: StaticString = #filePath, line: UInt = #line) async throws {
        let response = try await HTTPTestConnection.with(port: h.port) { c in try await c.send(.GET, "/after") }
        XCTAssertEqual(response.status, .ok, "a normal client was not served afterwards", file: file, line: line)
    }

    private func hostileCount(_ h: ProxyHarness, _ reason: String) async throws -> String {
        let text = try await ControlTestConnection.with(path: h.proxy.controlPath) { control in
            try await control.send(ProxyControlMessage(metricsRequest: 1))
            return try await control.next { $0.metrics != nil }.metrics?.text ?? ""
        }
        return text.split(separator: "\n").first { $0.hasPrefix("mesh_proxy_hostile_requests_total{reason=\"\(reason)\"}") }
            .map(String.init) ?? "none"
    }

    /// An unparsable request pipelined after a good one: the good one's response comes
    /// first, then the 400 and the close. Answering at once would give the client a 400 in
    /// place of the response to a request the upstream did carry out.
    func testAnUnparsableRequestAfterAGoodOneIsAnsweredAfterIt() async throws {
        let h = try await ProxyHarness.start()
        try await h.allow(nil)
        let answer = try await RawClient.exchange(port: h.port, "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1 extra\r\n\r\n")
        let statuses = answer.components(separatedBy: "HTTP/1.1 ").dropFirst().map { $0.prefix { $0 != "\r\n" } }
        XCTAssertEqual(statuses, ["200 OK", "400 Bad Request"], answer)
        XCTAssertTrue(answer.lowercased().contains("x-seen-target: /a"), answer)
        let count = try await hostileCount(h, "bad_request")
        XCTAssertTrue(count.hasSuffix(" 1"), count)
        try await assertStillServing(h)
        await h.stop()
    }

    func testBadRequestLineGets400AndClose() async throws {
        let h = try await ProxyHarness.start()
        try await h.allow(nil)
        let answer = try await RawClient.exchange(port: h.port, "GET / HTTP/1.1 extra\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
        XCTAssertTrue(answer.hasPrefix("HTTP/1.1 400"), answer)
        XCTAssertEqual(answer.components(separatedBy: "HTTP/1.1 ").count, 2, "only the one 400, then close: \(answer)")
        let garbage = try await RawClient.exchange(port: h.port, "\u{1}\u{2}\u{3} nonsense\r\n\r\n")
        XCTAssertTrue(garbage.hasPrefix("HTTP/1.1 400"), garbage)
        let count = try await hostileCount(h, "bad_request")
        XCTAssertTrue(count.hasSuffix(" 2"), count)
        XCTAssertEqual(h.upstream.connectionCount, 0)
        try await assertStillServing(h)
        await h.stop()
    }

    func testOversizedHeadGets431AndClose() async throws {
        let h = try await ProxyHarness.start { $0.maxHeadBytes = 16 * 1024 }
        try await h.allow(nil)
        let big = String(repeating: "a", count: 8 * 1024)
        let head = "GET / HTTP/1.1\r\nHost: a\r\n" + (0..<4).map { "X-Big-\($0): \(big)\r\n" }.joined() + "\r\n"
        let answer = try await RawClient.exchange(port: h.port, head)
        XCTAssertTrue(answer.hasPrefix("HTTP/1.1 431"), answer)
        let longLine = try await RawClient.exchange(port: h.port, "GET /" + String(repeating: "p", count: 40 * 1024) + " HTTP/1.1\r\n")
        XCTAssertTrue(longLine.hasPrefix("HTTP/1.1 431"), "a request line alone counts toward the limit: \(longLine)")
        let count = try await hostileCount(h, "header_too_large")
        XCTAssertTrue(count.hasSuffix(" 2"), count)
        try await assertStillServing(h)
        await h.stop()
    }

    func testContentLengthWithTransferEncodingGets400AndClose() async throws {
        let h = try await ProxyHarness.start()
        try await h.allow(nil)
        let smuggle = "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
        for head in ["POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                     "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"] {
            let answer = try await RawClient.exchange(port: h.port, head + smuggle)
            XCTAssertTrue(answer.hasPrefix("HTTP/1.1 400"), answer)
            XCTAssertFalse(answer.contains("200 OK"), "a smuggled request was served: \(answer)")
        }
        XCTAssertEqual(h.upstream.connectionCount, 0, "an ambiguous request reached the upstream")
        // NIO names only the Transfer-Encoding-first order precisely; the other counts as bad_request.
        let count = try await hostileCount(h, "ambiguous_length")
        XCTAssertTrue(count.hasSuffix(" 1"), count)
        try await assertStillServing(h)
        await h.stop()
    }

    func testSlowHeadIsCutOffByTheHeaderTimeout() async throws {
        let h = try await ProxyHarness.start { $0.headerTimeout = .milliseconds(300) }
        try await h.allow(nil)
        // Half a head, then nothing: the proxy closes; the read below ends when it does.
        let answer = try await RawClient.exchange(port: h.port, "GET / HTTP/1.1\r\nHost: a\r\nX-Slow: 1")
        XCTAssertEqual(answer, "")
        let count = try await hostileCount(h, "header_timeout")
        XCTAssertTrue(count.hasSuffix(" 1"), count)
        try await assertStillServing(h)
        await h.stop()
    }

    func testIdleKeepAliveConnectionIsClosed() async throws {
        let h = try await ProxyHarness.start { $0.idleTimeout = .milliseconds(300) }
        try await h.allow(nil)
        let answer = try await RawClient.exchange(port: h.port, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        XCTAssertTrue(answer.hasPrefix("HTTP/1.1 200"), "the first request is served, then the idle connection closes: \(answer)")
        await h.stop()
    }

    func testConnectionsBeyondTheCapAreClosedAtOnce() async throws {
        let h = try await ProxyHarness.start { $0.maxConnections = 1 }
        try await h.allow(nil)
        try await HTTPTestConnection.with(port: h.port) { first in
            let got1 = try await first.send(.GET, "/").status
            XCTAssertEqual(got1, .ok)
            let second = try await RawClient.exchange(port: h.port, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            XCTAssertEqual(second, "", "a connection over the cap was served")
        }
        let count = try await hostileCount(h, "too_many_connections")
        XCTAssertTrue(count.hasSuffix(" 1"), count)
        await h.stop()
    }

    /// HTTP/2 that is not: the preface, then bytes that are no frame. NIOHTTP2 ends the
    /// connection (GOAWAY), nothing reaches the upstream, and the next client is served.
    func testGarbageAfterTheHTTP2PrefaceEndsTheConnection() async throws {
        let h = try await ProxyHarness.start()
        try await h.allow(nil)
        let preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        let started = ContinuousClock.now
        let answer = try await RawClient.exchange(port: h.port, [preface, String(repeating: "\u{7f}garbage", count: 64)])
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(5), "closed by the proxy, not by the test's watchdog")
        let count = try await hostileCount(h, "bad_request")
        XCTAssertTrue(count.hasSuffix(" 1"), count)
        XCTAssertFalse(answer.contains("HTTP/1.1"), "an HTTP/2 connection was answered as HTTP/1.1: \(answer.prefix(80))")
        XCTAssertEqual(h.upstream.connectionCount, 0)
        try await assertStillServing(h)
        await h.stop()
    }

    /// A preface that stops half-way is as slow as a slow head: closed at the header timeout.
    func testAHalfPrefaceIsCutOffByTheHeaderTimeout() async throws {
        let h = try await ProxyHarness.start { $0.headerTimeout = .milliseconds(300) }
        try await h.allow(nil)
        let started = ContinuousClock.now
        let answer = try await RawClient.exchange(port: h.port, "PRI * HTTP/2.0\r\n")
        XCTAssertEqual(answer, "")
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(5), "closed by the proxy, not by the test's watchdog")
        try await assertStillServing(h)
        await h.stop()
    }

    /// An HTTP/2 connection with no stream open is closed at the idle timeout, as an idle
    /// HTTP/1.1 keep-alive connection is: opening connections and sending nothing holds no
    /// slot for good.
    func testAnHTTP2ConnectionWithNoStreamIsClosedWhenIdle() async throws {
        let h = try await ProxyHarness.start { $0.idleTimeout = .milliseconds(300) }
        try await h.allow(nil)
        // The preface and an empty SETTINGS frame (length 0, type 4, flags 0, stream 0).
        let settings = String(decoding: [0, 0, 0, 4, 0, 0, 0, 0, 0] as [UInt8], as: UTF8.self)
        let started = ContinuousClock.now
        let answer = try await RawClient.exchange(port: h.port, ["PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", settings])
        XCTAssertFalse(answer.isEmpty, "the proxy spoke HTTP/2 (its SETTINGS) before closing")
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(5), "closed by the proxy, not by the test's watchdog")
        try await assertStillServing(h)
        await h.stop()
    }
}
