import NIOCore
import NIOHTTP1

/// Answers a request the HTTP decoder could not parse, then closes: after a parse error the
/// connection's framing is lost, so nothing more on it can be trusted. Replaces NIO's
/// HTTPServerProtocolErrorHandler, which answers 400 to everything, to give an oversized head
/// its own status and to count each kind of hostile input. Called by the connection's
/// DownstreamHandler, which knows whether a response is under way; a handler of its own
/// cost every request part a pass through it, both ways.
enum ProtocolErrorResponder {
    /// Whether `error` was the decoder's; if so it has been answered (unless a response
    /// is `responding`, which an answer now would corrupt), counted, and the connection closed.
    static func handle(_ error: any Error, responding: Bool, metrics: ProxyMetrics, context: ChannelHandlerContext) -> Bool {
        guard let parserError = error as? HTTPParserError else { return false }
        let (status, reason) = classify(parserError)
        metrics.hostile(reason)
        if !responding {
            let headers = HTTPHeaders([("connection", "close"), ("content-length", "0")])
            context.write(NIOAny(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))),
                          promise: nil)
            context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil)), promise: nil)
        }
        context.close(promise: nil)
        return true
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
