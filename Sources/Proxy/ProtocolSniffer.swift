import NIOCore

/// The first handler of a client connection: reads until the bytes tell HTTP/2 (the
/// 24-byte client preface of RFC 9113 §3.4, sent by h2c clients with prior knowledge, as
/// gRPC's are) from HTTP/1, then has the connection's pipeline built for that protocol,
/// hands it what it read and steps out. A connection that says nothing is closed after
/// `timeout`, as a slow request head would be. (NIO's protocol negotiation needs TLS ALPN;
/// cleartext prior knowledge has no helper there, hence this small one.)
final class ProtocolSniffer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    enum Spoken { case http1, http2 }

    static let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

    private let timeout: TimeAmount
    private let configure: (Spoken, ChannelHandlerContext) throws -> Void
    private var buffered: ByteBuffer?
    private var deadline: Scheduled<Void>?

    init(timeout: TimeAmount, configure: @escaping (Spoken, ChannelHandlerContext) throws -> Void) {
        self.timeout = timeout
        self.configure = configure
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        deadline = context.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
    }

    func handlerRemoved(context: ChannelHandlerContext) { deadline?.cancel() }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = Self.unwrapInboundIn(data)
        if var earlier = buffered {
            earlier.writeBuffer(&bytes)
            bytes = earlier
        }
        let seen = bytes.readableBytesView.prefix(Self.preface.count)
        // Undecided while what came so far is still a beginning of the preface.
        if seen.count < Self.preface.count && seen.elementsEqual(Self.preface.prefix(seen.count)) {
            buffered = bytes
            return
        }
        buffered = nil
        deadline?.cancel()
        do {
            try configure(seen.elementsEqual(Self.preface) ? .http2 : .http1, context)
        } catch {
            context.fireErrorCaught(error)
            context.close(promise: nil)
            return
        }
        context.fireChannelRead(Self.wrapInboundOut(bytes))
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

}
