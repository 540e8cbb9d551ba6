import Foundation
import MeshModel
import NIOCore
import NIOHTTP1
import XCTest

/// meshd's view of the proxy: greeting, configuration, events and metrics on the socket.
final class ControlSocketTests: XCTestCase {
    func testHelloSocketModeAndConfigApplied() async throws {
        let h = try await ProxyHarness.start()
        let path = h.proxy.controlPath
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        XCTAssertEqual((attributes[.posixPermissions] as? NSNumber)?.intValue, 0o600)
        let folder = (path as NSString).deletingLastPathComponent
        let folderAttributes = try FileManager.default.attributesOfItem(atPath: folder)
        XCTAssertEqual((folderAttributes[.posixPermissions] as? NSNumber)?.intValue, 0o700)

        try await ControlTestConnection.with(path: path) { control in
            let hello = try await control.next().hello
            XCTAssertEqual(hello?.pid, getpid())
            XCTAssertEqual(hello.map { Int($0.port) }, h.port)
            XCTAssertEqual(hello?.generation, 0)
            try await control.send(ProxyControlMessage(config: h.config(generation: 5, nil)))
            let got1 = try await control.next().configApplied
            XCTAssertEqual(got1, 5)
        }
        // The next meshd learns what is in force from the greeting.
        try await ControlTestConnection.with(path: path) { control in
            let got2 = try await control.next().hello?.generation
            XCTAssertEqual(got2, 5)
        }
        await h.stop()
    }

    /// A configuration may keep the ipcache the connection's last one carried (protocol
    /// 3): peers are judged by that ipcache until one that carries another comes; on a
    /// connection that carried none, such a configuration is refused.
    func testAConfigurationThatKeepsTheIPCacheJudgesPeersByTheLastOneCarried() async throws {
        let h = try await ProxyHarness.start()
        // Only identity 77 may send, and the ipcache says loopback is 77.
        func config(_ generation: UInt64, ipcache: [ProxyIPCacheEntry], unchanged: Bool? = nil) -> ProxyConfig {
            var c = h.config(generation: generation, nil)
            c.l7[0].rules[0].peers = [77]
            c.ipcache = ipcache
            c.ipcacheUnchanged = unchanged
            return c
        }
        let loopback = [ProxyIPCacheEntry(prefix: try IPv4CIDR(parsing: "127.0.0.0/8"), identity: 77)]
        func status() async throws -> HTTPResponseStatus {
            try await HTTPTestConnection.with(port: h.port) { c in try await c.send(.GET, "/").status }
        }
        try await ControlTestConnection.with(path: h.proxy.controlPath) { control in
            _ = try await control.next { $0.hello != nil }
            for (generation, c, expected) in [(1, config(1, ipcache: loopback), HTTPResponseStatus.ok),
                                              (2, config(2, ipcache: [], unchanged: true), .ok),
                                              (3, config(3, ipcache: []), .forbidden),
                                              (4, config(4, ipcache: [], unchanged: true), .forbidden),
                                              (5, config(5, ipcache: loopback), .ok)] as [(UInt64, ProxyConfig, HTTPResponseStatus)] {
                try await control.send(ProxyControlMessage(config: c))
                let applied = try await control.next { $0.configApplied != nil || $0.configRejected != nil }.configApplied
                XCTAssertEqual(applied, generation, "generation \(generation)")
                let got = try await status()
                XCTAssertEqual(got, expected, "generation \(generation)")
            }
        }
        try await ControlTestConnection.with(path: h.proxy.controlPath) { control in
            _ = try await control.next { $0.hello != nil }
            try await control.send(ProxyControlMessage(config: config(6, ipcache: [], unchanged: true)))
            let reply = try await control.next { $0.configApplied != nil || $0.configRejected != nil }
            XCTAssertNil(reply.configApplied)
            XCTAssertTrue(reply.configRejected?.reason.contains("this connection holds none") ?? false, "\(reply)")
            XCTAssertEqual(reply.configRejected?.ipcacheMissing, true, "meshd is told to send it whole")
            // A line that cannot be read (a half-written one joined to the next) may have
            // been a configuration: the ipcache carried before it is not kept.
            try await control.send(ProxyControlMessage(config: config(6, ipcache: loopback)))
            _ = try await control.next { $0.configApplied != nil }
            try await control.sendRaw("{\"config\":{\"generation\":7,\"endp\n")
            try await control.send(ProxyControlMessage(config: config(8, ipcache: [], unchanged: true)))
            let after = try await control.next { $0.configApplied != nil || $0.configRejected != nil }
            XCTAssertEqual(after.configRejected?.ipcacheMissing, true, "\(after)")
        }
        XCTAssertEqual(h.proxy.generation, 6, "the refused configurations changed nothing")
        await h.stop()
    }

    func testEventsForEveryVerdictAndMetricsCountTheRequestsSent() async throws {
        let h = try await ProxyHarness.start()
        try await ControlTestConnection.with(path: h.proxy.controlPath) { control in
            _ = try await control.next { $0.hello != nil }
            try await control.send(ProxyControlMessage(config: h.config(generation: 1, [HTTPRule(method: "GET", path: "/ok.*")])))
            _ = try await control.next { $0.configApplied != nil }
            try await control.send(ProxyControlMessage(events: true))
            // A metrics round trip proves the `events` line before it was handled.
            try await control.send(ProxyControlMessage(metricsRequest: 1))
            _ = try await control.next { $0.metrics != nil }

            try await HTTPTestConnection.with(port: h.port) { c in
                var statuses: [HTTPResponseStatus] = []
                for _ in 0..<3 { statuses.append(try await c.send(.GET, "/ok").status) }
                for _ in 0..<2 { statuses.append(try await c.send(.DELETE, "/ok").status) }
                statuses.append(try await c.send(.PROPFIND, "/ok").status)
                XCTAssertEqual(statuses, [.ok, .ok, .ok, .forbidden, .forbidden, .forbidden])
            }
            // llhttp refuses methods it does not know (400), so PROPFIND stands for "other".
            var events: [L7Event] = []
            while events.count < 6 {
                if let event = try await control.next(where: { $0.event != nil }).event { events.append(event) }
            }
            XCTAssertEqual(events.map(\.verdict), [.forwarded, .forwarded, .forwarded, .denied, .denied, .denied])
            XCTAssertEqual(events.map(\.status), [200, 200, 200, 403, 403, 403])
            XCTAssertEqual(events.first?.path, "/ok")
            XCTAssertEqual(events.first?.destination, "127.0.0.1:\(h.upstreamPort)")
            XCTAssertEqual(events.first?.ruleID, 7)
            XCTAssertEqual(events.last?.ruleID, 99)
            XCTAssertEqual(events.last?.rule, "test default deny")

            try await control.send(ProxyControlMessage(metricsRequest: 42))
            let reply = try await control.next { $0.metrics != nil }.metrics
            XCTAssertEqual(reply?.id, 42)
            let text = reply?.text ?? ""
            let labels = #"source_namespace="",source_workload="world",destination_namespace="",destination_workload="world""#
            for (method, code, verdict, count) in [("GET", 200, "forwarded", 3), ("DELETE", 403, "denied", 2),
                                                   ("other", 403, "denied", 1)] {
                let line = #"mesh_proxy_http_requests_total{\#(labels),method="\#(method)",code="\#(code)",verdict="\#(verdict)"} \#(count)"#
                XCTAssertTrue(text.contains(line), "missing \(line) in\n\(text)")
            }
            XCTAssertTrue(text.contains("mesh_proxy_config_generation 1"), text)
            XCTAssertTrue(text.contains("mesh_proxy_connections_total"), text)
            XCTAssertTrue(text.contains("mesh_proxy_http_request_duration_seconds_bucket"), text)
        }
        await h.stop()
    }

    func testANewerControlConnectionReplacesTheOlderOne() async throws {
        let h = try await ProxyHarness.start()
        try await ControlTestConnection.with(path: h.proxy.controlPath) { older in
            _ = try await older.next { $0.hello != nil }
            try await h.allow(nil, generation: 3)
            // The older connection is closed by the proxy: reading it ends.
            do {
                _ = try await older.next { _ in false }
                XCTFail("the older control connection stayed open")
            } catch is ConnectionClosed {}
        }
        XCTAssertEqual(h.proxy.generation, 3)
        await h.stop()
    }
}
