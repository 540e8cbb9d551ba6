import Foundation
import Logging
import MeshModel
import NIOCore
import Proxy
import XCTest

/// A proxy started in-process on loopback whose every connection goes to a test upstream
/// (the `.fixed` original destination), with its control socket in a fresh folder.
final class ProxyHarness {
    let upstream: EchoUpstream
    let proxy: MeshProxy
    let folder: URL
    /// What the proxy logged (debug and above), for a failing assertion's message.
    let log: RecordedLog

    var port: Int { proxy.port }
    var upstreamPort: Int { upstream.port }

    private init(upstream: EchoUpstream, proxy: MeshProxy, folder: URL, log: RecordedLog) {
        self.upstream = upstream
        self.proxy = proxy
        self.folder = folder
        self.log = log
    }

    /// `destination` overrides where connections go (a closed port, say).
    static func start(destination: SocketAddress? = nil,
                      _ adjust: (inout ProxySettings) -> Void = { _ in }) async throws -> ProxyHarness {
        let upstream = try await EchoUpstream()
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("mesh-proxy-test-\(UUID().uuidString)")
        var settings = ProxySettings()
        settings.host = "127.0.0.1"
        settings.port = 0
        // The folder does not exist yet: the proxy must create it.
        settings.controlPath = folder.appendingPathComponent("run/proxy.sock").path
        settings.originalDestination = .fixed(destination ?? upstream.address)
        adjust(&settings)
        let log = RecordedLog()
        var logger = Logger(label: "mesh-proxy-test") { _ in RecordedLog.Handler(log: log) }
        logger.logLevel = .debug
        let proxy = try await MeshProxy.start(settings: settings, logger: logger)
        return ProxyHarness(upstream: upstream, proxy: proxy, folder: folder, log: log)
    }

    func stop() async {
        await proxy.shutdown(gracePeriod: .seconds(2))
        await upstream.stop()
        try? FileManager.default.removeItem(at: folder)
    }

    /// An L7 policy on the upstream's address and port: `http` rules for every peer
    /// (nil: a rule that allows every request). The upstream is not a node endpoint.
    func config(generation: UInt64, _ http: [HTTPRule]?) -> ProxyConfig {
        Self.config(generation: generation, port: upstreamPort, http)
    }

    static func config(generation: UInt64, port: Int, _ http: [HTTPRule]?) -> ProxyConfig {
        let loopback = IPv4Address(0x7f00_0001)
        let rule = L7PortRule(peers: [0], fromPort: UInt16(port), toPort: UInt16(port), http: http, ruleID: 7,
                              rule: "test/allow specs[0].ingress[0] (allow)")
        return ProxyConfig(generation: generation, endpoints: [], ipcache: [],
                           l7: [L7EndpointPolicy(endpoint: loopback, direction: .ingress, rules: [rule], defaultRuleID: 99)],
                           ruleNames: [99: "test default deny"])
    }

    /// Sends `config` as meshd would and returns the proxy's answer.
    @discardableResult
    func apply(_ config: ProxyConfig) async throws -> ProxyControlMessage {
        try await ControlTestConnection.with(path: proxy.controlPath) { control in
            _ = try await control.next { $0.hello != nil }
            try await control.send(ProxyControlMessage(config: config))
            return try await control.next { $0.configApplied != nil || $0.configRejected != nil }
        }
    }

    /// Applies `http` rules and fails the test unless the proxy took them.
    func allow(_ http: [HTTPRule]?, generation: UInt64 = 1, file: StaticString = #filePath, line: UInt = #line) async throws {
        let reply = try await apply(config(generation: generation, http))
        XCTAssertEqual(reply.configApplied, generation, "config not applied: \(String(describing: reply.configRejected))",
                       file: file, line: line)
    }
}

/// The proxy's log lines kept in memory, the last 200: quiet while tests pass, and there
/// to say why when one fails.
final class RecordedLog: @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [String] = []

    var text: String { lock.withLock { lines.joined(separator: "\n") } }

    func append(_ line: String) {
        lock.withLock {
            lines.append(line)
            if lines.count > 200 { lines.removeFirst(lines.count - 200) }
        }
    }

    struct Handler: LogHandler {
        let log: RecordedLog
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .debug

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(level: Logger.Level, message: Logger.Message, metadata extra: Logger.Metadata?, source: String,
                 file: String, function: String, line: UInt) {
            let all = metadata.merging(extra ?? [:]) { $1 }
            let fields = all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            log.append("\(level) \(message) \(fields)")
        }
    }
}
