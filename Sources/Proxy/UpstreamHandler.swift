import NIOCore
import NIOHTTP1

/// What an upstream connection reports to the downstream connection that owns it. Both
/// channels run on the same event loop, so these calls need no hop.
protocol UpstreamDelegate: AnyObject {
    func upstreamConnected(_ upstream: UpstreamHandler)
    func upstreamReceived(_ part: HTTPClientResponsePart, from upstream: UpstreamHandler)
    func upstreamReadComplete()
    func upstreamWritabilityChanged(_ upstream: UpstreamHandler)
    func upstreamClosed(_ upstream: UpstreamHandler, error: (any Error)?)
    /// False while the downstream socket cannot take more: the upstream then stops reading.
    var downstreamIsWritable: Bool { get }
}

/// The last handler of an upstream connection: sends request parts, hands response parts to
/// its delegate and reads only while the delegate's socket can take what it reads.
final class UpstreamHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    weak var delegate: (any UpstreamDelegate)?
    /// Where the connection goes: which requests may reuse it.
    let target: PeerAddress
    private var context: ChannelHandlerContext?
    /// Parts sent before the connection was up; at most what one downstream read decoded,
    /// since the downstream stops reading until the connection is writable.
    private var pending: [HTTPClientRequestPart] = []
    private var readPending = false
    private var firstError: (any Error)?
    /// Closed by its owner, perhaps before it was in a pipeline (a tunnel still opening).
    private var closeRequested = false
    /// The connection it will join once that is ready (the mTLS tunnel while it opens).
    private var joining: (any Channel)?

    init(delegate: any UpstreamDelegate, target: PeerAddress) {
        self.delegate = delegate
        self.target = target
    }

    /// Connected, and the socket buffer has room.
    var canTakeBytes: Bool { context.map { $0.channel.isActive && $0.channel.isWritable } ?? false }

    /// Connected and not closing: worth keeping for another request.
    var isOpen: Bool { delegate != nil && (context?.channel.isActive ?? false) }

    func send(_ part: HTTPClientRequestPart) {
        guard let context, context.channel.isActive else {
            pending.append(part)
            return
        }
        context.writeAndFlush(Self.wrapOutboundOut(part), promise: nil)
    }

    func resumeReading() {
        guard readPending, let context else { return }
        readPending = false
        context.read()
    }

    func close() {
        delegate = nil
        closeRequested = true
        context?.close(promise: nil)
        joining?.close(promise: nil)
        joining = nil
    }

    /// `channel` is the connection this handler will be added to once it is ready: closing
    /// the handler before then closes it (a client gone while its tunnel opens).
    func willJoin(_ channel: any Channel) {
        guard !closeRequested else { return channel.close(promise: nil) }
        joining = channel
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        joining = nil
        if closeRequested { return context.close(promise: nil) }
        // Added to a connection already up (the mTLS tunnel, once open): connected now.
        if context.channel.isActive { connected(context: context) }
    }

    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelActive(context: ChannelHandlerContext) {
        connected(context: context)
        context.fireChannelActive()
    }

    private func connected(context: ChannelHandlerContext) {
        for part in pending { context.write(Self.wrapOutboundOut(part), promise: nil) }
        pending.removeAll()
        context.flush()
        delegate?.upstreamConnected(self)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        delegate?.upstreamReceived(Self.unwrapInboundIn(data), from: self)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        delegate?.upstreamReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        delegate?.upstreamWritabilityChanged(self)
        context.fireChannelWritabilityChanged()
    }

    /// The tunnel's connection allows half-closure (its relays need it): for HTTP, the far
    /// end's EOF ends the connection, as it does on a plain one, or an idle connection kept
    /// for reuse would take the next request and fail it.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event { return context.close(promise: nil) }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if firstError == nil { firstError = error }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        let delegate = self.delegate
        self.delegate = nil
        delegate?.upstreamClosed(self, error: firstError)
        context.fireChannelInactive()
    }

    func read(context: ChannelHandlerContext) {
        if let delegate, !delegate.downstreamIsWritable {
            readPending = true
            return
        }
        context.read()
    }
}
