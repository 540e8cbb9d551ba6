import Logging
import MeshModel
import NIOCore
import NIOHTTP1

/// One client connection: judges each request under L7 policy, answers the refused ones
/// itself and forwards the allowed ones over one upstream connection to the original
/// destination, streaming bodies both ways with back-pressure.
///
/// HTTPServerPipelineHandler sits before it, so exchanges arrive one at a time: the next
/// request is delivered only once this one's response has ended.
final class DownstreamHandler: ChannelDuplexHandler, UpstreamDelegate {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let core: ProxyCore
    private let client: PeerAddress
    private let clientAddress: SocketAddress
    private let destination: PeerAddress
    private let destinationAddress: SocketAddress
    private var context: ChannelHandlerContext?
    private var upstream: UpstreamHandler?
    private var exchange: Exchange?
    /// A read the downstream asked for while upstream could take no more bytes.
    private var readPending = false

    init(core: ProxyCore, client: SocketAddress, destination: SocketAddress) throws {
        guard let clientPeer = PeerAddress(client), let destinationPeer = PeerAddress(destination) else {
            throw ChannelError.badInterfaceAddressFamily
        }
        self.core = core
        self.client = clientPeer
        self.clientAddress = client
        self.destination = destinationPeer
        self.destinationAddress = destination
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    // MARK: requests from the client

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch Self.unwrapInboundIn(data) {
        case .head(let head):
            begin(head, context: context)
        case .body(let body):
            guard exchange?.forwarding == true else { return }
            exchange?.record.requestBodyBytes += body.readableBytes
            upstream?.send(.body(.byteBuffer(body)))
        case .end(let trailers):
            guard exchange != nil else { return }
            exchange?.requestEnded = true
            if exchange?.forwarding == true {
                upstream?.send(.end(trailers))
                startResponseTimer(context: context)
            }
            finishIfDone(context: context)
        }
    }

    private func begin(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        context.triggerUserOutboundEvent(ExchangeActivity.headReceived, promise: nil)
        exchange = Exchange(record: ExchangeRecord(started: .now, method: head.method.rawValue, target: head.uri,
                                                   host: head.headers.first(name: "host") ?? "",
                                                   source: client, destination: destination),
                            version: head.version, keepAlive: head.isKeepAlive)
        if head.asksForAnotherProtocol {
            // The decoder stops parsing after such a request, so the connection cannot go on.
            answer(.notImplemented, body: "Upgrade and CONNECT are not supported\r\n", verdict: .error,
                   error: "protocol upgrade or CONNECT not supported", close: true)
            return
        }
        let index = core.policy.index
        let verdict = index.decide(head.l7Request, source: client.ip, destination: destination.ip, port: destination.port)
        exchange?.record.ruleID = verdict.ruleID
        exchange?.record.rule = verdict.rule
        guard verdict.allowed else {
            answer(.forbidden, body: "Access denied\r\n", verdict: .denied, error: nil, close: false)
            return
        }
        exchange?.forwarding = true
        let link = upstream ?? connect(transparent: index.endpoint(destination.ip) != nil, context: context)
        link.send(.head(head.forUpstream))
    }

    /// The upstream's time to answer runs from the end of the request, as a long upload
    /// is not a slow upstream; connecting has its own timeout of the same length.
    private func startResponseTimer(context: ChannelHandlerContext) {
        guard exchange?.responseStarted == false else { return }
        let loopBoundSelf = NIOLoopBound(self, eventLoop: context.eventLoop)
        exchange?.responseTimer = context.eventLoop.scheduleTask(in: core.settings.upstreamTimeout) {
            loopBoundSelf.value.upstreamFailed(.responseTimeout)
        }
    }

    private func connect(transparent: Bool, context: ChannelHandlerContext) -> UpstreamHandler {
        let handler = UpstreamHandler(delegate: self)
        upstream = handler
        let loopBoundSelf = NIOLoopBound(self, eventLoop: context.eventLoop)
        let loopBoundHandler = NIOLoopBound(handler, eventLoop: context.eventLoop)
        UpstreamConnector.connect(to: destinationAddress, transparentSource: transparent ? clientAddress : nil,
                                  timeout: core.settings.upstreamTimeout, on: context.eventLoop, handler: handler)
            .whenFailure { error in
                let this = loopBoundSelf.value
                guard this.upstream === loopBoundHandler.value else { return }
                this.upstream = nil
                this.upstreamFailed(.connectFailed(error))
            }
        return handler
    }

    // MARK: answers the proxy gives itself

    /// Sends a short text response of the proxy's own and discards the rest of the request.
    private func answer(_ status: HTTPResponseStatus, body: String, verdict: L7Event.Verdict, error: String?, close: Bool) {
        guard let context, var current = exchange, !current.responseStarted else { return }
        current.responseTimer?.cancel()
        current.responseTimer = nil
        current.forwarding = false
        current.responseStarted = true
        current.responseEnded = true
        current.record.status = Int(status.code)
        current.record.verdict = verdict
        current.record.error = error
        let closeAfter = close || !current.keepAlive
        exchange = current
        var headers = HTTPHeaders([("content-type", "text/plain; charset=utf-8"), ("content-length", String(body.utf8.count))])
        if closeAfter { headers.add(name: "connection", value: "close") }
        context.write(Self.wrapOutboundOut(.head(HTTPResponseHead(version: current.version, status: status, headers: headers))),
                      promise: nil)
        context.write(Self.wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: body)))), promise: nil)
        // Finished before the end is written: writing it lets the pipelining handler deliver
        // the next request, which must find no exchange in progress.
        finishIfDone(context: context)
        writeEnd(nil, closeAfter: closeAfter, context: context)
        // A read held for an upstream that is gone now goes to discarding the body.
        resumeReadingIfPossible()
    }

    private func writeEnd(_ trailers: HTTPHeaders?, closeAfter: Bool, context: ChannelHandlerContext) {
        let written = context.writeAndFlush(Self.wrapOutboundOut(.end(trailers)))
        if closeAfter {
            let channel = context.channel
            written.whenComplete { _ in channel.close(promise: nil) }
        }
    }

    private func upstreamFailed(_ failure: UpstreamFailure) {
        guard let current = exchange, current.forwarding, !current.responseStarted else { return }
        core.metrics.upstreamError(failure.reason)
        // Whatever it might still send belongs to this request, not to the next one.
        upstream?.close()
        upstream = nil
        answer(failure.status, body: failure.body, verdict: .error, error: failure.message, close: false)
    }

    private func finishIfDone(context: ChannelHandlerContext) {
        guard var done = exchange, done.requestEnded, done.responseEnded else { return }
        exchange = nil
        done.record.duration = .now - done.record.started
        core.reporter.report(done.record)
        context.triggerUserOutboundEvent(ExchangeActivity.exchangeComplete, promise: nil)
    }

    // MARK: responses from upstream

    func upstreamConnected(_ upstream: UpstreamHandler) { resumeReadingIfPossible() }

    func upstreamReceived(_ part: HTTPClientResponsePart, from upstream: UpstreamHandler) {
        guard let context, let current = exchange, current.forwarding, !current.responseEnded else {
            // Nothing is waiting for it: an upstream talking out of turn cannot be trusted.
            upstream.close()
            if self.upstream === upstream { self.upstream = nil }
            return
        }
        switch part {
        case .head(let head):
            current.responseTimer?.cancel()
            let closeAfter = !current.keepAlive || (current.version == .http1_0 && !head.headers.contains(name: "content-length"))
            exchange?.responseTimer = nil
            exchange?.responseStarted = true
            exchange?.upstreamKeepsAlive = head.isKeepAlive
            exchange?.closeAfterResponse = closeAfter
            exchange?.record.status = Int(head.status.code)
            var headers = HopByHop.stripped(head.headers)
            if closeAfter { headers.add(name: "connection", value: "close") }
            else if current.version == .http1_0 { headers.add(name: "connection", value: "keep-alive") }
            context.write(Self.wrapOutboundOut(.head(HTTPResponseHead(version: current.version, status: head.status,
                                                                      headers: headers))), promise: nil)
        case .body(let body):
            exchange?.record.responseBodyBytes += body.readableBytes
            context.write(Self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        case .end(let trailers):
            exchange?.responseEnded = true
            if !current.upstreamKeepsAlive {
                upstream.close()
                if self.upstream === upstream { self.upstream = nil }
            }
            finishIfDone(context: context)
            writeEnd(trailers, closeAfter: current.closeAfterResponse, context: context)
        }
    }

    func upstreamReadComplete() { context?.flush() }

    func upstreamWritabilityChanged(_ upstream: UpstreamHandler) { resumeReadingIfPossible() }

    func upstreamClosed(_ upstream: UpstreamHandler, error: (any Error)?) {
        guard self.upstream === upstream else { return }
        self.upstream = nil
        guard let current = exchange, current.forwarding, !current.responseEnded else { return }
        guard current.responseStarted else {
            upstreamFailed(.closedBeforeResponse(error))
            return
        }
        // Part of the response is already with the client: closing is the only way left to
        // tell it the response is cut short.
        core.metrics.upstreamError(.reset)
        exchange?.record.error = "upstream closed in the middle of the response"
        exchange?.requestEnded = true
        exchange?.responseEnded = true
        if let context { finishIfDone(context: context) }
        context?.close(promise: nil)
    }

    var downstreamIsWritable: Bool { context?.channel.isWritable ?? false }

    // MARK: back-pressure and teardown

    func read(context: ChannelHandlerContext) {
        if mustHoldReads {
            readPending = true
            return
        }
        context.read()
    }

    /// Request bytes would go upstream, which cannot take them now (connecting, or its
    /// socket buffer is full).
    private var mustHoldReads: Bool {
        guard let current = exchange, current.forwarding, !current.requestEnded else { return false }
        return upstream?.canTakeBytes != true
    }

    private func resumeReadingIfPossible() {
        guard readPending, !mustHoldReads, let context else { return }
        readPending = false
        context.read()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { upstream?.resumeReading() }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        exchange?.responseTimer?.cancel()
        exchange = nil
        upstream?.close()
        upstream = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        core.logger.debug("downstream connection failed", metadata: ["client": "\(client)", "error": "\(error)"])
        context.close(promise: nil)
    }
}

/// One request and its response, from the request head to the later of their two ends.
private struct Exchange {
    var record: ExchangeRecord
    var version: HTTPVersion
    /// Whether the client wants the connection kept after this exchange.
    var keepAlive: Bool
    /// Request parts go upstream; false once the proxy answers itself (they are discarded).
    var forwarding = false
    var requestEnded = false
    var responseStarted = false
    var responseEnded = false
    var closeAfterResponse = false
    var upstreamKeepsAlive = true
    var responseTimer: Scheduled<Void>?

    init(record: ExchangeRecord, version: HTTPVersion, keepAlive: Bool) {
        self.record = record
        self.version = version
        self.keepAlive = keepAlive
    }
}
