import Foundation
import Logging
import MeshModel
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOTLS
import Prometheus

/// The receiving end of the mTLS tunnels: a TLS listener on the tunnel port (15008) of
/// every node, started when meshd's configuration has a tunnel section. Each connection
/// carries one TCP connection: after the handshake the peer sends
/// `CONNECT ip:port HTTP/1.1` with `SwiftMesh-Source: ip:port`; the proxy checks the
/// certificate's SPIFFE ID against the claimed source and against the destination's
/// authentication rules before a byte reaches the destination, then connects to it from
/// the source's own address (the datapath judges it as that source) and relays.
final class TunnelService: Sendable {
    private let group: any EventLoopGroup
    let tls = TunnelTLS()
    private let listener = PortListeners()

    init(group: any EventLoopGroup) { self.group = group }

    /// Starts, moves or stops the listener to match `config` (nil: no tunnels).
    func update(_ config: ProxyTunnelConfig?, core: ProxyCore) {
        let group = self.group, service = self
        listener.update(Set(config.map { [$0.port] } ?? []), bind: { port in
            ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 1024)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(.allowRemoteHalfClosure, value: true)
                .childChannelInitializer { channel in
                    guard core.admit(channel) else {
                        channel.close(promise: nil)
                        return channel.eventLoop.makeSucceededVoidFuture()
                    }
                    return channel.eventLoop.makeCompletedFuture {
                        do { try service.configureInbound(channel, core: core) } catch {
                            core.logger.info("cannot take an mTLS tunnel connection", metadata: ["error": "\(error)"])
                            throw error
                        }
                    }
                }
                .bind(host: "0.0.0.0", port: Int(port))
        }, up: { port in
            core.logger.info("mTLS tunnel listener up", metadata: ["port": "\(port)"])
        }, failed: { port, error in
            core.logger.error("cannot listen for mTLS tunnels", metadata: ["port": "\(port)", "error": "\(error)"])
        })
    }

    private func configureInbound(_ channel: any Channel, core: ProxyCore) throws {
        guard let t = core.policy.index.config.tunnel else { throw ChannelError.inappropriateOperationForState }
        let sync = channel.pipeline.syncOperations
        try sync.addHandler(TLSRecordSniffer(core: core))
        try sync.addHandler(NIOSSLServerHandler(context: try tls.serverContext(t)))
        try sync.addHandler(TunnelAcceptHandler(core: core, trustDomain: t.trustDomain))
    }
}

extension ProxyMetrics {
    enum TunnelDirection: String { case inbound, outbound }

    func tunnelHandshake(_ direction: TunnelDirection, ok: Bool) {
        keptCounter("mesh_mtls_handshakes_total", "mTLS tunnel handshakes, by end and outcome (refused: see mesh_mtls_refusals_total).",
                    labels: [("direction", direction.rawValue), ("result", ok ? "ok" : "refused")]).increment()
    }

    func tunnelRefused(_ reason: TunnelRefusal) {
        keptCounter("mesh_mtls_refusals_total", "Tunnelled connections refused, by reason.",
                    labels: [("reason", reason.rawValue)]).increment()
    }

    /// The counter of application bytes through tunnels at one end: the relays of a
    /// connection take it once and add to it on every read.
    func tunnelBytes(_ direction: TunnelDirection) -> Counter {
        keptCounter("mesh_mtls_bytes_total", "Application bytes carried through mTLS tunnels, by the end that counted them.",
                    labels: [("direction", direction.rawValue)])
    }

    func tunnelOpened(_ delta: Int) {
        registry.makeGauge(descriptor: .init(metricName: "mesh_mtls_connections_active", unitName: "",
                                             helpText: "Connections open through mTLS tunnels (both ends)."))
            .increment(by: Double(delta))
    }
}

extension ProxyCore {
    /// The two relays of a tunnelled connection at one end: each counts the bytes it reads
    /// in mesh_mtls_bytes_total; at debug level, a side that ends abnormally (an error, or
    /// closed before a byte) logs how, named by `sides`.
    func tunnelRelays(_ direction: ProxyMetrics.TunnelDirection, sides: (String, String),
                      source: PeerAddress) -> (TunnelRelay, TunnelRelay) {
        let bytes = metrics.tunnelBytes(direction)
        let (a, b) = TunnelRelay.pair(countingA: { bytes.increment(by: Int64($0)) }, countingB: { bytes.increment(by: Int64($0)) })
        if logger.logLevel <= .debug {
            let logger = logger
            for (relay, side) in [(a, sides.0), (b, sides.1)] {
                let end = "\(direction.rawValue) \(side) side"
                relay.ended = { logger.debug("tunnel relay ended", metadata: ["end": "\(end)", "source": "\(source)", "how": "\($0)"]) }
            }
        }
        return (a, b)
    }

    /// One monitor event per tunnelled connection (method CONNECT, the path its destination).
    func reportTunnel(_ direction: ProxyMetrics.TunnelDirection, source: PeerAddress, destination: PeerAddress,
                      peer: String?, status: Int, rule: (id: UInt32, text: String)?, error: String?, started: ContinuousClock.Instant) {
        guard events.isStreaming else { return }
        let index = policy.index
        let src = index.endpoint(source.ip), dst = index.endpoint(destination.ip)
        events.publish(L7Event(
            timestamp: UInt64(Date().timeIntervalSince1970 * 1_000_000_000), source: source.description,
            sourceEndpoint: src.map { "\($0.namespace)/\($0.name)" }, sourceIdentity: index.identity(of: source.ip),
            destination: destination.description, destinationEndpoint: dst.map { "\($0.namespace)/\($0.name)" },
            method: "CONNECT", path: destination.description, host: "", status: status,
            verdict: status == 200 ? .forwarded : status == 403 ? .denied : .error,
            latencySeconds: (ContinuousClock.now - started).seconds, ruleID: rule?.id ?? 0, rule: rule?.text ?? "",
            error: error, tunnel: direction.rawValue, peerIdentity: peer))
    }
}

extension PeerAddress {
    /// `ip:port`, as CONNECT and SwiftMesh-Source carry them.
    init?(text: String) {
        guard let colon = text.lastIndex(of: ":"), let ip = IPv4Address(String(text[..<colon])),
              let port = UInt16(text[text.index(after: colon)...]), port != 0 else { return nil }
        self.init(ip: ip, port: port)
    }
}

/// Plaintext to the tunnel port is refused before TLS sees it: the first byte of a TLS
/// connection is a handshake record (0x16).
final class TLSRecordSniffer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    private let core: ProxyCore
    private var checked = false

    init(core: ProxyCore) { self.core = core }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if !checked {
            let bytes = unwrapInboundIn(data)
            guard let first = bytes.getInteger(at: bytes.readerIndex, as: UInt8.self) else { return }
            checked = true
            if first != 0x16 {
                core.metrics.tunnelHandshake(.inbound, ok: false)
                core.metrics.tunnelRefused(.notTLS)
                core.logger.debug("plaintext to the mTLS tunnel port refused", metadata: ["client": "\(context.remoteAddress.map { "\($0)" } ?? "?")"])
                // Counted here: the handshake that NIOSSL then reports failed is not another refusal.
                context.fireUserInboundEventTriggered(PlaintextRefused())
                context.close(promise: nil)
                return
            }
        }
        context.fireChannelRead(data)
    }
}

/// TLSRecordSniffer's word to TunnelAcceptHandler that it refused (and counted) the connection.
struct PlaintextRefused {}

/// After the handshake: reads the CONNECT, decides, connects upstream, then relays.
///
/// The head is read by hand, bounded (TunnelHead): NIO's HTTP decoder takes CONNECT for an
/// upgrade and hands on raw bytes only once removed, so HTTP parts and tunnel bytes would
/// share this handler's input; three short lines need no parser of their own.
final class TunnelAcceptHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let core: ProxyCore
    private let trustDomain: String
    /// The SPIFFE ID of the verified client certificate, once the handshake is done.
    private var peer: String?
    private let started = ContinuousClock.now
    private enum State { case handshaking, waitingHead, connecting, relaying, done }
    private var state = State.handshaking
    private var head = TunnelHead(limit: 4096)
    /// Bytes that came after the head, before the relay was in place.
    private var early = ByteBuffer()
    static let maxEarly = 64 * 1024

    init(core: ProxyCore, trustDomain: String) {
        self.core = core
        self.trustDomain = trustDomain
    }

    func handlerAdded(context: ChannelHandlerContext) {
        // A peer that never finishes its handshake or its CONNECT does not hold the slot.
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: core.settings.headerTimeout) {
            let (handler, context) = bound.value
            guard handler.state == .handshaking || handler.state == .waitingHead else { return }
            handler.core.metrics.hostile(.headerTimeout)
            handler.state = .done
            context.close(promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is PlaintextRefused {
            state = .done
            return
        }
        if case TLSUserEvent.handshakeCompleted = event, state == .handshaking {
            // The chain is verified; no byte is read before the leaf's SPIFFE ID is known.
            let check = TunnelTLS.identify(try? context.pipeline.syncOperations.nioSSL_peerCertificate(),
                                           trustDomain: trustDomain, expected: nil)
            if let reason = check.refusal {
                return refuseHandshake(reason, context: context, error: "the verified client certificate names no single SPIFFE ID of \(trustDomain)")
            }
            peer = check.spiffeID
            state = .waitingHead
            core.metrics.tunnelHandshake(.inbound, ok: true)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if state == .handshaking {
            // The failed connection still holds the peer's leaf, which tells why.
            let reason = TunnelTLS.classify(error, peer: try? context.pipeline.syncOperations.nioSSL_peerCertificate())
            return refuseHandshake(reason, context: context, error: "\(error)")
        }
        if state != .relaying && state != .done {
            core.logger.debug("tunnelled connection failed before its relay", metadata: [
                "client": "\(context.remoteAddress.map { "\($0)" } ?? "?")", "state": "\(state)", "error": "\(error)"])
        }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if state != .relaying && state != .done {
            core.logger.debug("tunnelled connection closed by the peer before its relay", metadata: ["state": "\(state)"])
        }
        context.fireChannelInactive()
    }

    private func refuseHandshake(_ reason: TunnelRefusal, context: ChannelHandlerContext, error: String) {
        state = .done
        core.metrics.tunnelHandshake(.inbound, ok: false)
        core.metrics.tunnelRefused(reason)
        core.logger.info("mTLS tunnel handshake refused", metadata: [
            "client": "\(context.remoteAddress.map { "\($0)" } ?? "?")", "reason": "\(reason.rawValue)", "error": "\(error)"])
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        switch state {
        case .relaying:
            context.fireChannelRead(data)
        case .connecting:
            // A peer that does not wait for the answer may send a little ahead, not more.
            early.writeBuffer(&bytes)
            if early.readableBytes > Self.maxEarly {
                core.metrics.tunnelRefused(.badRequest)
                state = .done
                context.close(promise: nil)
            }
        case .waitingHead:
            switch head.add(&bytes) {
            case .more:
                break
            case .tooLong:
                refuse(.badRequest, status: .badRequest, context: context, source: nil, destination: nil,
                       peer: peer)
            case .complete(let lines, var rest):
                state = .connecting
                early.writeBuffer(&rest)
                decide(lines, context: context)
            }
        case .handshaking, .done:
            break
        }
    }

    /// Hands on the bytes that came early, now that something after this handler takes them.
    private func flushEarly(context: ChannelHandlerContext) {
        guard early.readableBytes > 0 else { return }
        let bytes = early
        early = ByteBuffer()
        context.fireChannelRead(wrapInboundOut(bytes))
        context.fireChannelReadComplete()
    }

    private func refuse(_ reason: TunnelRefusal, status: HTTPResponseStatus, context: ChannelHandlerContext,
                        source: PeerAddress?, destination: PeerAddress?, peer: String?) {
        state = .done
        core.metrics.tunnelRefused(reason)
        core.logger.info("tunnelled connection refused", metadata: [
            "source": "\(source.map { "\($0)" } ?? "?")", "destination": "\(destination.map { "\($0)" } ?? "?")",
            "peer": "\(peer ?? "?")", "reason": "\(reason.rawValue)"])
        if let source, let destination {
            core.reportTunnel(.inbound, source: source, destination: destination, peer: peer, status: Int(status.code), rule: nil,
                              error: reason.rawValue, started: started)
        }
        let text = "HTTP/1.1 \(status.code) \(status.reasonPhrase)\r\nSwiftMesh-Reason: \(reason.rawValue)\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        context.writeAndFlush(wrapInboundOut(ByteBuffer(string: text)), promise: nil)
        context.close(promise: nil)
    }

    private func decide(_ lines: [Substring], context: ChannelHandlerContext) {
        let index = core.policy.index
        guard index.config.tunnel != nil, let peer else {
            return refuse(.badIdentity, status: .forbidden, context: context, source: nil, destination: nil, peer: peer)
        }
        let request = lines.first?.split(separator: " ", omittingEmptySubsequences: false) ?? []
        let destination = request.count == 3 ? PeerAddress(text: String(request[1])) : nil
        let source = TunnelHead.header("swiftmesh-source", in: lines).flatMap { PeerAddress(text: $0) }
        guard request.count == 3, request[0] == "CONNECT", request[2] == "HTTP/1.1", let destination, let source,
              index.tunnelWorkload(destination.ip) != nil else {
            return refuse(.badRequest, status: .badRequest, context: context, source: source, destination: destination, peer: peer)
        }
        // The claimed source must be an endpoint whose SVID is the one presented.
        guard let claimed = index.tunnelPeer(source.ip), claimed.spiffeID == peer else {
            return refuse(.identityMismatch, status: .forbidden, context: context, source: source, destination: destination, peer: peer)
        }
        // Where rules of the destination require authentication on this port, one must name the peer.
        let rules = index.ingressAuthRules(destination.ip).filter {
            $0.fromPort <= destination.port && destination.port <= $0.toPort
        }
        let allowedBy = rules.first { $0.covers(identity: claimed.identity, port: destination.port) }
        if !rules.isEmpty && allowedBy == nil {
            return refuse(.identityNotAllowed, status: .forbidden, context: context, source: source, destination: destination, peer: peer)
        }
        let downstream = context.channel
        // A destination with HTTP rules on its ingress: the tunnel's bytes go through the
        // proxy's HTTP handling as if the source had connected here, so that those rules
        // judge each request (and its upstream leaves from the source's address).
        if core.policy.index.config.l7.contains(where: { $0.endpoint == destination.ip && $0.direction == .ingress }) {
            state = .relaying
            core.reportTunnel(.inbound, source: source, destination: destination, peer: peer, status: 200,
                              rule: allowedBy.map { ($0.ruleID, $0.rule) }, error: nil, started: started)
            context.writeAndFlush(wrapInboundOut(ByteBuffer(string: "HTTP/1.1 200 OK\r\n\r\n")), promise: nil)
            do {
                try ConnectionPipeline.configureHTTP(downstream, core: core, client: source.socketAddress, destination: destination.socketAddress)
                flushEarly(context: context)
            } catch {
                downstream.close(promise: nil)
            }
            return
        }
        let (mine, theirs) = core.tunnelRelays(.inbound, sides: ("tunnel", "upstream"), source: source)
        let theirsBound = NIOLoopBound(theirs, eventLoop: context.eventLoop)
        let connected = UpstreamConnector.connectRaw(
            to: destination.socketAddress, from: .clientAddress(source.socketAddress), timeout: .seconds(5), on: context.eventLoop) { channel in
            try channel.pipeline.syncOperations.addHandler(theirsBound.value)
        }
        let bound = NIOLoopBound((self, context, mine), eventLoop: context.eventLoop)
        connected.whenComplete { result in
            let (handler, context, mine) = bound.value
            switch result {
            case .success(let up):
                guard downstream.isActive else { return up.close(promise: nil) }
                handler.state = .relaying
                handler.core.metrics.tunnelOpened(1)
                up.closeFuture.whenComplete { [core = handler.core] _ in core.metrics.tunnelOpened(-1) }
                handler.core.reportTunnel(.inbound, source: source, destination: destination, peer: peer, status: 200,
                                          rule: allowedBy.map { ($0.ruleID, $0.rule) }, error: nil, started: handler.started)
                context.writeAndFlush(handler.wrapInboundOut(ByteBuffer(string: "HTTP/1.1 200 OK\r\n\r\n")), promise: nil)
                do {
                    try context.pipeline.syncOperations.addHandler(mine, position: .after(context.handler))
                    handler.flushEarly(context: context)
                } catch {
                    downstream.close(promise: nil)
                    up.close(promise: nil)
                }
            case .failure(let error):
                handler.core.metrics.upstreamError(.connectRefused)
                handler.core.logger.info("tunnelled connection: destination unreachable",
                                         metadata: ["destination": "\(destination)", "error": "\(error)"])
                handler.state = .done
                handler.core.reportTunnel(.inbound, source: source, destination: destination, peer: peer, status: 502, rule: nil,
                                          error: "upstream: \(error)", started: handler.started)
                context.writeAndFlush(handler.wrapInboundOut(ByteBuffer(string: "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")),
                                      promise: nil)
                context.close(promise: nil)
            }
        }
    }
}

/// The head of a tunnel's CONNECT or of its answer, read by hand and bounded: lines up to
/// the empty one, and the bytes after it.
struct TunnelHead {
    let limit: Int
    private var buffer = ByteBuffer()

    init(limit: Int) { self.limit = limit }

    enum Progress {
        case more
        case tooLong
        case complete(lines: [Substring], rest: ByteBuffer)
    }

    mutating func add(_ bytes: inout ByteBuffer) -> Progress {
        buffer.writeBuffer(&bytes)
        let view = buffer.readableBytesView
        guard let end = view.firstRange(of: [13, 10, 13, 10]) else { return buffer.readableBytes > limit ? .tooLong : .more }
        guard end.lowerBound - view.startIndex <= limit else { return .tooLong }
        let text = String(decoding: view[view.startIndex..<end.lowerBound], as: UTF8.self)
        let rest = buffer.getSlice(at: end.upperBound, length: view.endIndex - end.upperBound) ?? ByteBuffer()
        return .complete(lines: text.split(separator: "\r\n", omittingEmptySubsequences: false), rest: rest)
    }

    /// A header's value (names compare without case), trimmed.
    static func header(_ name: String, in lines: [Substring]) -> String? {
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":"), line[..<colon].lowercased() == name else { continue }
            return line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return nil
    }
}
