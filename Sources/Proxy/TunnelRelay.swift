import NIOCore

/// Bytes both ways between two channels of one event loop (a client connection and its
/// tunnel, or a tunnel and its upstream), with back-pressure: a side reads only while the
/// other can take writes. A read EOF becomes a write half-close on the other side; either
/// closing closes both. SwiftNIO ships this "glue" only as example code, not as a library
/// product, hence this small pair of handlers.
final class TunnelRelay: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var partner: TunnelRelay?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    /// Counts the bytes this side read (and handed to the other).
    private let counted: (Int) -> Void
    /// Told how this side ended when it ended abnormally (an error, or input or connection
    /// closed before it read a byte): the debug log's view of a relay.
    var ended: ((String) -> Void)?
    private var bytesRead = 0

    private init(counted: @escaping (Int) -> Void) { self.counted = counted }

    /// Two handlers joined to each other: add the first to one channel, the second to the other.
    static func pair(countingA: @escaping (Int) -> Void = { _ in }, countingB: @escaping (Int) -> Void = { _ in }) -> (TunnelRelay, TunnelRelay) {
        let a = TunnelRelay(counted: countingA), b = TunnelRelay(counted: countingB)
        a.partner = b
        b.partner = a
        return (a, b)
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        partner = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        counted(bytes.readableBytes)
        bytesRead += bytes.readableBytes
        partner?.context?.write(wrapOutboundOut(bytes), promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) { partner?.context?.flush() }

    func channelInactive(context: ChannelHandlerContext) {
        if bytesRead == 0 { ended?("connection closed before a byte was read") }
        partner?.context?.close(promise: nil)
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event, let other = partner?.context {
            if bytesRead == 0 { ended?("input closed before a byte was read") }
            // Half-close the other side's output; a channel that cannot (no half-closure)
            // is closed whole.
            let done = other.eventLoop.makePromise(of: Void.self)
            done.futureResult.whenFailure { _ in other.close(promise: nil) }
            other.close(mode: .output, promise: done)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        ended?("error after \(bytesRead) bytes: \(error)")
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { partner?.resumeRead() }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if partner?.context?.channel.isWritable ?? true {
            context.read()
        } else {
            pendingRead = true
        }
    }

    private func resumeRead() {
        guard pendingRead, let context else { return }
        pendingRead = false
        context.read()
    }
}
