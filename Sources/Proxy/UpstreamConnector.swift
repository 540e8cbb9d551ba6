import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix

/// Opens the proxy's connections upstream.
enum UpstreamConnector {
    /// Where an upstream connection leaves from.
    enum Source {
        /// Wherever the kernel picks: the destination is not a node endpoint.
        case proxy
        /// Wherever the kernel picks, for the ingress gateway: the receiving endpoint's
        /// datapath judges it as reserved:ingress (MESH_MARK_GATEWAY).
        case gateway
        /// The client's own address and port (a forwarded connection to a node endpoint),
        /// so the receiver sees, and its policy judges, the original client.
        case clientAddressAndPort(SocketAddress)
        /// The client's address with a port of the kernel's choosing: a routed request to a
        /// node endpoint. The client's own port cannot be reused, since one client
        /// connection may have connections open to several backends at once.
        case clientAddress(SocketAddress)

        var isGateway: Bool { if case .gateway = self { true } else { false } }
    }

    /// Connects `handler` to `destination`, carrying the from-proxy mark so the datapath
    /// does not redirect it back here.
    static func connect(to destination: SocketAddress, from source: Source, timeout: TimeAmount,
                        on loop: any EventLoop, handler: UpstreamHandler) -> EventLoopFuture<any Channel> {
        // The initializer runs on `loop`, the loop the handler was made on.
        let boundHandler = NIOLoopBound(handler, eventLoop: loop)
        return bootstrap(from: source, timeout: timeout, on: loop).channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                // NIO's outbound header validators (one per direction) cost about 4% of the
                // proxy's time and check nothing new here: every header the proxy sends was
                // either parsed by llhttp, which refuses CR, LF and NUL in names and values,
                // or comes from a route filter, whose names and values meshd checked when it
                // read the HTTPRoute; the rest are the proxy's own constants.
                try channel.pipeline.syncOperations.addHTTPClientHandlers(enableOutboundHeaderValidation: false)
                try channel.pipeline.syncOperations.addHandler(boundHandler.value)
            }
        }.connect(to: destination)
    }

    /// A connection for raw bytes (a tunnelled TCP connection): `initialize` adds its handlers.
    static func connectRaw(to destination: SocketAddress, from source: Source, timeout: TimeAmount, on loop: any EventLoop,
                           initialize: @escaping @Sendable (any Channel) throws -> Void) -> EventLoopFuture<any Channel> {
        bootstrap(from: source, timeout: timeout, on: loop)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try initialize(channel) } }
            .connect(to: destination)
    }

    /// An HTTP/2 connection (h2c, prior knowledge) to `destination`, for the request
    /// streams of an HTTP/2 client: its stream multiplexer once connected.
    static func connectHTTP2(to destination: SocketAddress, from source: Source, timeout: TimeAmount,
                             on loop: any EventLoop) -> EventLoopFuture<(any Channel, NIOHTTP2Handler.StreamMultiplexer)> {
        let multiplexer = loop.makePromise(of: NIOHTTP2Handler.StreamMultiplexer.self)
        let connected = bootstrap(from: source, timeout: timeout, on: loop).channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                // A backend never opens streams towards the proxy (no server push).
                multiplexer.succeed(try channel.pipeline.syncOperations.configureHTTP2Pipeline(
                    mode: .client, connectionConfiguration: .init(), streamConfiguration: .init()
                ) { stream in stream.close() })
            }
        }.connect(to: destination)
        // A connection that never got as far as its initializer still settles the promise.
        connected.whenFailure { multiplexer.fail($0) }
        return connected.flatMap { channel in multiplexer.futureResult.map { (channel, $0) } }
    }

    private static func bootstrap(from source: Source, timeout: TimeAmount, on loop: any EventLoop) -> ClientBootstrap {
        var bootstrap = ClientBootstrap(group: loop)
            .connectTimeout(timeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(TransparentSocket.soMark,
                           value: source.isGateway ? TransparentSocket.fromGatewayMark : TransparentSocket.fromProxyMark)
        switch source {
        case .proxy, .gateway:
            break
        case .clientAddressAndPort(let client):
            bootstrap = bootstrap
                .channelOption(TransparentSocket.ipTransparent, value: 1)
                .channelOption(.socketOption(.so_reuseaddr), value: 1)
                .bind(to: client)
        case .clientAddress(var client):
            client.port = 0
            bootstrap = bootstrap
                .channelOption(TransparentSocket.ipTransparent, value: 1)
                // The port is then picked at connect(), where the 4-tuple is known, rather
                // than at bind(), which would hold a port per client address.
                .channelOption(TransparentSocket.bindAddressNoPort, value: 1)
                .bind(to: client)
        }
        return bootstrap
    }
}
