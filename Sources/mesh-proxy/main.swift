import ArgumentParser
import Logging
import NIOCore
import Proxy

/// The SwiftMesh L7 proxy: serves the connections the datapath redirects to it, under the
/// configuration meshd pushes over the control socket.
@main
struct MeshProxyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mesh-proxy",
        abstract: "The SwiftMesh L7 HTTP proxy (transparent listener + control socket for meshd)."
    )

    @Option(help: "TCP port of the transparent listener.")
    var port: Int = ProxySettings().port

    @Option(help: "Unix socket meshd connects to.")
    var control: String = ProxySettings().controlPath

    @Option(help: "Seconds a request head may take once its first byte arrived.")
    var headerTimeout: Int = 10

    @Option(help: "Seconds an idle keep-alive connection stays open.")
    var idleTimeout: Int = 60

    @Option(help: "Seconds to connect upstream and receive its response head.")
    var upstreamTimeout: Int = 30

    @Option(help: "Open client connections beyond which new ones are closed at once.")
    var maxConnections: Int = ProxySettings().maxConnections

    @Option(help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "info"

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port \(port) is not a TCP port") }
        for (flag, value) in [("--header-timeout", headerTimeout), ("--idle-timeout", idleTimeout),
                              ("--upstream-timeout", upstreamTimeout), ("--max-connections", maxConnections)] where value < 1 {
            throw ValidationError("\(flag) must be at least 1, not \(value)")
        }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level \"\(logLevel)\" is not one of trace, debug, info, notice, warning, error, critical")
        }
    }

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "mesh-proxy")
        var settings = ProxySettings()
        settings.port = port
        settings.controlPath = control
        settings.headerTimeout = .seconds(Int64(headerTimeout))
        settings.idleTimeout = .seconds(Int64(idleTimeout))
        settings.upstreamTimeout = .seconds(Int64(upstreamTimeout))
        settings.maxConnections = maxConnections

        let proxy: MeshProxy
        do {
            proxy = try await MeshProxy.start(settings: settings, logger: logger)
        } catch {
            logger.critical("cannot start: \(error)")
            throw ExitCode(1)
        }
        let signal = await TerminationSignals.wait()
        logger.info("signal \(signal): draining connections")
        await proxy.shutdown(gracePeriod: .seconds(5))
        logger.info("stopped")
    }
}
