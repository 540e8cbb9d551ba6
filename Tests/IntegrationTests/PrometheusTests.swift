import Foundation
import XCTest

/// A real Prometheus server (Debian's) scrapes meshd, and its query API returns the
/// counters real traffic moved: the text format, names and labels are what Prometheus
/// itself accepts, not what a hand-written parser in a test happens to read.
final class PrometheusTests: XCTestCase {
    var node: TestNode!
    var prometheus: pid_t = 0

    override func tearDown() {
        if prometheus > 0 {
            kill(prometheus, SIGKILL)
            var st: Int32 = 0
            waitpid(prometheus, &st, 0)
        }
        node?.destroy()
    }

    /// The first sample of an instant query, through Prometheus' HTTP API; nil when the
    /// result is empty.
    func query(_ expr: String, port: Int) throws -> Double? {
        let r = node.inNode("curl", "-sf", "--max-time", "5", "-G", "http://127.0.0.1:\(port)/api/v1/query",
                            "--data-urlencode", "query=\(expr)")
        guard r.status == 0 else { return nil }
        let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        guard json?["status"] as? String == "success",
              let result = (json?["data"] as? [String: Any])?["result"] as? [[String: Any]],
              let value = result.first?["value"] as? [Any], let text = value.last as? String else { return nil }
        return Double(text)
    }

    /// Polls `expr` until `accept` holds (Prometheus scrapes every second here).
    func eventually(_ expr: String, port: Int, seconds: Double = 30, _ accept: (Double) -> Bool) throws -> Double? {
        let deadline = Date().addingTimeInterval(seconds)
        var last: Double?
        while Date() < deadline {
            last = try query(expr, port: port)
            if let last, accept(last) { return last }
            usleep(250_000)
        }
        return last
    }

    func testPrometheusScrapesMeshdAndSeesTheTrafficCounters() throws {
        node = try TestNode()
        try node.start(["--socket-redirect", "off"])
        try node.ctlOK("endpoint", "create", "client", "--labels", "app=client")
        try node.ctlOK("endpoint", "create", "server", "--labels", "app=server")
        let binary = try XCTUnwrap(["/usr/bin/prometheus", "/usr/local/bin/prometheus"].first { FileManager.default.isExecutableFile(atPath: $0) },
                                   "Debian's prometheus package (tools/setup installs it)")

        // Prometheus runs in the node's netns, beside meshd, with its own data folder.
        let port = node.metricsPort + 100
        let config = node.dir + "/prometheus.yml"
        try """
        global: {scrape_interval: 1s, evaluation_interval: 1s}
        scrape_configs:
        - job_name: meshd
          static_configs: [{targets: ["127.0.0.1:\(node.metricsPort)"]}]
        """.write(toFile: config, atomically: true, encoding: .utf8)
        prometheus = try Run.spawn("/usr/bin/nsenter", ["--net=/run/netns/\(node.netns)", binary,
                                                        "--config.file=\(config)", "--storage.tsdb.path=\(node.dir)/prometheus-data",
                                                        "--web.listen-address=127.0.0.1:\(port)"],
                                   output: node.dir + "/prometheus.log")
        let up = try eventually("up{job=\"meshd\"}", port: port) { $0 == 1 }
        XCTAssertEqual(up, 1, "Prometheus scrapes meshd: \((try? String(contentsOfFile: node.dir + "/prometheus.log", encoding: .utf8))?.suffix(1500) ?? "")")

        // Move a known number of bytes client -> server on the tc path.
        let traffic = Traffic(node: node)
        let sink = try traffic.start(in: "server", ["tcp-sink", "--port", "7001"], waitReady: true)
        let payload = 2_000_000
        _ = try traffic.run(in: "client", ["tcp-send", "--host", "10.201.0.2", "--port", "7001", "--bytes", "\(payload)", "--seed", "3"])
        XCTAssertEqual(try sink.result()["bytes"] as? Int, payload)

        let bytes = try eventually("mesh_endpoint_forwarded_bytes_total{endpoint=\"server\",direction=\"ingress\"}", port: port) {
            $0 >= Double(payload)
        }
        XCTAssertGreaterThanOrEqual(bytes ?? 0, Double(payload), "the payload crossed the server's veth inwards")
        XCTAssertLessThanOrEqual(bytes ?? .infinity, Double(payload) * 1.06 + 20_000, "and little else did")
        // Label sets and the other kinds Prometheus must accept: a gauge and build info.
        XCTAssertEqual(try query("count(mesh_build_info{node=\"\(node.name)\"})", port: port), 1)
        XCTAssertEqual(try query("mesh_endpoints", port: port), 2)
        // Prometheus rejected nothing meshd exposed.
        let log = (try? String(contentsOfFile: node.dir + "/prometheus.log", encoding: .utf8)) ?? ""
        XCTAssertFalse(log.contains("level=warn") && log.contains("scrape"), log.suffix(2000).description)
    }
}
