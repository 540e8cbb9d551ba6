import MeshModel
import NIOCore
import NIOHTTP1
import NIOHTTP2

/// The handlers of one accepted client connection: the protocol sniffer first, then those
/// of HTTP/1.1 or of HTTP/2, whichever the client's first bytes speak.
enum ConnectionPipeline {
    static func configure(_ channel: any Channel, core: ProxyCore) throws {
        let settings = core.settings
        let destination: SocketAddress? = switch settings.originalDestination {
        case .localAddress: channel.localAddress
        case .fixed(let address): address
        }
        guard let client = channel.remoteAddress, let destination else {
            throw ChannelError.inappropriateOperationForState
        }
        // A connection made straight to the listener has the listener as its "original"
        // destination; forwarding it would connect the proxy to itself, again and again.
        if case .localAddress = settings.originalDestination,
           destination.port == core.listenPort.withLockedValue({ $0 }) {
            core.logger.debug("connection addressed to the proxy itself refused", metadata: ["client": "\(client)"])
            throw ChannelError.inappropriateOperationForState
        }
        let index = core.policy.index
        if let to = PeerAddress(destination), let from = PeerAddress(client) {
            let peer = index.tunnelPeer(to.ip)
            // The destination's node takes it only through an mTLS tunnel, or the client's own
            // egress rule asks for proof: bytes through the tunnel, not HTTP.
            let rule = peer?.tunnel == true ? nil : index.egressAuthRule(source: from.ip, destination: to.ip, port: to.port)
            if let t = index.config.tunnel, let peer, peer.tunnel || rule != nil {
                let route = TunnelOutbound.Route(config: t, peer: peer)
                // The source's own HTTP rules judge each request here, before it enters the
                // tunnel: the far end sees only the tunnel's bytes.
                if index.egressReadsHTTP(source: from.ip, destination: to.ip, port: to.port) {
                    return try configureHTTP(channel, core: core, client: client, destination: destination, tunnel: route)
                }
                return try TunnelOutbound.configure(channel, core: core, route: route, client: from, destination: to)
            }
            // Where no tunnel leads, a flow that must be proven goes nowhere.
            if let rule {
                core.metrics.tunnelRefused(.noTunnel)
                core.logger.info("connection refused: its egress rule requires authentication and no tunnel leads to the destination",
                                 metadata: ["source": "\(from)", "destination": "\(to)", "rule": "\(rule.rule)"])
                core.reportTunnel(.outbound, source: from, destination: to, peer: nil, status: 403, rule: (rule.ruleID, rule.rule),
                                  error: TunnelRefusal.noTunnel.rawValue, started: .now)
                throw ChannelError.inappropriateOperationForState
            }
        }
        try configureHTTP(channel, core: core, client: client, destination: destination)
    }

    /// The sniffer, then HTTP/1.1 or HTTP/2 handlers for a connection from `client` to
    /// `destination` (also a tunnelled connection whose destination has HTTP rules).
    /// With `tunnel`, requests go upstream through the mTLS tunnel to the destination's node.
    static func configureHTTP(_ channel: any Channel, core: ProxyCore, client: SocketAddress, destination: SocketAddress,
                              tunnel: TunnelOutbound.Route? = nil) throws {
        let http1 = { () throws in try configureHTTP1(channel, core: core, client: client, destination: destination, tunnel: tunnel) }
        let http2 = { () throws in try configureHTTP2(channel, core: core, client: client, destination: destination, tunnel: tunnel) }
        try channel.pipeline.syncOperations.addHandler(ProtocolSniffer(timeout: core.settings.headerTimeout) { proto, _ in
            switch proto {
            case .http1: try http1()
            case .http2: try http2()
            }
        })
    }

    /// HTTP/1.1: deadlines → codec → the proxying handler (which queues pipelined requests and
    /// answers protocol errors).
    static func configureHTTP1(_ channel: any Channel, core: ProxyCore, client: SocketAddress, destination: SocketAddress,
                               gateway: GatewayRouting? = nil, tunnel: TunnelOutbound.Route? = nil) throws {
        let settings = core.settings
        var limits = NIOHTTPDecoderLimitConfiguration()
        // NIO counts the request line and every header name and value toward these.
        limits.maxHeaderListSize = settings.maxHeadBytes
        limits.maxHeaderFieldSize = settings.maxHeadBytes
        let sync = channel.pipeline.syncOperations
        let metrics = core.metrics
        let deadlines = ConnectionDeadlines(headerTimeout: settings.headerTimeout, idleTimeout: settings.idleTimeout,
                                            onHeaderTimeout: { metrics.hostile(.headerTimeout) })
        try sync.addHandler(deadlines)
        // No outbound header validation: see UpstreamConnector.connect.
        // No pipelining assistance: DownstreamHandler queues pipelined requests itself.
        try sync.configureHTTPServerPipeline(withPipeliningAssistance: false, withErrorHandling: false,
                                             withOutboundHeaderValidation: false,
                                             withEncoderConfiguration: .init(), withDecoderLimitConfiguration: limits)
        try sync.addHandler(DownstreamHandler(core: core, client: client, destination: destination, gateway: gateway,
                                              deadlines: deadlines, tunnel: tunnel))
    }

    /// HTTP/2 with prior knowledge (h2c, gRPC): each request stream gets its own proxying
    /// handler, and they share the connection's HTTP/2 connections upstream. NIOHTTP2 bounds
    /// what one connection may hold (concurrent streams, header list size, flow control).
    /// Through the gateway (HTTP/2 by ALPN) the backends are reached over HTTP/1.1 instead:
    /// a Service's backend is not known to speak HTTP/2. With `tunnel`, the HTTP/2
    /// connection upstream runs inside the mTLS tunnel to the destination's node.
    static func configureHTTP2(_ channel: any Channel, core: ProxyCore, client: SocketAddress, destination: SocketAddress,
                               gateway: GatewayRouting? = nil, tunnel: TunnelOutbound.Route? = nil) throws {
        let h2: HTTP2Upstreams = if let tunnel, let clientPeer = PeerAddress(client) {
            HTTP2Upstreams(loop: channel.eventLoop) { target, _, _, loop in
                TunnelOutbound.connectHTTP2(core: core, route: tunnel, source: clientPeer, destination: target, on: loop)
            }
        } else {
            HTTP2Upstreams(loop: channel.eventLoop)
        }
        let upstreams = NIOLoopBound(h2, eventLoop: channel.eventLoop)
        channel.closeFuture.whenComplete { _ in upstreams.value.closeAll() }
        let viaHTTP2 = gateway == nil
        var connection = NIOHTTP2Handler.ConnectionConfiguration()
        connection.maximumRecentlyResetStreams = 32
        connection.initialSettings = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: 100),
            HTTP2Setting(parameter: .maxHeaderListSize, value: core.settings.maxHeadBytes),
        ]
        _ = try channel.pipeline.syncOperations.configureHTTP2Pipeline(
            mode: .server, connectionConfiguration: connection, streamConfiguration: .init(),
            streamDelegate: HTTP2IdleClose(channel: channel, timeout: core.settings.idleTimeout)
        ) { stream in
            stream.eventLoop.makeCompletedFuture {
                try stream.pipeline.syncOperations.addHandler(HTTP2FramePayloadToHTTP1ServerCodec())
                try stream.pipeline.syncOperations.addHandler(
                    DownstreamHandler(core: core, client: client, destination: destination,
                                      http2: viaHTTP2 ? upstreams.value : nil, gateway: gateway, tunnel: tunnel))
            }
        }
        try channel.pipeline.syncOperations.addHandler(CloseOnConnectionError(metrics: core.metrics))
    }

    /// NIOHTTP2 answers a connection-level protocol error with GOAWAY and reports it, but
    /// leaves the socket open: the connection is of no further use, so it is closed here
    /// (and counted as bad input).
    final class CloseOnConnectionError: ChannelInboundHandler {
        typealias InboundIn = Never
        let metrics: ProxyMetrics
        init(metrics: ProxyMetrics) { self.metrics = metrics }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            // One stream's error resets that stream only; the connection goes on.
            if error is NIOHTTP2Errors.StreamError { return }
            metrics.hostile(.badRequest)
            context.close(promise: nil)
        }
    }
}

/// Closes an HTTP/2 client connection that has had no open stream for `timeout`, as an
/// idle HTTP/1.1 keep-alive connection is closed: a connection that opens and then sends
/// nothing would otherwise hold its slot for good. A stream in progress, however quiet (a
/// gRPC stream), keeps the connection.
final class HTTP2IdleClose: NIOHTTP2StreamDelegate, @unchecked Sendable {
    // Touched only on the connection's event loop, where NIOHTTP2 calls the delegate.
    private let channel: any Channel
    private let timeout: TimeAmount
    private var open = 0
    private var timer: Scheduled<Void>?

    init(channel: any Channel, timeout: TimeAmount) {
        self.channel = channel
        self.timeout = timeout
        arm()
    }

    func streamCreated(_ id: HTTP2StreamID, channel: any Channel) {
        open += 1
        timer?.cancel()
        timer = nil
    }

    func streamClosed(_ id: HTTP2StreamID, channel: any Channel) {
        open -= 1
        if open == 0 { arm() }
    }

    private func arm() {
        timer?.cancel()
        let connection = channel
        timer = channel.eventLoop.scheduleTask(in: timeout) { connection.close(promise: nil) }
    }
}
