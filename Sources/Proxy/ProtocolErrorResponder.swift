import NIOCore
import NIOHTTP1

/// Answers a request the HTTP decoder could not parse, then closes: after a parse error the
/// connection's framing is lost, so nothing more on it can be trusted. Replaces NIO's
/// HTTPServerProtocolErrorHandler, which answers 400 to everything, to give an oversized head
/// its own status and to count each kind of hostile input.
final class ProtocolErrorResponder: ChannelDuplexHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let metrics: ProxyMetrics
    /// A response has begun and not ended: an error answer now would corrupt it.
    private var responding = false

    init(metrics: ProxyMetrics) { self.metrics = metrics }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let parserError = error as? HTTPParserError else {
            context.fireErrorCaught(error)
            return
        }
        let (status, reason) = Self.classify(parserError)
        metrics.hostile(reason)
        if !responding {
            let headers = HTTPHeaders([("connection", "close"), ("content-length", "0")])
            context.write(Self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))),
                          promise: nil)
            context.writeAndFlush(Self.wrapOutboundOut(.end(nil)), promise: nil)
        }
        context.fireErrorCaught(error)
        context.close(promise: nil)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch Self.unwrapOutboundIn(data) {
        case .head(let head) where head.status.code >= 200: responding = true
        case .end: responding = false
        default: break
        }
        context.write(data, promise: promise)
    }

    static func classify(_ error: HTTPParserError) -> (HTTPResponseStatus, ProxyMetrics.HostileReason) {
        switch error {
        case .headerOverflow:
            return (.requestHeaderFieldsTooLarge, .headerTooLarge)
        // llhttp refuses Transfer-Encoding followed by Content-Length, and a Content-Length
        // given twice, with these: the request smuggling cases. (Content-Length followed by
        // Transfer-Encoding is refused too, but NIO reports that one as `.unknown`.)
        case .unexpectedContentLength, .invalidContentLength:
            return (.badRequest, .ambiguousLength)
        default:
            return (.badRequest, .badRequest)
        }
    }
}
