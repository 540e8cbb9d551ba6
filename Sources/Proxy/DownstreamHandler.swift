import Logging
import MeshModel
import NIOCore
import NIOHTTP1

/// One client connection: judges each request under L7 policy, answers the refused ones
/// itself and forwards the allowed ones, streaming bodies both ways with back-pressure.
/// A request to a routed frontend (a ProxyRoute's VIP and port) goes to the backend its
/// route rule picks, with the rule's filters, timeouts and retries; any other goes to the
/// original destination.
///
/// Exchanges run one at a time: a pipelined request that arrives while the previous one's
/// response is under way waits in `queued` (reads held meanwhile) until that response has
/// ended. This used to be NIO's HTTPServerPipelineHandler's work, but it holds reads for
/// every request's response, so each keep-alive request cost two epoll_ctl calls (reads off,
/// reads on) though hardly any client pipelines.
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
    /// The connection of the exchange in progress (of its current attempt, when routed).
    private var upstream: UpstreamHandler?
    /// Keep-alive connections between requests, one per upstream address.
    private var idle = IdleUpstreams()
    private var exchange: Exchange?
    /// A read the downstream asked for while upstream could take no more bytes.
    private var readPending = false
    /// Parts of pipelined requests, waiting for the exchange in progress to end. At most what
    /// one read decoded: reads are held while any wait.
    private var queued = CircularBuffer<HTTPServerRequestPart>()
    private var draining = false
    /// The connection closes once the response being written is out: nothing more is read.
    private var closing = false
    /// A parse error in a request after one whose response is still owed: answered (400,
    /// then the close) once that response, and any request queued before it, are out.
    private var parseError: (any Error)?
    /// The proxy is shutting down (NIO's quiesce event): the response under way is the last,
    /// and says so.
    private var quiescing = false
    /// Response parts written since the last flush.
    private var unflushed = false
    /// This connection's last metrics series.
    private var seriesMemo = ProxyMetrics.SeriesMemo()
    /// The upstream's time to answer the exchange in progress (or its current attempt).
    private var responseClock: LazyTimer?
    /// The connection's idle and header clocks (HTTP/1.1), told when exchanges begin and end.
    private let deadlines: ConnectionDeadlines?
    /// Set when the destination is reached only through the mTLS tunnel to its node (and
    /// the source's egress rules read HTTP): upstream connections go through the tunnel.
    private let tunnel: TunnelOutbound.Route?

    /// Set when this handler serves one stream of an HTTP/2 client connection: requests go
    /// upstream as streams of that connection's HTTP/2 connections, not over HTTP/1.1.
    private let http2: HTTP2Upstreams?
    /// Set for a connection to the ingress gateway: requests are routed by the listener's
    /// routes, and reach backends as the node (their policy judges the host).
    private let gateway: GatewayRouting?

    init(core: ProxyCore, client: SocketAddress, destination: SocketAddress, http2: HTTP2Upstreams? = nil,
         gateway: GatewayRouting? = nil, deadlines: ConnectionDeadlines? = nil,
         tunnel: TunnelOutbound.Route? = nil) throws {
        self.http2 = http2
        self.gateway = gateway
        self.deadlines = deadlines
        self.tunnel = tunnel
        guard let clientPeer = PeerAddress(client), let destinationPeer = PeerAddress(destination) else {
            throw ChannelError.badInterfaceAddressFamily
        }
        self.core = core
        self.client = clientPeer
        self.clientAddress = client
        self.destination = destinationPeer
        self.destinationAddress = destination
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        responseClock = LazyTimer(loop: context.eventLoop) { [weak self] in self?.upstreamFailed(.responseTimeout) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        responseClock?.cancel()
    }

    // MARK: requests from the client

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = Self.unwrapInboundIn(data)
        guard !closing else {
            // The last response is out; the request it answered may still be arriving, and
            // its end completes the exchange (counted and reported). Later ones are dropped.
            if let current = exchange, !current.requestEnded { receive(part, context: context) }
            return
        }
        if !queued.isEmpty || exchange?.requestEnded == true {
            queued.append(part)
            return
        }
        receive(part, context: context)
    }

    private func receive(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        switch part {
        case .head(let head):
            begin(head, context: context)
        case .body(let body):
            guard exchange?.forwarding == true else { return }
            exchange?.record.requestBodyBytes += body.readableBytes
            forward(.body(.byteBuffer(body)))
        case .end(let trailers):
            guard exchange != nil else { return }
            exchange?.requestEnded = true
            if exchange?.forwarding == true {
                forward(.end(trailers))
                startResponseTimer(context: context)
            }
            finishIfDone(context: context)
            // The response ended first (the proxy's own answer): the next request may begin.
            if exchange == nil { drainQueued(context: context) }
        }
    }

    /// Hands queued parts over, in order, for as long as the exchange in progress (or a new
    /// one) can take them: up to the end of the next request whose response is then pending.
    private func drainQueued(context: ChannelHandlerContext) {
        guard !draining else { return }
        draining = true
        defer { draining = false }
        while !closing, exchange?.requestEnded != true, let part = queued.popFirst() {
            receive(part, context: context)
        }
        if closing { queued.removeAll() }
        if !closing, exchange == nil, queued.isEmpty, let error = parseError {
            parseError = nil
            closing = true
            _ = ProtocolErrorResponder.handle(error, responding: false, metrics: core.metrics, context: context)
            return
        }
        if queued.isEmpty { resumeReadingIfPossible() }
    }

    /// Sends a request part upstream, keeping it for a retry when the request is routed.
    private func forward(_ part: HTTPClientRequestPart) {
        exchange?.routed?.keep(part)
        if let upstream {
            upstream.send(part)
        } else if let current = exchange, let routed = current.routed, routed.kept == nil, !current.responseStarted {
            // Between attempts, parts wait in `kept`; one that could not be kept leaves the
            // retry without the whole request.
            answerLastFailure()
        }
    }

    private func begin(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        deadlines?.headReceived()
        exchange = Exchange(record: ExchangeRecord(started: .now, method: head.method.rawValue, target: head.uri,
                                                   host: head.headers.first(name: "host") ?? "",
                                                   source: client, destination: destination),
                            version: head.version, keepAlive: head.version.major >= 2 || head.isKeepAlive)
        exchange?.acceptsTrailers = head.acceptsTrailers
        if head.asksForAnotherProtocol {
            // The decoder stops parsing after such a request, so the connection cannot go on.
            answer(.notImplemented, body: "Upgrade and CONNECT are not supported\r\n", verdict: .error,
                   error: "protocol upgrade or CONNECT not supported", close: true)
            return
        }
        let config = core.policy.inForce
        if let gateway {
            guard let frontend = gateway.listener(in: config.gateways, host: head.headers.first(name: "host"))?.frontend else {
                answer(.notFound, body: "No route for this host\r\n", verdict: .error, error: "no gateway route for this host",
                       close: false)
                return
            }
            beginRouted(head, frontend: frontend, resilience: config.routes.resilience)
            return
        }
        if let frontend = config.routes.frontend(for: destination) {
            beginRouted(head, frontend: frontend, resilience: config.routes.resilience)
            return
        }
        let index = config.index
        let verdict = index.decide(head.l7Request, source: client.ip, destination: destination.ip, port: destination.port)
        exchange?.record.ruleID = verdict.ruleID
        exchange?.record.rule = verdict.rule
        guard verdict.allowed else {
            answer(.forbidden, body: "Access denied\r\n", verdict: .denied, error: nil, close: false)
            return
        }
        exchange?.forwarding = true
        let link = use(idle.take(destination)) ?? connect(
            to: destinationAddress, target: destination,
            from: index.endpoint(destination.ip) != nil ? .clientAddressAndPort(clientAddress) : .proxy, tunnel: tunnel,
            context: context)
        link.send(.head(upstreamHead(head.forUpstream)))
    }

    /// The upstream's time to answer runs from the end of the request, as a long upload
    /// is not a slow upstream; connecting has its own timeout of the same length. A routed
    /// attempt with its own limit (`timeouts.backendRequest`) is timed from its start
    /// instead, and an attempt not yet under way (a retry's back-off) has no clock.
    private func startResponseTimer(context: ChannelHandlerContext) {
        guard let current = exchange, !current.responseStarted else { return }
        if let routed = current.routed, routed.rule.attemptTimeout != nil || routed.current == nil { return }
        armResponseTimer(core.settings.upstreamTimeout)
    }

    private func armResponseTimer(_ timeout: TimeAmount) {
        responseClock?.set(timeout)
    }

    private func schedule(in delay: TimeAmount, _ action: @escaping (DownstreamHandler) -> Void) -> Scheduled<Void>? {
        guard let context else { return nil }
        // Both run on this loop only, where the task is scheduled.
        let bound = NIOLoopBound((self, action), eventLoop: context.eventLoop)
        return context.eventLoop.scheduleTask(in: delay) { bound.value.1(bound.value.0) }
    }

    /// `head` as sent upstream: over HTTP/2, with the client's `te: trailers` (gRPC).
    private func upstreamHead(_ head: HTTPRequestHead) -> HTTPRequestHead {
        guard http2 != nil, exchange?.acceptsTrailers == true else { return head }
        var out = head
        out.headers.replaceOrAdd(name: "te", value: "trailers")
        return out
    }

    /// `idle` made the exchange's connection.
    private func use(_ link: UpstreamHandler?) -> UpstreamHandler? {
        if let link { upstream = link }
        return link
    }

    /// A new upstream connection for the exchange; through the mTLS tunnel when `tunnel` is
    /// given (the original destination only: routed backends are reached directly).
    private func connect(to address: SocketAddress, target: PeerAddress, from source: UpstreamConnector.Source,
                         tunnel: TunnelOutbound.Route? = nil,
                         context: ChannelHandlerContext) -> UpstreamHandler {
        let handler = UpstreamHandler(delegate: self, target: target)
        upstream = handler
        let loopBoundSelf = NIOLoopBound(self, eventLoop: context.eventLoop)
        let loopBoundHandler = NIOLoopBound(handler, eventLoop: context.eventLoop)
        let timeout = core.settings.upstreamTimeout
        // An HTTP/2 client's streams go to the connection's HTTP/2 upstreams (which reach a
        // tunnelled destination through the tunnel themselves).
        let connecting: EventLoopFuture<Void> = if let http2 {
            http2.openStream(to: target, from: source, timeout: timeout, handler: handler).map { _ in }
        } else if let tunnel {
            TunnelOutbound.connectHTTP(core: core, route: tunnel, source: client, destination: target, on: context.eventLoop,
                                       handler: handler)
        } else {
            UpstreamConnector.connect(to: address, from: source, timeout: timeout, on: context.eventLoop, handler: handler)
                .map { _ in }
        }
        connecting.whenFailure { error in
                let this = loopBoundSelf.value
                guard this.upstream === loopBoundHandler.value else { return }
                this.upstream = nil
                this.upstreamFailed(.connectFailed(error))
            }
        return handler
    }

    // MARK: routed requests

    private func beginRouted(_ head: HTTPRequestHead, frontend: RoutedFrontend, resilience: ProxyResilience) {
        exchange?.record.route = RoutedRecord(service: frontend.service)
        guard let selected = frontend.select(RouteRequest(head)) else {
            answer(.notFound, body: "No route matches this request\r\n", verdict: .error, error: "no route rule matches",
                   close: false)
            return
        }
        let rule = selected.rule
        exchange?.record.route?.rule = rule.name
        core.budgets.deposit(frontend.address, budget: frontend.budget)
        exchange?.routed = RoutedRequest(frontend: frontend, rule: rule, resilience: resilience, head: head,
                                         policyRequest: head.l7Request, matchedPrefix: selected.matchedPrefix)
        exchange?.forwarding = true
        if let timeout = rule.requestTimeout {
            exchange?.routed?.requestTimer = schedule(in: timeout) { $0.requestTimedOut() }
        }
        dispatch()
    }

    /// Sends the routed request, as its first attempt or a retry, to the backend its rule
    /// picks, if L7 policy lets the client reach that backend.
    private func dispatch() {
        guard let context, let current = exchange, current.forwarding, var routed = current.routed else { return }
        routed.backoff = nil
        let isRetry = routed.attempts > 0
        let config = core.policy.inForce
        var random = SystemRandomNumberGenerator()
        let endpoint: ProxyBackendEndpoint
        let group: [ProxyBackendEndpoint]
        switch routed.rule.choose(health: core.health, avoiding: routed.tried, resilience: routed.resilience, using: &random) {
        case .chosen(let chosen, let chosenGroup):
            (endpoint, group) = (chosen, chosenGroup)
        case .noBackends:
            return isRetry ? answerLastFailure() : answer(.internalServerError, body: "The route rule has no backend\r\n",
                                                           verdict: .error, error: "route rule has no backend", close: false)
        case .noReadyEndpoint:
            return isRetry ? answerLastFailure() : answer(.serviceUnavailable, body: "No backend is ready\r\n",
                                                           verdict: .error, error: "no ready backend endpoint", close: false)
        case .allAtPendingLimit:
            core.metrics.routed(.pendingLimit, service: routed.frontend.service)
            return isRetry ? answerLastFailure() : answer(.serviceUnavailable, body: "Every backend is at its request limit\r\n",
                                                           verdict: .error, error: "every backend endpoint at its pending limit",
                                                           close: false)
        }
        let peer = PeerAddress(endpoint)
        // Through the gateway, the request reaches the backend from the node, as reserved:ingress.
        let source = gateway != nil ? config.index.hostAddress ?? client.ip : client.ip
        let verdict = config.index.decide(routed.policyRequest, source: source, destination: endpoint.ip, port: endpoint.port,
                                          sourceIdentity: gateway != nil ? PolicyCompiler.ingressIdentity : nil)
        exchange?.record.ruleID = verdict.ruleID
        exchange?.record.rule = verdict.rule
        guard verdict.allowed else {
            core.health.release(peer)
            return isRetry ? answerLastFailure() : answer(.forbidden, body: "Access denied\r\n", verdict: .denied, error: nil,
                                                           close: false)
        }
        routed.attempts += 1
        routed.tried.insert(peer)
        routed.current = (endpoint, group)
        routed.attemptStarted = .now()
        exchange?.routed = routed
        exchange?.record.destination = peer
        exchange?.record.route?.backend = endpoint
        exchange?.record.route?.attempts = routed.attempts
        // Set before connecting: a connect that fails at once reports to this attempt.
        if let timeout = routed.rule.attemptTimeout {
            armResponseTimer(timeout)
        } else if current.requestEnded {
            armResponseTimer(core.settings.upstreamTimeout)
        }
        let link = use(idle.take(peer)) ?? connect(
            to: peer.socketAddress, target: peer,
            from: gateway != nil ? .gateway : config.index.endpoint(endpoint.ip) != nil ? .clientAddress(clientAddress) : .proxy,
            context: context)
        guard link === upstream else { return }
        link.send(.head(upstreamHead(routed.head)))
        for part in routed.kept ?? [] { link.send(part) }
    }

    /// Whether a failed attempt may be tried again: the rule allows another, the body was
    /// kept, and the frontend's retry budget agrees (counted either way).
    private func mayRetry() -> Bool {
        guard let routed = exchange?.routed, routed.mayRetry else { return false }
        guard core.budgets.withdraw(routed.frontend.address, budget: routed.frontend.budget) else {
            core.metrics.routed(.retryBudgetExhausted, service: routed.frontend.service)
            return false
        }
        core.metrics.routed(.retry, service: routed.frontend.service)
        return true
    }

    private func scheduleRetry() {
        let backoff = exchange?.routed?.rule.retry?.backoffSeconds ?? 0
        exchange?.routed?.backoff = schedule(in: .configured(seconds: backoff)) { $0.dispatch() }
    }

    /// The attempt in progress is over: its in-flight slot goes back, and when it `failed`
    /// (no response: refused, reset, timed out) that counts against its endpoint.
    private func endAttempt(failed: Bool) {
        guard let routed = exchange?.routed, let attempt = routed.current else { return }
        exchange?.routed?.current = nil
        let peer = PeerAddress(attempt.endpoint)
        core.health.release(peer)
        if failed { noteEjection(core.health.failed(peer, group: attempt.group, resilience: routed.resilience), routed) }
    }

    private func noteEjection(_ ejection: EndpointHealth.Ejection?, _ routed: RoutedRequest) {
        guard let ejection else { return }
        core.metrics.routed(.ejection, service: routed.frontend.service)
        core.logger.warning("backend endpoint ejected after failures in a row", metadata: [
            "endpoint": "\(ejection.endpoint)", "service": "\(routed.frontend.service)",
            "seconds": "\(ejection.seconds)", "timesInARow": "\(ejection.count)",
        ])
    }

    /// The rule's `timeouts.request` ran out, retries included.
    private func requestTimedOut() {
        guard let context, let current = exchange, let routed = current.routed, !current.responseEnded else { return }
        core.metrics.routed(.timeout(.request), service: routed.frontend.service)
        upstream?.close()
        upstream = nil
        endAttempt(failed: false)
        guard current.responseStarted else {
            answer(.gatewayTimeout, body: "Request timed out\r\n", verdict: .error, error: "route request timeout", close: false)
            return
        }
        // Part of the response is with the client: only closing tells it the rest is not coming.
        exchange?.record.error = "route request timeout in the middle of the response"
        exchange?.requestEnded = true
        exchange?.responseEnded = true
        finishIfDone(context: context)
        context.close(promise: nil)
    }

    /// No retry follows a failed attempt: the client gets that failure.
    private func answerLastFailure() {
        switch exchange?.routed?.lastFailure {
        case .noResponse(let failure)?:
            answer(failure.status, body: failure.body, verdict: .error, error: failure.message, close: false)
        case .status(let code)?:
            answer(HTTPResponseStatus(statusCode: code), body: "Upstream failed and could not be retried\r\n", verdict: .error,
                   error: "upstream answered \(code) and the retry could not be sent", close: false)
        case nil:
            answer(.badGateway, body: "Upstream unavailable\r\n", verdict: .error, error: "no attempt could be made", close: false)
        }
    }

    // MARK: answers the proxy gives itself

    /// Sends a short text response of the proxy's own and discards the rest of the request.
    private func answer(_ status: HTTPResponseStatus, body: String, verdict: L7Event.Verdict, error: String?, close: Bool) {
        guard let context, let current = exchange, !current.responseStarted else { return }
        responseClock?.clear()
        current.forwarding = false
        current.responseStarted = true
        current.responseEnded = true
        current.record.status = Int(status.code)
        current.record.verdict = verdict
        current.record.error = error
        let closeAfter = close || quiescing || !current.keepAlive
        // Whatever an upstream might still send for this request is not wanted.
        upstream?.close()
        upstream = nil
        endAttempt(failed: false)
        var headers = HTTPHeaders([("content-type", "text/plain; charset=utf-8"), ("content-length", String(body.utf8.count))])
        if closeAfter { headers.add(name: "connection", value: "close") }
        context.write(Self.wrapOutboundOut(.head(HTTPResponseHead(version: current.version, status: status, headers: headers))),
                      promise: nil)
        context.write(Self.wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: body)))), promise: nil)
        finishIfDone(context: context)
        writeEnd(nil, closeAfter: closeAfter, context: context)
        // A read held for an upstream that is gone now goes to discarding the body.
        resumeReadingIfPossible()
    }

    /// Ends the response; the next request, if one is queued, begins after it.
    private func writeEnd(_ trailers: HTTPHeaders?, closeAfter: Bool, context: ChannelHandlerContext) {
        unflushed = false
        // Quiescing began after this response's head went out: it is the last all the same.
        if closeAfter || quiescing {
            closing = true
            let channel = context.channel
            context.writeAndFlush(Self.wrapOutboundOut(.end(trailers))).whenComplete { _ in channel.close(promise: nil) }
        } else {
            context.writeAndFlush(Self.wrapOutboundOut(.end(trailers)), promise: nil)
        }
        if exchange == nil { drainQueued(context: context) }
    }

    private func upstreamFailed(_ failure: UpstreamFailure) {
        guard let current = exchange, current.forwarding, !current.responseStarted else { return }
        core.metrics.upstreamError(failure.reason)
        core.logger.debug("upstream failed", metadata: ["client": "\(client)", "destination": "\(current.record.destination)",
                                                        "error": "\(failure.message)"])
        responseClock?.clear()
        // Whatever it might still send belongs to this request, not to the next one.
        upstream?.close()
        upstream = nil
        if let routed = current.routed {
            if case .responseTimeout = failure { core.metrics.routed(.timeout(.backendRequest), service: routed.frontend.service) }
            endAttempt(failed: true)
            exchange?.routed?.lastFailure = .noResponse(failure)
            if mayRetry() {
                scheduleRetry()
                return
            }
        }
        answer(failure.status, body: failure.body, verdict: .error, error: failure.message, close: false)
    }

    private func finishIfDone(context: ChannelHandlerContext) {
        guard let done = exchange, done.requestEnded, done.responseEnded else { return }
        exchange = nil
        responseClock?.clear()
        done.routed?.stopTimers()
        if let link = upstream {
            upstream = nil
            idle.put(link)
        }
        done.record.duration = .now - done.record.started
        core.reporter.report(done.record, memo: &seriesMemo)
        if context.channel.isActive { deadlines?.exchangeComplete() }
    }

    // MARK: responses from upstream

    func upstreamConnected(_ upstream: UpstreamHandler) {
        if upstream === self.upstream, exchange?.routed?.current != nil { exchange?.routed?.attemptStarted = .now() }
        resumeReadingIfPossible()
    }

    func upstreamReceived(_ part: HTTPClientResponsePart, from upstream: UpstreamHandler) {
        guard let context, let current = exchange, current.forwarding, !current.responseEnded, upstream === self.upstream else {
            // Nothing is waiting for it: an upstream talking out of turn cannot be trusted.
            upstream.close()
            if self.upstream === upstream { self.upstream = nil }
            _ = idle.remove(upstream)
            return
        }
        switch part {
        case .head(let head):
            if current.routed != nil, !routedResponseBegins(head, from: upstream) { return }
            responseClock?.clear()
            let closeAfter = quiescing || !current.keepAlive
                || (current.version == .http1_0 && !head.headers.contains(name: "content-length"))
            exchange?.responseStarted = true
            exchange?.upstreamKeepsAlive = head.isKeepAlive
            exchange?.closeAfterResponse = closeAfter
            exchange?.record.status = Int(head.status.code)
            var headers = HopByHop.stripped(head.headers)
            current.routed?.rule.filters.apply(toResponse: &headers)
            if closeAfter { headers.add(name: "connection", value: "close") }
            else if current.version == .http1_0 { headers.add(name: "connection", value: "keep-alive") }
            unflushed = true
            context.write(Self.wrapOutboundOut(.head(HTTPResponseHead(version: current.version, status: head.status,
                                                                      headers: headers))), promise: nil)
        case .body(let body):
            exchange?.record.responseBodyBytes += body.readableBytes
            unflushed = true
            context.write(Self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        case .end(let trailers):
            exchange?.responseEnded = true
            endAttempt(failed: false)
            if !current.upstreamKeepsAlive {
                upstream.close()
                self.upstream = nil
            }
            finishIfDone(context: context)
            writeEnd(trailers, closeAfter: current.closeAfterResponse, context: context)
        }
    }

    /// Tells the endpoint's health what its response said; false when the response is a
    /// failure the rule retries (it is dropped with its connection, and the retry scheduled).
    private func routedResponseBegins(_ head: HTTPResponseHead, from upstream: UpstreamHandler) -> Bool {
        guard let routed = exchange?.routed, let attempt = routed.current else { return true }
        let status = Int(head.status.code)
        noteEjection(core.health.responded(PeerAddress(attempt.endpoint), latency: .now() - routed.attemptStarted,
                                           status: status, group: attempt.group, resilience: routed.resilience), routed)
        guard routed.rule.retryCodes.contains(status), mayRetry() else { return true }
        responseClock?.clear()
        // Closing is simpler and as safe as draining: the failed response's body may be long.
        upstream.close()
        self.upstream = nil
        endAttempt(failed: false)
        exchange?.routed?.lastFailure = .status(status)
        scheduleRetry()
        return false
    }

    /// What the upstream's read gave the client goes out now, unless the response's end
    /// (written with a flush) already took it.
    func upstreamReadComplete() {
        guard unflushed else { return }
        unflushed = false
        context?.flush()
    }

    func upstreamWritabilityChanged(_ upstream: UpstreamHandler) { resumeReadingIfPossible() }

    func upstreamClosed(_ upstream: UpstreamHandler, error: (any Error)?) {
        if idle.remove(upstream) { return }
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
        endAttempt(failed: true)
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

    /// Request bytes would go upstream, which cannot take them now (connecting, its socket
    /// buffer full, or a retry waiting out its back-off).
    private var mustHoldReads: Bool {
        // Pipelined requests wait: read no more until they have been handled.
        if !queued.isEmpty { return true }
        guard let current = exchange, current.forwarding, !current.requestEnded, !current.responseEnded else { return false }
        return upstream?.canTakeBytes != true
    }

    private func resumeReadingIfPossible() {
        guard readPending, !mustHoldReads, let context else { return }
        readPending = false
        context.read()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            upstream?.resumeReading()
            idle.resumeReading()
        }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        // The proxy's own answer went out and the connection closed before the request's
        // end came in: the exchange is still counted and reported.
        if let current = exchange, current.responseEnded, !current.requestEnded {
            current.requestEnded = true
            finishIfDone(context: context)
        }
        responseClock?.cancel()
        exchange?.routed?.stopTimers()
        endAttempt(failed: false)
        exchange = nil
        upstream?.close()
        upstream = nil
        idle.closeAll()
        context.fireChannelInactive()
    }

    /// Shutdown (NIO's quiescing helper): an idle connection closes now, a busy one after the
    /// response under way, which carries `connection: close`. (NIOHTTP2 passes the event to
    /// each open stream, which then ends after its response; the HTTP/2 connection itself
    /// sends no GOAWAY and is closed at the end of the grace period.)
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard event is ChannelShouldQuiesceEvent else { return context.fireUserInboundEventTriggered(event) }
        if exchange == nil, queued.isEmpty {
            context.close(promise: nil)
        } else {
            quiescing = true
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        core.logger.debug("downstream connection failed", metadata: ["client": "\(client)", "error": "\(error)"])
        // An unparsable request after one still being answered: that answer goes first.
        if error is HTTPParserError, !closing, exchange?.requestEnded == true || !queued.isEmpty {
            parseError = error
            return
        }
        let responding = exchange.map { $0.responseStarted && !$0.responseEnded } ?? false
        if ProtocolErrorResponder.handle(error, responding: responding, metrics: core.metrics, context: context) { return }
        context.close(promise: nil)
    }
}

/// One request and its response, from the request head to the later of their two ends.
/// A class: the handler reads and updates it many times per request, and as a struct each
/// `guard let current = exchange` copied it whole (about 3% of the proxy's time under wrk).
private final class Exchange {
    var record: ExchangeRecord
    var version: HTTPVersion
    /// Whether the client wants the connection kept after this exchange.
    var keepAlive: Bool
    /// The client sent `te: trailers`.
    var acceptsTrailers = false
    /// Request parts go upstream; false once the proxy answers itself (they are discarded).
    var forwarding = false
    var requestEnded = false
    var responseStarted = false
    var responseEnded = false
    var closeAfterResponse = false
    var upstreamKeepsAlive = true
    /// Set when the request is routed.
    var routed: RoutedRequest?

    init(record: ExchangeRecord, version: HTTPVersion, keepAlive: Bool) {
        self.record = record
        self.version = version
        self.keepAlive = keepAlive
    }
}
