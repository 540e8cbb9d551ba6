import Foundation
import MeshModel
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOSSL
import NIOTLS

/// The sending end of an mTLS tunnel: a connection the datapath handed to the proxy because
/// its destination's node takes it only through a tunnel. The proxy opens TLS to that
/// node's tunnel port presenting the *source endpoint's* SVID, checks that the server is
/// that node (its SPIFFE ID), asks `CONNECT` for the original destination, and relays.
/// The client's bytes wait (no read) until the tunnel is open.
enum TunnelOutbound {
    static func configure(_ channel: any Channel, core: ProxyCore, route: Route, client: PeerAddress,
                          destination: PeerAddress) throws {
        guard let workload = core.policy.index.tunnelWorkload(client.ip) else {
            core.logger.info("tunnelled connection from an address that is no endpoint of this node refused",
                             metadata: ["source": "\(client)", "destination": "\(destination)"])
            throw ChannelError.inappropriateOperationForState
        }
        guard let node = route.nodeAddress else { throw ChannelError.inappropriateOperationForState }
        try channel.syncOptions?.setOption(.autoRead, value: false)
        try channel.syncOptions?.setOption(.allowRemoteHalfClosure, value: true)
        let sslContext = try core.tunnels.tls.clientContext(route.config, workload: workload)
        let (mine, theirs) = core.tunnelRelays(.outbound, sides: ("client", "tunnel"), source: client)
        let mineBound = NIOLoopBound(mine, eventLoop: channel.eventLoop)
        let theirsBound = NIOLoopBound(theirs, eventLoop: channel.eventLoop)
        let opener = TunnelOpener(core: core, source: client, destination: destination, expected: route.serverID,
                                  trustDomain: route.config.trustDomain,
                                  then: .relay(client: channel, clientRelay: mineBound, tunnelRelay: theirsBound))
        let connected = dial(core: core, route: route, node: node, sslContext: sslContext, opener: opener, on: channel.eventLoop)
        connected.whenFailure { _ in channel.close(promise: nil) }
        connected.whenSuccess { tunnel in
            // Whichever side goes first, the other follows until the relay takes over.
            // Also once relaying: a client channel closed before it was ever registered
            // (its listener went away) tells its relay nothing.
            channel.closeFuture.whenComplete { _ in tunnel.close(promise: nil) }
        }
    }
}

extension TunnelOutbound {
    /// The way to a destination that only the mTLS tunnel to its node reaches.
    struct Route {
        let config: ProxyTunnelConfig
        let peer: TunnelPeer

        /// The destination node's tunnel port.
        var nodeAddress: SocketAddress? { try? SocketAddress(ipAddress: peer.nodeIP.description, port: Int(config.port)) }

        /// The SPIFFE ID the node's tunnel port must present.
        var serverID: String { ProxyTunnelConfig.nodeSPIFFEID(trustDomain: config.trustDomain, node: peer.nodeName) }
    }

    /// Connects to the destination node's tunnel port and starts TLS there, with `opener`
    /// after it (which sends the CONNECT once the handshake is done). A failure to connect is
    /// counted and logged here; each caller says what it means for its client.
    private static func dial(core: ProxyCore, route: Route, node: SocketAddress, sslContext: NIOSSLContext,
                             opener: TunnelOpener, on loop: any EventLoop) -> EventLoopFuture<any Channel> {
        let openerBound = NIOLoopBound(opener, eventLoop: loop)
        let connecting = UpstreamConnector.connectRaw(to: node, from: .proxy, timeout: .seconds(5), on: loop) { tunnel in
            let sync = tunnel.pipeline.syncOperations
            try sync.addHandler(try NIOSSLClientHandler(context: sslContext, serverHostname: nil))
            try sync.addHandler(openerBound.value)
        }
        connecting.whenFailure { error in
            core.metrics.tunnelHandshake(.outbound, ok: false)
            core.logger.info("cannot reach the destination's node for an mTLS tunnel",
                             metadata: ["node": "\(route.peer.nodeName)", "address": "\(node)", "error": "\(error)"])
        }
        return connecting
    }

    /// Why a tunnel meant to carry HTTP requests did not open (the client gets a 502).
    struct NotOpened: Error, CustomStringConvertible {
        let description: String
    }

    /// An upstream connection for HTTP/1.1 requests that goes through the mTLS tunnel to the
    /// destination's node: for a flow whose source's own egress rules read its HTTP, so its
    /// requests are judged here before they enter the tunnel. `handler` is added once the
    /// tunnel is open, after NIO's HTTP client handlers; the future fails if it does not.
    static func connectHTTP(core: ProxyCore, route: Route, source: PeerAddress, destination: PeerAddress,
                            on loop: any EventLoop, handler: UpstreamHandler) -> EventLoopFuture<Void> {
        let boundHandler = NIOLoopBound(handler, eventLoop: loop)
        return open(core: core, route: route, source: source, destination: destination, on: loop,
                    connected: { boundHandler.value.willJoin($0) }) { sync in
            try sync.addHTTPClientHandlers(enableOutboundHeaderValidation: false)
            try sync.addHandler(boundHandler.value)
        }.map { _ in }
    }

    /// The same for an HTTP/2 client's requests: an HTTP/2 connection inside the tunnel,
    /// whose streams carry them (gRPC needs HTTP/2 end to end).
    static func connectHTTP2(core: ProxyCore, route: Route, source: PeerAddress, destination: PeerAddress,
                             on loop: any EventLoop) -> EventLoopFuture<(any Channel, NIOHTTP2Handler.StreamMultiplexer)> {
        let multiplexer = loop.makePromise(of: NIOHTTP2Handler.StreamMultiplexer.self)
        let opened = open(core: core, route: route, source: source, destination: destination, on: loop) { sync in
            // The far end never opens streams towards the proxy.
            multiplexer.succeed(try sync.configureHTTP2Pipeline(mode: .client, connectionConfiguration: .init(),
                                                                streamConfiguration: .init()) { $0.close() })
        }
        opened.whenFailure { multiplexer.fail($0) }
        return opened.flatMap { channel in multiplexer.futureResult.map { (channel, $0) } }
    }

    /// Opens a tunnel to `destination` as `source`'s workload, for HTTP: `add` puts the
    /// handlers that speak it on the open tunnel (after the opener, which then passes
    /// bytes through). `connected` learns the tunnel's channel before it is open.
    private static func open(core: ProxyCore, route: Route, source: PeerAddress, destination: PeerAddress, on loop: any EventLoop,
                             connected: @escaping (any Channel) -> Void = { _ in },
                             add: @escaping (ChannelPipeline.SynchronousOperations) throws -> Void) -> EventLoopFuture<any Channel> {
        let opened = loop.makePromise(of: (any Channel).self)
        guard let workload = core.policy.index.tunnelWorkload(source.ip) else {
            opened.fail(NotOpened(description: "\(source) is no endpoint of this node: no certificate to prove it"))
            return opened.futureResult
        }
        guard let node = route.nodeAddress else {
            opened.fail(NotOpened(description: "no address for node \(route.peer.nodeName)"))
            return opened.futureResult
        }
        let sslContext: NIOSSLContext
        do {
            sslContext = try core.tunnels.tls.clientContext(route.config, workload: workload)
        } catch {
            opened.fail(error)
            return opened.futureResult
        }
        let opener = TunnelOpener(core: core, source: source, destination: destination, expected: route.serverID,
                                  trustDomain: route.config.trustDomain, then: .http(opened: opened, add: add))
        let connecting = dial(core: core, route: route, node: node, sslContext: sslContext, opener: opener, on: loop)
        let boundConnected = NIOLoopBound(connected, eventLoop: loop)
        connecting.whenSuccess { boundConnected.value($0) }
        connecting.whenFailure { opened.fail($0) }
        return opened.futureResult
    }
}

/// On the tunnel's channel, after TLS: sends the CONNECT, reads the answer's head, then
/// joins the client connection and the tunnel, or (for HTTP requests judged at this end)
/// puts HTTP client handlers and the upstream handler on the tunnel.
final class TunnelOpener: ChannelInboundHandler {
    /// What the open tunnel is for.
    enum Then {
        /// Bytes, relayed both ways with the client's connection.
        case relay(client: any Channel, clientRelay: NIOLoopBound<TunnelRelay>, tunnelRelay: NIOLoopBound<TunnelRelay>)
        /// HTTP requests: `add` puts their handlers after the opener (the last handler then);
        /// `opened` tells the proxying side whether the tunnel opened.
        case http(opened: EventLoopPromise<any Channel>, add: (ChannelPipeline.SynchronousOperations) throws -> Void)
    }

    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let core: ProxyCore
    private let then: Then
    private let source: PeerAddress
    private let destination: PeerAddress
    private let expected: String
    private let trustDomain: String
    private let started = ContinuousClock.now
    private var handshaken = false
    private var head = TunnelHead(limit: 1024)
    private(set) var isRelaying = false
    /// Closed for a reason already logged.
    private var failed = false
    // The answer's head is read by hand, bounded (TunnelHead): NIO's HTTPResponseDecoder
    // would take a 200 to CONNECT without a length for a body running until the close.

    /// The tunnel has opened, or has been abandoned (which happens once, for the first reason).
    private var settled = false

    init(core: ProxyCore, source: PeerAddress, destination: PeerAddress, expected: String, trustDomain: String, then: Then) {
        self.core = core
        self.source = source
        self.destination = destination
        self.expected = expected
        self.trustDomain = trustDomain
        self.then = then
    }

    /// The tunnel will not carry anything: the client's connection closes, or the proxying
    /// handler learns why (its client gets a 502).
    private func abandon(_ why: String) {
        guard !settled else { return }
        settled = true
        switch then {
        case .relay(let client, _, _): client.close(promise: nil)
        case .http(let opened, _): opened.fail(TunnelOutbound.NotOpened(description: why))
        }
    }

    /// Connecting has its own timeout; the handshake and the answer to CONNECT together get
    /// the proxy's header timeout, so that a node that accepts and then says nothing does not
    /// hold the client.
    private var deadline: Scheduled<Void>?

    func handlerAdded(context: ChannelHandlerContext) {
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let timeout = core.settings.headerTimeout
        deadline = context.eventLoop.scheduleTask(in: timeout) {
            let (opener, context) = bound.value
            guard !opener.isRelaying, !opener.failed else { return }
            if opener.handshaken {
                opener.fail(context: context, "no answer to CONNECT within \(timeout.nanoseconds / 1_000_000_000) s")
            } else {
                opener.handshaken = true
                opener.handshakeFailed(.handshake, context: context, error: "no handshake within \(timeout.nanoseconds / 1_000_000_000) s")
            }
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) { deadline?.cancel() }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event, !handshaken {
            handshaken = true
            // The chain is verified; the server must be the destination's node.
            let check = TunnelTLS.identify(try? context.pipeline.syncOperations.nioSSL_peerCertificate(),
                                           trustDomain: trustDomain, expected: expected)
            if let reason = check.refusal {
                return handshakeFailed(reason, context: context, error: "the verified server certificate is not \(expected)")
            }
            core.metrics.tunnelHandshake(.outbound, ok: true)
            let request = "CONNECT \(destination) HTTP/1.1\r\nHost: \(destination)\r\nSwiftMesh-Source: \(source)\r\n\r\n"
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: request)), promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Once HTTP runs over the tunnel, its own handlers deal with what fails.
        if isRelaying, case .http = then { return context.fireErrorCaught(error) }
        if !handshaken {
            handshaken = true
            return handshakeFailed(TunnelTLS.classify(error, peer: try? context.pipeline.syncOperations.nioSSL_peerCertificate()),
                                   context: context, error: "\(error)")
        }
        if !failed {
            failed = true
            core.logger.debug(isRelaying ? "mTLS tunnel failed" : "mTLS tunnel failed before the answer to CONNECT",
                              metadata: ["source": "\(source)", "destination": "\(destination)", "error": "\(error)"])
        }
        context.close(promise: nil)
        abandon("the tunnel failed before the answer to CONNECT: \(error)")
    }

    private func handshakeFailed(_ reason: TunnelRefusal, context: ChannelHandlerContext, error: String) {
        failed = true
        core.metrics.tunnelHandshake(.outbound, ok: false)
        core.logger.info("mTLS tunnel handshake failed", metadata: [
            "destination": "\(destination)", "expected": "\(expected)", "reason": "\(reason.rawValue)", "error": "\(error)"])
        core.reportTunnel(.outbound, source: source, destination: destination, peer: nil, status: 502, rule: nil,
                          error: reason.rawValue, started: started)
        context.close(promise: nil)
        abandon("the mTLS handshake with the destination's node failed (\(reason.rawValue)): \(error)")
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !isRelaying {
            if !failed {
                core.logger.debug("mTLS tunnel closed before the answer to CONNECT",
                                  metadata: ["source": "\(source)", "destination": "\(destination)", "handshaken": "\(handshaken)"])
            }
            abandon("the tunnel closed before the answer to CONNECT")
        }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if isRelaying { return context.fireChannelRead(data) }
        // A refused server may have sent its answer in the flight of its Finished.
        guard !failed else { return }
        var bytes = unwrapInboundIn(data)
        let lines: [Substring], rest: ByteBuffer
        switch head.add(&bytes) {
        case .more: return
        case .tooLong: return fail(context: context, "the answer to CONNECT has no end within \(head.limit) bytes")
        case .complete(let l, let r): (lines, rest) = (l, r)
        }
        let statusLine: [Substring] = lines.first?.split(separator: " ") ?? []
        let status: Int = statusLine.count >= 2 ? Int(statusLine[1]) ?? 0 : 0
        guard status == 200 else {
            let reason = TunnelHead.header("swiftmesh-reason", in: lines) ?? "status \(status)"
            core.reportTunnel(.outbound, source: source, destination: destination, peer: expected, status: status, rule: nil,
                              error: reason, started: started)
            return fail(context: context, "the destination's node refused: \(reason)")
        }
        isRelaying = true
        deadline?.cancel()
        core.metrics.tunnelOpened(1)
        context.channel.closeFuture.whenComplete { [core] _ in core.metrics.tunnelOpened(-1) }
        core.reportTunnel(.outbound, source: source, destination: destination, peer: expected, status: 200, rule: nil, error: nil,
                          started: started)
        switch then {
        case .relay(let client, let clientRelay, let tunnelRelay):
            do {
                try context.pipeline.syncOperations.addHandler(tunnelRelay.value, position: .after(context.handler))
                try client.pipeline.syncOperations.addHandler(clientRelay.value)
            } catch {
                return fail(context: context, "cannot join the connections: \(error)")
            }
        case .http(let opened, let add):
            do {
                try add(context.pipeline.syncOperations)
            } catch {
                return fail(context: context, "cannot put HTTP on the tunnel: \(error)")
            }
            settled = true
            opened.succeed(context.channel)
        }
        if rest.readableBytes > 0 {
            context.fireChannelRead(wrapInboundOut(rest))
            context.fireChannelReadComplete()
        }
        guard case .relay(let client, _, _) = then else { return }
        // Not `client.isActive`: the client's channel may not be active *yet*. The server
        // bootstrap runs the initializer (which opened this tunnel) on the child's loop and
        // registers the channel after a hop to the accepting loop and back, and a tunnel can
        // open in that time. A client that closed before this point closed the tunnel
        // (its closeFuture, in configure) or made adding the relay above fail.
        client.setOption(.autoRead, value: true).whenFailure { [client] _ in client.close(promise: nil) }
    }

    private func fail(context: ChannelHandlerContext, _ why: String) {
        failed = true
        core.logger.info("tunnelled connection not opened", metadata: ["destination": "\(destination)", "why": "\(why)"])
        abandon(why)
        context.close(promise: nil)
    }
}

