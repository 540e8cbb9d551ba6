import NIOCore
import NIOHTTP1
import NIOHTTP2

/// The HTTP/2 connections upstream of one HTTP/2 client connection: one per backend
/// address, each carrying every request stream the client's requests send there, so a
/// gRPC client's calls on its one connection spread over the backends per call and reuse
/// a connection to each. Lives on the client connection's event loop; its streams'
/// handlers (one DownstreamHandler per client stream) share it.
final class HTTP2Upstreams {
    typealias Connection = (any Channel, NIOHTTP2Handler.StreamMultiplexer)
    /// Makes an HTTP/2 connection to a target: h2c straight there, or inside the mTLS tunnel
    /// to its node.
    typealias Connector = (_ target: PeerAddress, _ source: UpstreamConnector.Source, _ timeout: TimeAmount,
                           _ loop: any EventLoop) -> EventLoopFuture<Connection>

    private let loop: any EventLoop
    private let connector: Connector
    private var connections: [PeerAddress: EventLoopFuture<Connection>] = [:]
    private var closed = false

    init(loop: any EventLoop, connector: @escaping Connector = { target, source, timeout, loop in
        UpstreamConnector.connectHTTP2(to: target.socketAddress, from: source, timeout: timeout, on: loop)
    }) {
        self.loop = loop
        self.connector = connector
    }

    /// Opens a request stream to `target` for `handler`, on the connection there (made now
    /// if there is none, or the last one closed).
    func openStream(to target: PeerAddress, from source: UpstreamConnector.Source, timeout: TimeAmount,
                    handler: UpstreamHandler) -> EventLoopFuture<any Channel> {
        guard !closed else { return loop.makeFailedFuture(ChannelError.ioOnClosedChannel) }
        let connection = connections[target] ?? connect(to: target, from: source, timeout: timeout)
        let boundHandler = NIOLoopBound(handler, eventLoop: loop)
        return connection.flatMap { _, multiplexer in
            let stream = self.loop.makePromise(of: (any Channel).self)
            multiplexer.createStreamChannel(promise: stream) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(HTTP2FramePayloadToHTTP1ClientCodec(httpProtocol: .http))
                    try channel.pipeline.syncOperations.addHandler(boundHandler.value)
                }
            }
            return stream.futureResult
        }
    }

    private func connect(to target: PeerAddress, from source: UpstreamConnector.Source,
                         timeout: TimeAmount) -> EventLoopFuture<Connection> {
        let future = connector(target, source, timeout, loop)
        connections[target] = future
        let bound = NIOLoopBound(self, eventLoop: loop)
        future.whenComplete { result in
            switch result {
            case .failure:
                // The next request tries a new connection (the attempt itself reports the failure).
                if bound.value.connections[target] == future { bound.value.connections[target] = nil }
            case .success(let (channel, _)):
                channel.closeFuture.whenComplete { _ in
                    if bound.value.connections[target] == future { bound.value.connections[target] = nil }
                }
            }
        }
        return future
    }

    /// The client connection closed: so do the connections that served it.
    func closeAll() {
        closed = true
        for future in connections.values { future.whenSuccess { channel, _ in channel.close(promise: nil) } }
        connections = [:]
    }
}
