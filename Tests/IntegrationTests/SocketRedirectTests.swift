import Foundation
import XCTest

/// Socket redirection must be byte-exact under every socket behaviour, hold back a fast
/// writer, leave the map clean, obey policy revisions and switch without losing a byte.
final class SocketRedirectTests: XCTestCase {
    var node: TestNode!
    var traffic: Traffic { Traffic(node: node) }
    var server = ""

    override func setUpWithError() throws {
        node = try TestNode()
        try node.start(["--socket-redirect", "on"])
        try node.ctlOK("endpoint", "create", "client", "--labels", "app=client")
        try node.ctlOK("endpoint", "create", "server", "--labels", "app=server")
        server = "10.201.0.2"
    }

    override func tearDown() { node?.destroy() }

    func metric(_ name: String, _ labels: [String: String] = [:]) throws -> Double {
        try node.metric(name, labels) ?? 0
    }

    func testDuplexTransfersFromOneByteTo64MiBAreByteExact() throws {
        let before = try metric("mesh_socket_redirect_bytes_total")
        var total = 0
        for (i, (up, down)) in [(1, 1), (1000, 77_777), (65_537, 3), (1 << 20, 5 << 20), (64 << 20, 64 << 20)].enumerated() {
            let port = 7200 + i
            let srv = try traffic.start(in: "server", ["duplex-server", "--port", "\(port)", "--bytes", "\(down)", "--seed", "\(100 + i)"],
                                        waitReady: true)
            let cli = try traffic.run(in: "client", ["duplex-client", "--host", server, "--port", "\(port)", "--bytes", "\(up)",
                                                     "--seed", "\(200 + i)"])
            let s = try srv.result(timeout: 120)
            XCTAssertNil(cli["error"] as? String, "\(up)/\(down): \(cli)")
            XCTAssertNil(s["error"] as? String, "\(up)/\(down): \(s)")
            XCTAssertEqual(s["received"] as? Int, up)
            XCTAssertEqual(cli["received"] as? Int, down)
            XCTAssertEqual(s["received_sha256"] as? String, cli["sent_sha256"] as? String, "client -> server bytes, \(up)")
            XCTAssertEqual(cli["received_sha256"] as? String, s["sent_sha256"] as? String, "server -> client bytes, \(down)")
            total += up + down
        }
        // Readers that keep up: the transfers stay accelerated.
        XCTAssertGreaterThan(try metric("mesh_socket_redirect_bytes_total") - before, Double(10 << 20))
        XCTAssertEqual(try metric("mesh_socket_redirect_fallbacks_total", ["reason": "no_peer"]), 0)
    }

    func testRedirectedBytesCountInBothEndpointsTrafficCounters() throws {
        func bytes(_ ep: String, _ dir: String) throws -> Double {
            try metric("mesh_endpoint_forwarded_bytes_total", ["endpoint": ep, "direction": dir])
        }
        let before = try [bytes("client", "egress"), bytes("server", "ingress"), metric("mesh_socket_redirect_bytes_total")]
        let payload = 2_000_000
        // Writes below socket-redirect-max-write, so the whole transfer stays accelerated.
        let sink = try traffic.start(in: "server", ["duplex-server", "--port", "7050", "--bytes", "0"], waitReady: true)
        let sent = try traffic.run(in: "client", ["duplex-client", "--host", server, "--port", "7050", "--bytes", "\(payload)", "--seed", "3"])
        XCTAssertEqual(try sink.result()["received_sha256"] as? String, sent["sent_sha256"] as? String)
        let after = try [bytes("client", "egress"), bytes("server", "ingress"), metric("mesh_socket_redirect_bytes_total")]
        XCTAssertGreaterThanOrEqual(after[2] - before[2], Double(payload), "the transfer went socket to socket")
        XCTAssertGreaterThanOrEqual(after[0] - before[0], Double(payload), "the sender's egress counts what it sent")
        XCTAssertGreaterThanOrEqual(after[1] - before[1], Double(payload), "the receiver's ingress counts what it received")
        // Not twice: a redirected byte never crosses the veths as well.
        XCTAssertLessThan(after[1] - before[1], Double(payload) * 1.1)
    }

    func testLargeWritesFallBackMidStreamWithoutReorderingBytes() throws {
        // With a write limit, small writes go first (accelerated), then writes up to 100 KB
        // send the direction back to the stack in the middle of the stream.
        try node.ctlOK("config", "set", "socket-redirect-max-write", "16384")
        let srv = try traffic.start(in: "server", ["duplex-server", "--port", "7300", "--bytes", "0"], waitReady: true)
        let cli = try traffic.run(in: "client", ["duplex-client", "--host", server, "--port", "7300", "--bytes", "\(8 << 20)",
                                                 "--seed", "5", "--max-chunk", "100000"])
        let s = try srv.result()
        XCTAssertEqual(s["received"] as? Int, 8 << 20)
        XCTAssertEqual(s["received_sha256"] as? String, cli["sent_sha256"] as? String)
        XCTAssertGreaterThan(try metric("mesh_socket_redirect_fallbacks_total", ["reason": "large_write"]), 0)
        XCTAssertEqual(node.ctl("config", "set", "socket-redirect-max-write", "lots").status, 1)
    }

    func testWithoutAWriteLimitLargeRequestsAndAnswersStayAccelerated() throws {
        try node.ctlOK("config", "set", "socket-redirect-max-write", "0")
        let before = try metric("mesh_socket_redirect_bytes_total")
        let srv = try traffic.start(in: "server", ["duplex-server", "--port", "7310", "--bytes", "\(16 << 20)", "--seed", "3",
                                                   "--max-chunk", "1000000"], waitReady: true)
        let cli = try traffic.run(in: "client", ["duplex-client", "--host", server, "--port", "7310", "--bytes", "\(32 << 20)",
                                                 "--seed", "4", "--max-chunk", "1000000"])
        let s = try srv.result()
        XCTAssertEqual(s["received_sha256"] as? String, cli["sent_sha256"] as? String)
        XCTAssertEqual(cli["received_sha256"] as? String, s["sent_sha256"] as? String)
        XCTAssertGreaterThanOrEqual(try metric("mesh_socket_redirect_bytes_total") - before, Double(1 << 20))
        XCTAssertEqual(try metric("mesh_socket_redirect_fallbacks_total", ["reason": "large_write"]), 0)
    }

    func testByDefaultABulkWriteSendsItsConnectionBackToPlainTCP() throws {
        XCTAssertTrue(try node.ctlOK("config", "get").contains("socket-redirect-max-write: 65536\n"))
        let before = try metric("mesh_socket_redirect_bytes_total")
        // Seed 1 writes 25,989 and 46,504 bytes (accelerated), then 80,048 (above the
        // limit: the connection takes the stack) and so on, 64 MiB in all.
        let sink = try traffic.start(in: "server", ["tcp-sink", "--port", "7320"], waitReady: true)
        let sent = try traffic.run(in: "client", ["tcp-send", "--host", server, "--port", "7320", "--bytes", "\(64 << 20)", "--seed", "1"])
        let got = try sink.result()
        XCTAssertEqual(got["bytes"] as? Int, 64 << 20)
        XCTAssertEqual(got["sha256"] as? String, sent["sha256"] as? String)
        XCTAssertEqual(try metric("mesh_socket_redirect_bytes_total") - before, Double(25_989 + 46_504),
                       "exactly the writes before the first large one were redirected")
        XCTAssertEqual(try metric("mesh_socket_redirect_fallbacks_total", ["reason": "large_write"]), 1)
        XCTAssertGreaterThanOrEqual(try metric("mesh_socket_redirect_sockets_left_total"), 1,
                                    "the writer's socket left the sockhash at once: its peer never redirected")
    }

    func testHalfCloseResetAndAPeerThatClosesEarly() throws {
        // Half-close: the server sees EOF, then still answers.
        let hs = try traffic.start(in: "server", ["halfclose-server", "--port", "7400", "--reply-bytes", "300000"], waitReady: true)
        let hc = try traffic.run(in: "client", ["halfclose-client", "--host", server, "--port", "7400", "--bytes", "5000"])
        XCTAssertEqual(try hs.result()["received"] as? Int, 5000)
        XCTAssertEqual(hc["replied"] as? Int, 300_000)
        // A reset arrives as a reset.
        let rs = try traffic.start(in: "server", ["reset-server", "--port", "7401"], waitReady: true)
        let rc = try traffic.run(in: "client", ["expect-reset", "--host", server, "--port", "7401"])
        _ = try rs.result()
        XCTAssertEqual(rc["reset"] as? Bool, true, "\(rc)")
        // A peer that closes mid-transfer does not hang the writer.
        let es = try traffic.start(in: "server", ["close-early-server", "--port", "7402", "--after", "100000"], waitReady: true)
        let start = Date()
        let sender = try traffic.start(in: "client", ["stream-send", "--host", server, "--port", "7402", "--seconds", "20", "--rate", "4000000"])
        let sent = try sender.result(timeout: 30)
        _ = try es.result()
        XCTAssertNotNil(sent["error"], "the writer must learn that the peer is gone: \(sent)")
        XCTAssertLessThan(Date().timeIntervalSince(start), 15, "the writer must not hang")
        XCTAssertGreaterThan(try metric("mesh_socket_redirect_messages_total"), 0)
    }

    func testAOneWayStreamToAReaderThatKeepsUpStaysAccelerated() throws {
        let before = try metric("mesh_socket_redirect_bytes_total")
        let sink = try traffic.start(in: "server", ["stream-sink", "--port", "7510"], waitReady: true)
        let sent = try traffic.run(in: "client", ["stream-send", "--host", server, "--port", "7510", "--seconds", "1", "--rate", "8000000"])
        let got = try sink.result()
        XCTAssertEqual(got["ok"] as? Bool, true)
        XCTAssertEqual(got["bytes"] as? Int, sent["bytes"] as? Int)
        let bytes = try XCTUnwrap(sent["bytes"] as? Int)
        XCTAssertGreaterThanOrEqual(try metric("mesh_socket_redirect_bytes_total") - before, Double(bytes), "every byte redirected")
        XCTAssertEqual(try metric("mesh_socket_redirect_fallbacks_total", ["reason": "reader_behind"]), 0)
    }

    func testAWriterWhoseReaderFellBehindLeavesTheSockhashAndLosesNothing() throws {
        // The reader sleeps: the writer redirects up to the queue limit, then takes the
        // stack (and so does the other direction). Once that is safe (the reader has
        // drained its redirect queue), the writer's socket leaves the sockhash and the
        // connection is plain TCP; the reader gets every byte in order.
        try node.ctlOK("config", "set", "socket-redirect-max-write", "0") // writes of up to 100 KB stay accelerated
        let sink = try traffic.start(in: "server", ["slow-sink", "--port", "7520", "--pause", "2"], waitReady: true)
        let size = 96 << 20
        let sent = try traffic.start(in: "client", ["tcp-send", "--host", server, "--port", "7520", "--bytes", "\(size)", "--seed", "21"])
            .result(timeout: 120)
        let got = try sink.result(timeout: 120)
        XCTAssertEqual(got["bytes"] as? Int, size)
        XCTAssertEqual(got["sha256"] as? String, sent["sha256"] as? String)
        XCTAssertEqual(try metric("mesh_socket_redirect_fallbacks_total", ["reason": "reader_behind"]), 1)
        XCTAssertEqual(try metric("mesh_socket_redirect_fallbacks_total", ["reason": "peer"]), 1, "the other direction follows")
        // The writer left the sockhash; the reader, which never writes, gets no RTT callback
        // and stays (reading plain TCP through it costs a check per read).
        XCTAssertEqual(try metric("mesh_socket_redirect_sockets_left_total"), 1, "the writer left the sockhash")
        // The limit is a run-time setting; a bad value is refused and changes nothing.
        XCTAssertEqual(node.ctl("config", "set", "socket-redirect-max-queued", "4MiB").status, 1)
        XCTAssertTrue(try node.ctlOK("config", "get").contains("socket-redirect-max-queued: 4194304\n"))
        try node.ctlOK("config", "set", "socket-redirect-max-queued", "65536")
        XCTAssertTrue(try node.ctlOK("config", "get").contains("socket-redirect-max-queued: 65536\n"))
    }

    func testASlowReaderHoldsTheWriterBackAndLosesNothing() throws {
        let progress = node.dir + "/slow.progress"
        let sink = try traffic.start(in: "server", ["slow-sink", "--port", "7500", "--pause", "3", "--progress-file", progress], waitReady: true)
        let sendOut = node.dir + "/slow-send.json"
        let size = 256 << 20
        let sender = try Run.spawn(TestNode.products + "/meshctl",
                                   ["endpoint", "exec", "client", "--", "python3", Traffic.script, "duplex-client", "--host", server,
                                    "--port", "7500", "--bytes", "\(size)", "--seed", "9", "--max-chunk", "16000"],
                                   output: sendOut, environment: ["SWIFTMESH_API_SOCKET": node.socket])
        // While the reader sleeps, the writer must be held back: socket buffers, not the
        // whole transfer, may be in flight.
        usleep(2_500_000)
        var st: Int32 = 0
        XCTAssertEqual(waitpid(sender, &st, WNOHANG), 0, "the writer finished 256 MiB while the reader read nothing")
        let queued = try XCTUnwrap(Int(node.inNode("cat", "/proc/net/sockstat").stdout.split(separator: "\n")
            .first { $0.hasPrefix("TCP:") }?.split(separator: " ").last ?? ""))
        XCTAssertLessThan(queued * 4096, 96 << 20, "TCP memory stays bounded in the node")
        let got = try sink.result(timeout: 120)
        var status: Int32 = 0
        waitpid(sender, &status, 0)
        let sent = try JSONSerialization.jsonObject(with: Data(try String(contentsOfFile: sendOut, encoding: .utf8)
            .split(separator: "\n").last { $0.hasPrefix("{") }!.utf8)) as? [String: Any]
        XCTAssertEqual(got["bytes"] as? Int, size)
        XCTAssertEqual(got["sha256"] as? String, sent?["sent_sha256"] as? String, "nothing lost once the reader catches up")
        XCTAssertGreaterThan(try metric("mesh_socket_redirect_fallbacks_total", ["reason": "reader_behind"]), 0,
                             "the stalled direction moved to the stack's flow control")
    }

    func testAThousandConnectionsLeaveTheSockhashAtItsBaseline() throws {
        let baseline = try metric("mesh_socket_redirect_sockets")
        let srv = try traffic.start(in: "server", ["many-server", "--port", "7600"], waitReady: true)
        defer { kill(srv.pid, SIGKILL) }
        let ready = node.dir + "/many.ready"
        let cli = try traffic.start(in: "client", ["many-client", "--host", server, "--port", "7600", "--count", "1000",
                                                   "--hold", "3", "--ready-file", ready])
        let deadline = Date().addingTimeInterval(60)
        while !FileManager.default.fileExists(atPath: ready) && Date() < deadline { usleep(50_000) }
        XCTAssertGreaterThanOrEqual(try metric("mesh_socket_redirect_sockets"), baseline + 2000, "both sockets of 1,000 connections")
        // The map gauges and status see the same maps filling.
        for map in ["mesh_sockhash", "mesh_sock_state"] {
            XCTAssertGreaterThanOrEqual(try node.metric("mesh_bpf_map_entries", ["map": map]) ?? 0, baseline + 2000, map)
        }
        let status = try JSONSerialization.jsonObject(with: Data(try node.ctlOK("status", "-o", "json").utf8)) as? [String: Any]
        let sockhash = (status?["maps"] as? [[String: Any]])?.first { $0["name"] as? String == "mesh_sockhash" }
        XCTAssertGreaterThanOrEqual(sockhash?["entries"] as? Int ?? 0, Int(baseline) + 2000, "status: \(String(describing: sockhash))")
        let r = try cli.result(timeout: 60)
        XCTAssertEqual(r["echoed"] as? Int, 1000)
        kill(srv.pid, SIGKILL)
        // A socket leaves the sockhash as it is unhashed, and its state goes at its
        // BPF_TCP_CLOSE callback: wait for both.
        var now = -1.0, state = -1.0
        for _ in 0..<50 {
            now = try metric("mesh_socket_redirect_sockets")
            state = try node.metric("mesh_bpf_map_entries", ["map": "mesh_sock_state"]) ?? -1
            if now == baseline && state == baseline { break }
            usleep(100_000)
        }
        XCTAssertEqual(now, baseline, "closed sockets leave the map")
        XCTAssertEqual(try node.metric("mesh_bpf_map_entries", ["map": "mesh_sockhash"]), baseline)
        XCTAssertEqual(state, baseline, "closed sockets' state goes too")
        XCTAssertEqual(try node.ctlOK("bpf", "sockmap", "list").split(separator: "\n").count, 1, "only the header is left")
    }

    func testAnAcceleratedFlowDeniedByANewRevisionPassesNoMoreBytes() throws {
        let progress = node.dir + "/deny.progress"
        let sink = try traffic.start(in: "server", ["stream-sink", "--port", "7700", "--progress-file", progress, "--ack-every", "262144"], waitReady: true)
        let sender = try traffic.start(in: "client", ["stream-send", "--host", server, "--port", "7700", "--seconds", "8", "--rate", "1000000"])
        usleep(1_500_000)
        XCTAssertTrue(try node.ctlOK("bpf", "sockmap", "list").contains("accelerated"))
        let path = node.dir + "/deny.yaml"
        try """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: server-closed}
        spec:
          endpointSelector: {matchLabels: {app: server}}
          ingressDeny: [{fromEndpoints: [{matchLabels: {app: client}}]}]
        """.write(toFile: path, atomically: true, encoding: .utf8)
        try node.ctlOK("policy", "apply", "-f", path)
        // In force once apply returns; a message already inside sendmsg may still land.
        usleep(300_000)
        let atEnforcement = Int(try String(contentsOfFile: progress, encoding: .utf8)) ?? 0
        usleep(2_000_000)
        let later = Int(try String(contentsOfFile: progress, encoding: .utf8)) ?? 0
        XCTAssertEqual(later, atEnforcement, "no byte passes after the revision is in force")
        let sent = try sender.result()
        XCTAssertNotNil(sent["error"], "the writer is refused: \(sent)")
        kill(sink.pid, SIGKILL)
        XCTAssertGreaterThan(try metric("mesh_socket_redirect_denied_messages_total"), 0)
        XCTAssertGreaterThan(try metric("mesh_drops_total", ["reason": "policy_deny", "direction": "egress"]), 0,
                             "counted like any other drop")
    }

    func testSwitchingOffAndOnUnderTrafficLosesNothing() throws {
        let echo = try traffic.start(in: "server", ["echo-server", "--tcp", "7802", "--seconds", "30"], waitReady: true)
        defer { kill(echo.pid, SIGKILL) }
        let sink = try traffic.start(in: "server", ["stream-sink", "--port", "7800", "--ack-every", "262144"], waitReady: true)
        let sender = try traffic.start(in: "client", ["stream-send", "--host", server, "--port", "7800", "--seconds", "5", "--rate", "2000000"])
        XCTAssertTrue(try eventually { try node.ctlOK("bpf", "sockmap", "list").contains("accelerated") }, "the stream is accelerated")
        try node.ctlOK("config", "set", "socket-redirect", "off")
        XCTAssertTrue(try node.ctlOK("config", "get").contains("socket-redirect: off\n"))
        XCTAssertTrue(try eventually { try node.ctlOK("bpf", "sockmap", "list").contains("passthrough") },
                      "the running stream fell back to the stack")
        // A new connection while off is established, echoes, and is not accelerated.
        let addedWhileOff = try metric("mesh_socket_redirect_connections_added_total")
        XCTAssertEqual(try traffic.run(in: "client", ["probe", "--host", server, "--port", "7802"])["ok"] as? Bool, true)
        XCTAssertEqual(try metric("mesh_socket_redirect_connections_added_total"), addedWhileOff, "nothing added while off")
        try node.ctlOK("config", "set", "socket-redirect", "on")
        let sent = try sender.result(), got = try sink.result()
        XCTAssertNil(sent["error"])
        XCTAssertEqual(got["ok"] as? Bool, true, "\(got)")
        XCTAssertEqual(got["bytes"] as? Int, sent["bytes"] as? Int, "no byte lost across off and on")
        XCTAssertGreaterThan(try metric("mesh_socket_redirect_fallbacks_total", ["reason": "disabled"]), 0)
        // The same kind of connection once on: accelerated again, both sockets.
        XCTAssertEqual(try traffic.run(in: "client", ["probe", "--host", server, "--port", "7802"])["ok"] as? Bool, true)
        XCTAssertEqual(try metric("mesh_socket_redirect_connections_added_total"), addedWhileOff + 2, "accelerated again once on")
    }

    /// Polls `condition` every 100 ms for up to `seconds`: waits for a state instead of
    /// sleeping a fixed time and hoping.
    func eventually(seconds: Double = 10, _ condition: () throws -> Bool) throws -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if try condition() { return true }
            usleep(100_000)
        }
        return try condition()
    }
}
