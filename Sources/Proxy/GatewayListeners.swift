import MeshModel
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS

/// The ingress gateway's listening sockets, one per port of the configuration in force, on
/// every address of the node. A connection is set up from the configuration in force when
/// it arrives: HTTP goes straight to the HTTP handling, routed by the listener its Host
/// names; HTTPS is read up to its SNI, which picks the listener and so the certificate and
/// the routes, and ALPN HTTP/2 or HTTP/1.1; TLS (passthrough) is read up to its SNI, which picks the TLSRoute, and then
/// relayed unopened to one of its backends.
final class GatewayListeners: Sendable {
    private let group: any EventLoopGroup
    private let listeners = PortListeners()

    init(group: any EventLoopGroup) { self.group = group }

    /// Listens on the ports of `gateways` and no others. A port closed stops taking
    /// connections; those it took go on.
    func update(_ gateways: GatewayPorts, core: ProxyCore) {
        let group = self.group
        listeners.update(Set(gateways.listening.keys), bind: { port in
            ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 1024)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelInitializer { channel in
                    guard core.admit(channel) else {
                        channel.close(promise: nil)
                        return channel.eventLoop.makeSucceededVoidFuture()
                    }
                    return channel.eventLoop.makeCompletedFuture { try GatewayConnection.configure(channel, core: core, port: port) }
                }
                .bind(host: "0.0.0.0", port: Int(port))
        }, down: { port in
            core.logger.info("gateway listener down", metadata: ["port": "\(port)"])
        }, up: { port in
            core.logger.info("gateway listener up", metadata: ["port": "\(port)"])
        }, failed: { port, error in
            core.logger.error("cannot listen for the gateway", metadata: ["port": "\(port)", "error": "\(error)"])
            core.metrics.gatewayListenFailed(port: port)
        })
    }

    func closeAll() { listeners.closeAll() }
}

/// How one accepted gateway connection is set up.
enum GatewayConnection {
    static func configure(_ channel: any Channel, core: ProxyCore, port: UInt16) throws {
        guard let gp = core.policy.inForce.gateways.port(port), let client = channel.remoteAddress,
              let local = channel.localAddress else {
            throw ChannelError.inappropriateOperationForState
        }
        switch gp.proto {
        case .http:
            core.metrics.gatewayConnection(port: port, .accepted)
            try ConnectionPipeline.configureHTTP1(channel, core: core, client: client, destination: local,
                                                  gateway: GatewayRouting(port: port, listener: nil))
        case .https, .tls:
            // The ClientHello must come within the header timeout; a TLS record is at most
            // 16 KiB plus its header, so the bytes held while it is read are bounded too.
            let deadline = HandshakeDeadline(channel: channel, timeout: core.settings.headerTimeout)
            let loop = channel.eventLoop
            try channel.pipeline.syncOperations.addHandler(HandshakeDeadline.FirstByte { deadline.firstByte = $0 })
            try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(SNIHandler { result in
                let sni: String? = if case .hostname(let name) = result { name } else { nil }
                // Read on `channel`'s loop, where the SNI handler runs.
                if case .fallback = result, !deadline.sawTLS {
                    core.metrics.gatewayConnection(port: port, .notTLS)
                    channel.close(promise: nil)
                    return loop.makeSucceededVoidFuture()
                }
                guard let listener = gp.listener(for: sni) else {
                    core.metrics.gatewayConnection(port: port, .noListener)
                    core.logger.debug("no gateway listener for this SNI", metadata: ["port": "\(port)", "sni": "\(sni ?? "(none)")"])
                    channel.close(promise: nil)
                    return loop.makeSucceededVoidFuture()
                }
                let ready: EventLoopFuture<Void>
                if gp.proto == .https {
                    ready = loop.makeCompletedFuture {
                        try startTLS(channel, core: core, port: port, listener: listener, client: client, local: local, deadline: deadline)
                    }
                } else {
                    deadline.cancel()
                    ready = Passthrough.start(channel, core: core, port: port, listener: listener, sni: sni)
                }
                return ready
            }), name: "gateway-sni")
            try channel.pipeline.syncOperations.addHandler(ReadCompleteAfterFirstRead())
        }
    }

    private static func startTLS(_ channel: any Channel, core: ProxyCore, port: UInt16, listener: GatewayListener,
                                 client: SocketAddress, local: SocketAddress, deadline: HandshakeDeadline) throws {
        guard let ssl = listener.ssl else { throw ChannelError.inappropriateOperationForState }
        let sync = channel.pipeline.syncOperations
        try sync.addHandler(NIOSSLServerHandler(context: ssl))
        try sync.addHandler(HandshakeOutcome(core: core, port: port, deadline: deadline))
        let routing = GatewayRouting(port: port, listener: listener.label)
        // The protocol ALPN agreed on: HTTP/2 requests are routed stream by stream, by the
        // same listener, and reach backends over HTTP/1.1 as every gateway request does.
        try sync.addHandler(ApplicationProtocolNegotiationHandler { result, channel in
            channel.eventLoop.makeCompletedFuture {
                if case .negotiated("h2") = result {
                    try ConnectionPipeline.configureHTTP2(channel, core: core, client: client, destination: local, gateway: routing)
                } else {
                    try ConnectionPipeline.configureHTTP1(channel, core: core, client: client, destination: local, gateway: routing)
                }
            }
        })
    }
}

/// Which gateway port (and, for HTTPS, which listener the SNI chose) a request came in
/// through: it is routed by that listener's routes, not by its original destination.
struct GatewayRouting {
    let port: UInt16
    /// HTTPS: the listener the SNI picked. HTTP: nil, the Host header picks one per request.
    let listener: String?

    /// The listener for a request with `host`, under the configuration in force.
    func listener(in ports: GatewayPorts, host: String?) -> GatewayListener? {
        guard let gp = ports.port(port) else { return nil }
        if let label = listener { return gp.listener(labelled: label) }
        return gp.listener(for: host)
    }
}

/// Closes a connection whose TLS ClientHello (and, for HTTPS, handshake) has not finished
/// within `timeout`. Touched only on the connection's loop.
final class HandshakeDeadline: @unchecked Sendable {
    private var task: Scheduled<Void>?
    /// The first byte read: a ClientHello starts with a handshake record (0x16).
    var firstByte: UInt8?

    init(channel: any Channel, timeout: TimeAmount) {
        task = channel.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
    }

    func cancel() {
        task?.cancel()
        task = nil
    }

    var sawTLS: Bool { firstByte == 0x16 }

    /// Notes the first byte read, then leaves the pipeline.
    final class FirstByte: ChannelInboundHandler, RemovableChannelHandler {
        typealias InboundIn = ByteBuffer
        typealias InboundOut = ByteBuffer
        let seen: (UInt8) -> Void
        init(_ seen: @escaping (UInt8) -> Void) { self.seen = seen }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let bytes = unwrapInboundIn(data)
            let first = bytes.getInteger(at: bytes.readerIndex, as: UInt8.self)
            if let first { seen(first) }
            context.fireChannelRead(data)
            if first != nil { context.pipeline.syncOperations.removeHandler(context: context, promise: nil) }
        }
    }
}

/// The SNI handler hands the ClientHello on, once it is gone, as a read without a
/// read-complete: TLS (which answers at read-complete) and the relay (which flushes then)
/// would sit on it. This ends that first read, then leaves.
final class ReadCompleteAfterFirstRead: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.fireChannelRead(data)
        context.fireChannelReadComplete()
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}

/// Counts an HTTPS connection's handshake, once, and ends its deadline.
final class HandshakeOutcome: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    private let core: ProxyCore
    private let port: UInt16
    private let deadline: HandshakeDeadline
    private var counted = false

    init(core: ProxyCore, port: UInt16, deadline: HandshakeDeadline) {
        self.core = core
        self.port = port
        self.deadline = deadline
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event, !counted {
            counted = true
            deadline.cancel()
            core.metrics.gatewayConnection(port: port, .accepted)
            // On first: the protocol negotiation after this handler waits for the event,
            // and a removed handler's context passes nothing on.
            context.fireUserInboundEventTriggered(event)
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !counted {
            counted = true
            core.metrics.gatewayConnection(port: port, .tlsFailed)
            core.logger.debug("gateway TLS handshake failed", metadata: ["port": "\(port)", "error": "\(error)"])
        }
        context.close(promise: nil)
    }
}

/// A TLS passthrough connection: the TLSRoute for its SNI names backends; the connection,
/// ClientHello included, is relayed to one of them unopened.
enum Passthrough {
    static func start(_ channel: any Channel, core: ProxyCore, port: UInt16, listener: GatewayListener,
                      sni: String?) -> EventLoopFuture<Void> {
        let loop = channel.eventLoop
        guard let route = listener.passthroughRoute(for: sni) else {
            core.metrics.gatewayConnection(port: port, .noRoute)
            core.logger.debug("no TLSRoute for this SNI", metadata: ["listener": "\(listener.label)", "sni": "\(sni ?? "(none)")"])
            channel.close(promise: nil)
            return loop.makeSucceededVoidFuture()
        }
        var random = SystemRandomNumberGenerator()
        guard let backend = pick(route.backends, using: &random), let address = try? PeerAddress(backend).socketAddress else {
            core.metrics.gatewayConnection(port: port, .noBackend)
            channel.close(promise: nil)
            return loop.makeSucceededVoidFuture()
        }
        // Nothing more is read until the backend is connected: the SNI handler would
        // otherwise hold whatever the client sends meanwhile.
        _ = try? channel.syncOptions?.setOption(.autoRead, value: false)
        _ = try? channel.syncOptions?.setOption(.allowRemoteHalfClosure, value: true)
        let (mine, theirs) = TunnelRelay.pair()
        let theirsBound = NIOLoopBound(theirs, eventLoop: loop)
        let done = loop.makePromise(of: Void.self)
        UpstreamConnector.connectRaw(to: address, from: .gateway, timeout: core.settings.upstreamTimeout, on: loop) { upstream in
            try upstream.pipeline.syncOperations.addHandler(theirsBound.value)
        }.whenComplete { result in
            switch result {
            case .success(let upstream):
                do {
                    // The SNI handler hands the buffered ClientHello on once `done` succeeds.
                    try channel.pipeline.syncOperations.addHandler(mine, position: .last)
                    core.metrics.gatewayConnection(port: port, .accepted)
                    channel.closeFuture.whenComplete { _ in upstream.close(promise: nil) }
                    done.succeed(())
                    channel.setOption(.autoRead, value: true).whenFailure { _ in channel.close(promise: nil) }
                } catch {
                    upstream.close(promise: nil)
                    done.fail(error)
                }
            case .failure(let error):
                core.metrics.gatewayConnection(port: port, .noBackend)
                core.logger.info("TLS passthrough backend unreachable",
                                 metadata: ["route": "\(route.route)", "backend": "\(backend.ip):\(backend.port)", "error": "\(error)"])
                channel.close(promise: nil)
                done.fail(error)
            }
        }
        return done.futureResult
    }

    /// A backend endpoint: a group by weight, then one of its endpoints at random.
    static func pick<R: RandomNumberGenerator>(_ groups: [ProxyBackendGroup], using random: inout R) -> ProxyBackendEndpoint? {
        let ready = groups.filter { $0.weight > 0 && !$0.endpoints.isEmpty }
        guard !ready.isEmpty else { return nil }
        var ticket = UInt64.random(in: 0..<ready.reduce(0) { $0 + UInt64($1.weight) }, using: &random)
        for g in ready {
            if ticket < UInt64(g.weight) { return g.endpoints.randomElement(using: &random) }
            ticket -= UInt64(g.weight)
        }
        return ready.last?.endpoints.randomElement(using: &random)
    }
}

extension ProxyMetrics {
    func gatewayListenFailed(port: UInt16) {
        keptCounter("mesh_gateway_listen_failures_total", "Gateway ports the proxy could not listen on (port in use, no permission).",
                    labels: [("port", "\(port)")]).increment()
    }
}
