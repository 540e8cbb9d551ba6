import NIOCore
import NIOHTTP1
import NIOPosix

/// Opens the proxy's connection to a request's original destination.
enum UpstreamConnector {
    /// Connects `handler` to `destination`, carrying the from-proxy mark so the datapath
    /// does not redirect it back here. With `transparentSource` (the destination is a node
    /// endpoint) the socket binds to the client's own address and port first, so the
    /// receiver sees, and its policy judges, the original client.
    static func connect(to destination: SocketAddress, transparentSource: SocketAddress?, timeout: TimeAmount,
                        on loop: any EventLoop, handler: UpstreamHandler) -> EventLoopFuture<any Channel> {
        // The initializer runs on `loop`, the loop the handler was made on.
        let boundHandler = NIOLoopBound(handler, eventLoop: loop)
        var bootstrap = ClientBootstrap(group: loop)
            .connectTimeout(timeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(TransparentSocket.soMark, value: TransparentSocket.fromProxyMark)
        if let transparentSource {
            bootstrap = bootstrap
                .channelOption(TransparentSocket.ipTransparent, value: 1)
                .channelOption(.socketOption(.so_reuseaddr), value: 1)
                .bind(to: transparentSource)
        }
        return bootstrap.channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHTTPClientHandlers()
                try channel.pipeline.syncOperations.addHandler(boundHandler.value)
            }
        }.connect(to: destination)
    }
}
