import Foundation
import XCTest

/// Real traffic between endpoints shows up, byte for byte, in /metrics.
final class CountersTests: XCTestCase {
    var node: TestNode!

    override func setUpWithError() throws {
        node = try TestNode()
        // Counted on the veths: keep traffic on the tc path.
        try node.start(["--socket-redirect", "off"])
        try node.ctlOK("endpoint", "create", "client", "--labels", "app=client")
        try node.ctlOK("endpoint", "create", "server", "--labels", "app=server,tier=backend")
    }

    override func tearDown() { node?.destroy() }

    func counters() throws -> [String: Double] {
        let text = try node.scrape()
        var out: [String: Double] = [:]
        for ep in ["client", "server"] {
            for dir in ["ingress", "egress"] {
                out["\(ep).\(dir).bytes"] = TestNode.sample(in: text, "mesh_endpoint_forwarded_bytes_total", ["endpoint": ep, "direction": dir]) ?? 0
                out["\(ep).\(dir).packets"] = TestNode.sample(in: text, "mesh_endpoint_forwarded_packets_total", ["endpoint": ep, "direction": dir]) ?? 0
            }
        }
        return out
    }

    func testTCPBytesBetweenEndpointsMatchCounters() throws {
        let server = try node.ctlOK("endpoint", "get", "server", "-o", "json")
        let ip = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(server.utf8)) as? [String: Any])?["ipv4"] as? String)
        let traffic = Traffic(node: node)
        // Warm up ARP so the measured window holds only the transfer.
        _ = traffic.node.ctl("endpoint", "exec", "client", "--", "ping", "-c", "1", "-W", "1", ip)
        let before = try counters()
        let payload = 3_000_000
        let sink = try traffic.start(in: "server", ["tcp-sink", "--port", "7001"], waitReady: true)
        let sent = try traffic.run(in: "client", ["tcp-send", "--host", ip, "--port", "7001", "--bytes", "\(payload)", "--seed", "7"])
        let received = try sink.result()
        XCTAssertEqual(received["bytes"] as? Int, payload)
        XCTAssertEqual(received["sha256"] as? String, sent["sha256"] as? String)
        let after = try counters()
        let d = { (k: String) in (after[k] ?? 0) - (before[k] ?? 0) }
        // Every payload byte crossed the client's veth outwards and the server's inwards;
        // the rest is TCP/IP/Ethernet headers (GSO frames carry one header per frame).
        for k in ["client.egress.bytes", "server.ingress.bytes"] {
            XCTAssertGreaterThanOrEqual(d(k), Double(payload), k)
            XCTAssertLessThanOrEqual(d(k), Double(payload) * 1.06 + 20_000, k)
        }
        // The reverse direction carried only ACKs.
        XCTAssertLessThan(d("server.egress.bytes"), Double(payload) * 0.05)
        XCTAssertEqual(d("client.egress.bytes"), d("server.ingress.bytes"), accuracy: 200)
        XCTAssertGreaterThan(d("client.egress.packets"), 0)
    }

    /// Datagrams the node's own IP stack forwarded (Ip: ForwDatagrams, /proc/net/snmp).
    func nodeForwarded() throws -> Double {
        let lines = node.inNode("cat", "/proc/net/snmp").stdout.split(separator: "\n").filter { $0.hasPrefix("Ip:") }
        guard lines.count >= 2 else { throw XCTSkip("no Ip: lines in /proc/net/snmp") }
        let names = lines[0].split(separator: " "), values = lines[1].split(separator: " ")
        return try XCTUnwrap(names.firstIndex(of: "ForwDatagrams").flatMap { Double(values[$0]) })
    }

    func testUDPDatagramsMatchCountersExactly() throws {
        let server = try node.ctlOK("endpoint", "get", "server", "-o", "json")
        let ip = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(server.utf8)) as? [String: Any])?["ipv4"] as? String)
        let traffic = Traffic(node: node)
        _ = traffic.node.ctl("endpoint", "exec", "client", "--", "ping", "-c", "1", "-W", "1", ip)
        let before = try counters()
        let forwardedBefore = try nodeForwarded()
        let count = 300, size = 1000
        let sink = try traffic.start(in: "server", ["udp-sink", "--port", "7002", "--count", "\(count)", "--timeout", "5"], waitReady: true)
        _ = try traffic.run(in: "client", ["udp-send", "--host", ip, "--port", "7002", "--count", "\(count)", "--size", "\(size)"])
        let received = try sink.result()
        XCTAssertEqual(received["datagrams"] as? Int, count)
        let after = try counters()
        let d = { (k: String) in (after[k] ?? 0) - (before[k] ?? 0) }
        // Each datagram is one frame: payload + 8 UDP + 20 IPv4 + 14 Ethernet bytes.
        let frame = Double(size + 8 + 20 + 14)
        for dir in ["client.egress", "server.ingress"] {
            XCTAssertGreaterThanOrEqual(d("\(dir).packets"), Double(count), dir)
            XCTAssertLessThanOrEqual(d("\(dir).packets"), Double(count + 4), dir) // an ARP or two may pass
            XCTAssertGreaterThanOrEqual(d("\(dir).bytes"), Double(count) * frame, dir)
            XCTAssertLessThanOrEqual(d("\(dir).bytes"), Double(count) * frame + 4 * 100, dir)
        }
        // Endpoint to endpoint, the client's program hands each datagram to the server's
        // eth0 itself: the node's IP stack forwards none of them.
        XCTAssertLessThan(try nodeForwarded() - forwardedBefore, 5, "datagrams went through the node's IP forwarding")
    }

    func testMetricsPassPromtoolAndCoverTheNode() throws {
        _ = node.ctl("endpoint", "exec", "client", "--", "ping", "-c", "2", "-i", "0.2", "-W", "1", "10.201.0.2")
        let text = try node.scrape()
        let file = node.dir + "/metrics.txt"
        try text.write(toFile: file, atomically: true, encoding: .utf8)
        let check = Run.run("/bin/sh", ["-c", "promtool check metrics < \(file)"])
        XCTAssertEqual(check.status, 0, "promtool: \(check.stdout)\(check.stderr)")
        XCTAssertEqual(TestNode.sample(in: text, "mesh_endpoints", [:]), 2)
        XCTAssertEqual(TestNode.sample(in: text, "mesh_bpf_map_entries", ["map": "mesh_endpoints"]), 2)
        XCTAssertEqual(TestNode.sample(in: text, "mesh_bpf_map_capacity", ["map": "mesh_endpoints"]), 1024)
        XCTAssertNotNil(TestNode.sample(in: text, "mesh_build_info", ["version": "0.1.0", "node": node.name]))
        XCTAssertGreaterThan(TestNode.sample(in: text, "process_resident_memory_bytes", [:]) ?? 0, 1_000_000)
        XCTAssertGreaterThan(TestNode.sample(in: text, "mesh_endpoint_forwarded_packets_total", ["endpoint": "client", "direction": "egress"]) ?? 0, 0)
    }
}
