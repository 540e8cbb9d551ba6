import MeshModel
import NIOCore
import XCTest

/// When the destination is a node endpoint, the upstream connection leaves from the
/// client's own address and port, so the receiving side sees (and polices) the client.
final class TransparentUpstreamTests: XCTestCase {
    func testUpstreamSeesTheClientsAddressAndPortWhenTheDestinationIsAnEndpoint() async throws {
        let h = try await ProxyHarness.start()
        var config = h.config(generation: 1, nil)
        config.endpoints = [ProxyEndpoint(ip: IPv4Address(0x7f00_0001), name: "web", namespace: "shop", identity: 1000)]
        let reply = try await h.apply(config)
        XCTAssertEqual(reply.configApplied, 1)
        // In production the client is in its own namespace; here it must share its port.
        let (response, clientPort) = try await HTTPTestConnection.with(port: h.port, reuseAddress: true) { c in
            (try await c.send(.GET, "/"), c.localPort)
        }
        // Seen once in CI: a 502 whose reason went unlogged; the proxy's log says it now.
        XCTAssertEqual(response.status, .ok, h.log.text)
        XCTAssertEqual(response.headers.first(name: "x-seen-peer"), "127.0.0.1:\(clientPort)")
        await h.stop()
    }

    func testUpstreamConnectionIsOrdinaryWhenTheDestinationIsNotAnEndpoint() async throws {
        let h = try await ProxyHarness.start()
        try await h.allow(nil)
        let (response, clientPort) = try await HTTPTestConnection.with(port: h.port, reuseAddress: true) { c in
            (try await c.send(.GET, "/"), c.localPort)
        }
        XCTAssertEqual(response.status, .ok)
        XCTAssertNotEqual(response.headers.first(name: "x-seen-peer"), "127.0.0.1:\(clientPort)")
        await h.stop()
    }
}
