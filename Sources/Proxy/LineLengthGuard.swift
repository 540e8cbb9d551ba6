import NIOCore

/// Closes a control connection whose current line grows past a limit, so that a peer that
/// never sends a newline cannot make the line decoder buffer without bound (NIOExtras'
/// LineBasedFrameDecoder has no limit of its own).
final class LineLengthGuard: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    struct LineTooLong: Error {}

    private let maxLength: Int
    private var pending = 0

    init(maxLength: Int) { self.maxLength = maxLength }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = Self.unwrapInboundIn(data).readableBytesView
        if let lastNewline = bytes.lastIndex(of: UInt8(ascii: "\n")) {
            pending = bytes.endIndex - lastNewline - 1
        } else {
            pending += bytes.count
        }
        guard pending <= maxLength else {
            context.fireErrorCaught(LineTooLong())
            context.close(promise: nil)
            return
        }
        context.fireChannelRead(data)
    }
}
