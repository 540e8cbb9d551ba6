import NIOCore

/// What the HTTP handler tells ConnectionDeadlines, as outbound user events (they travel
/// toward the socket, where this handler sits, below the HTTP decoder).
enum ExchangeActivity {
    /// A complete request head was decoded.
    case headReceived
    /// A request and its response are both over.
    case exchangeComplete
}

/// The two clocks of a downstream connection that carries no request: an idle keep-alive
/// connection closes after the idle timeout; once a request's first byte arrives its head
/// must be complete within the header timeout (slowloris). It sits before the HTTP decoder
/// because only raw bytes tell that a head has begun.
final class ConnectionDeadlines: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer

    private let headerTimeout: TimeAmount
    private let idleTimeout: TimeAmount
    private let onHeaderTimeout: @Sendable () -> Void
    /// Heads received minus exchanges completed. Counting, not a flag, because the pipelining
    /// handler may deliver the next head before the previous exchange reports its end.
    private var inProgress = 0
    private var timer: Scheduled<Void>?
    private var headStarted = false

    init(headerTimeout: TimeAmount, idleTimeout: TimeAmount, onHeaderTimeout: @escaping @Sendable () -> Void) {
        self.headerTimeout = headerTimeout
        self.idleTimeout = idleTimeout
        self.onHeaderTimeout = onHeaderTimeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { arm(idleTimeout, context: context, isHeader: false) }
    }

    func channelActive(context: ChannelHandlerContext) {
        if timer == nil { arm(idleTimeout, context: context, isHeader: false) }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Bytes while no request is in progress start a head; bytes during one belong to
        // its body or to a pipelined request the idle clock already bounds.
        if inProgress == 0, !headStarted {
            headStarted = true
            arm(headerTimeout, context: context, isHeader: true)
        }
        context.fireChannelRead(data)
    }

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        guard let activity = event as? ExchangeActivity else {
            context.triggerUserOutboundEvent(event, promise: promise)
            return
        }
        switch activity {
        case .headReceived:
            inProgress += 1
            headStarted = false
            timer?.cancel()
            timer = nil
        case .exchangeComplete:
            inProgress -= 1
            if inProgress == 0 { arm(idleTimeout, context: context, isHeader: false) }
        }
        promise?.succeed()
    }

    private func arm(_ timeout: TimeAmount, context: ChannelHandlerContext, isHeader: Bool) {
        timer?.cancel()
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        let onHeaderTimeout = self.onHeaderTimeout
        timer = context.eventLoop.scheduleTask(in: timeout) {
            if isHeader { onHeaderTimeout() }
            bound.value.close(promise: nil)
        }
    }
}
