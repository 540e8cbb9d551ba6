import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// A real HTTP server on loopback standing in for the original destination or a backend.
/// It answers each request with its body echoed and what it saw in `x-seen-*` headers, and
/// its name in `x-served-by`; `/big/N` answers N bytes, `/hang` never answers.
final class EchoUpstream: Sendable {
    /// How a backend misbehaves.
    struct Behaviour: Sendable {
        var name = "upstream"
        /// Every Nth request this server receives (counting across connections) gets 503.
        var failEvery: Int?
        /// Each answer waits this long.
        var delay: TimeAmount?

        init(name: String = "upstream", failEvery: Int? = nil, delay: TimeAmount? = nil) {
            self.name = name
            self.failEvery = failEvery
            self.delay = delay
        }
    }

    let channel: any Channel
    let behaviour: Behaviour
    private let accepted = NIOLockedValueBox(0)
    private let requests = NIOLockedValueBox(0)

    /// Kept after `stop`, for a backend that refuses connections.
    let address: SocketAddress
    var port: Int { address.port ?? 0 }
    var name: String { behaviour.name }
    /// Connections the proxy opened to this server so far.
    var connectionCount: Int { accepted.withLockedValue { $0 } }
    /// Requests this server received so far.
    var requestCount: Int { requests.withLockedValue { $0 } }

    init(_ behaviour: Behaviour = Behaviour()) async throws {
        self.behaviour = behaviour
        let accepted = self.accepted
        let requests = self.requests
        channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                accepted.withLockedValue { $0 += 1 }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(EchoHandler(behaviour: behaviour, requests: requests))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        address = channel.localAddress!
    }

    func stop() async { try? await channel.close() }
}

private final class EchoHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let behaviour: EchoUpstream.Behaviour
    private let requests: NIOLockedValueBox<Int>
    private var head: HTTPRequestHead?
    private var body = ByteBuffer()

    init(behaviour: EchoUpstream.Behaviour, requests: NIOLockedValueBox<Int>) {
        self.behaviour = behaviour
        self.requests = requests
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch Self.unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body.clear()
        case .body(var chunk):
            body.writeBuffer(&chunk)
        case .end:
            let number = requests.withLockedValue { count in
                count += 1
                return count
            }
            guard let head, head.uri != "/hang" else { return }
            let status: HTTPResponseStatus = behaviour.failEvery.map { number % $0 == 0 } == true ? .serviceUnavailable : .ok
            guard let delay = behaviour.delay else {
                respond(to: head, status: status, context: context)
                return
            }
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            context.eventLoop.scheduleTask(in: delay) {
                let (handler, context) = bound.value
                guard context.channel.isActive else { return }
                handler.respond(to: head, status: status, context: context)
            }
        }
    }

    private func respond(to head: HTTPRequestHead, status: HTTPResponseStatus, context: ChannelHandlerContext) {
        var responseBody = body
        if head.uri.hasPrefix("/big/"), let size = Int(head.uri.dropFirst(5)) {
            responseBody = ByteBuffer(repeating: UInt8(ascii: "b"), count: size)
        }
        var headers = HTTPHeaders()
        headers.add(name: "content-length", value: String(responseBody.readableBytes))
        headers.add(name: "x-seen-method", value: head.method.rawValue)
        headers.add(name: "x-seen-peer", value: context.channel.remoteAddress.map { "\($0.ipAddress ?? ""):\($0.port ?? 0)" } ?? "")
        headers.add(name: "x-seen-target", value: head.uri)
        headers.add(name: "x-seen-host", value: head.headers.first(name: "host") ?? "")
        headers.add(name: "x-seen-custom", value: head.headers[canonicalForm: "x-custom"].joined(separator: ","))
        headers.add(name: "x-seen-names", value: head.headers.map { $0.name.lowercased() }.joined(separator: ","))
        headers.add(name: "x-seen-hop-by-hop",
                    value: ["connection", "keep-alive", "te", "trailer", "upgrade", "proxy-connection", "x-drop-me"]
                        .filter { head.headers.contains(name: $0) }.joined(separator: ","))
        // A header the proxy must strip on the way back.
        headers.add(name: "keep-alive", value: "timeout=5")
        headers.add(name: "x-from-upstream", value: "yes")
        headers.add(name: "x-served-by", value: behaviour.name)
        context.write(Self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))),
                      promise: nil)
        context.write(Self.wrapOutboundOut(.body(.byteBuffer(responseBody))), promise: nil)
        context.writeAndFlush(Self.wrapOutboundOut(.end(nil)), promise: nil)
    }
}
