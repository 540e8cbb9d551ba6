import NIOCore

/// The two clocks of a downstream connection that carries no request: an idle keep-alive
/// connection closes after the idle timeout; once a request's first byte arrives its head
/// must be complete within the header timeout (slowloris). It sits before the HTTP decoder
/// because only raw bytes tell that a head has begun.
final class ConnectionDeadlines: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let headerTimeout: TimeAmount
    private let idleTimeout: TimeAmount
    private let onHeaderTimeout: @Sendable () -> Void
    /// Heads received minus exchanges completed (0 or 1: the HTTP handler begins a pipelined
    /// request only once the previous exchange is over).
    private var inProgress = 0
    /// Set per request, so lazy: its task never lies further out than the shorter of the two
    /// timeouts, and a clock set after it (now plus either timeout) never has to replace it.
    private var clock: LazyTimer?
    private var headStarted = false
    /// Which clock runs: the header's (slowloris) or the idle one.
    private var clockIsHeader = false

    init(headerTimeout: TimeAmount, idleTimeout: TimeAmount, onHeaderTimeout: @escaping @Sendable () -> Void) {
        self.headerTimeout = headerTimeout
        self.idleTimeout = idleTimeout
        self.onHeaderTimeout = onHeaderTimeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let onHeaderTimeout = self.onHeaderTimeout
        clock = LazyTimer(loop: context.eventLoop, maxDelay: min(headerTimeout, idleTimeout)) { [weak self, weak context] in
            if self?.clockIsHeader == true { onHeaderTimeout() }
            context?.close(promise: nil)
        }
        if context.channel.isActive { arm(idleTimeout, isHeader: false) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        clock?.cancel()
    }

    func channelActive(context: ChannelHandlerContext) {
        if clock?.isSet != true { arm(idleTimeout, isHeader: false) }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        clock?.cancel()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Bytes while no request is in progress start a head; bytes during one belong to
        // its body or to a pipelined request the idle clock already bounds.
        if inProgress == 0, !headStarted {
            headStarted = true
            arm(headerTimeout, isHeader: true)
        }
        context.fireChannelRead(data)
    }

    // What the HTTP handler of the same connection tells it, called directly (not as
    // pipeline events, each of which crossed five handlers and a dynamic cast).

    /// A complete request head was decoded.
    func headReceived() {
        inProgress += 1
        headStarted = false
        clock?.clear()
    }

    /// A request and its response are both over.
    func exchangeComplete() {
        inProgress -= 1
        if inProgress == 0 { arm(idleTimeout, isHeader: false) }
    }

    private func arm(_ timeout: TimeAmount, isHeader: Bool) {
        clockIsHeader = isHeader
        clock?.set(timeout)
    }
}
