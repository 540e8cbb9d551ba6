import NIOCore
import NIOHTTP1

/// The handlers of one accepted client connection, raw bytes first:
/// deadlines → HTTP codec → pipelining → protocol errors → the proxying handler.
enum ConnectionPipeline {
    static func configure(_ channel: any Channel, core: ProxyCore) throws {
        let settings = core.settings
        let destination: SocketAddress? = switch settings.originalDestination {
        case .localAddress: channel.localAddress
        case .fixed(let address): address
        }
        guard let client = channel.remoteAddress, let destination else {
            throw ChannelError.inappropriateOperationForState
        }
        // A connection made straight to the listener has the listener as its "original"
        // destination; forwarding it would connect the proxy to itself, again and again.
        if case .localAddress = settings.originalDestination,
           destination.port == core.listenPort.withLockedValue({ $0 }) {
            core.logger.debug("connection addressed to the proxy itself refused", metadata: ["client": "\(client)"])
            throw ChannelError.inappropriateOperationForState
        }
        var limits = NIOHTTPDecoderLimitConfiguration()
        // NIO counts the request line and every header name and value toward these.
        limits.maxHeaderListSize = settings.maxHeadBytes
        limits.maxHeaderFieldSize = settings.maxHeadBytes
        let sync = channel.pipeline.syncOperations
        try sync.configureHTTPServerPipeline(withPipeliningAssistance: true, withErrorHandling: false,
                                             withEncoderConfiguration: .init(), withDecoderLimitConfiguration: limits)
        let metrics = core.metrics
        try sync.addHandler(ConnectionDeadlines(headerTimeout: settings.headerTimeout, idleTimeout: settings.idleTimeout,
                                                onHeaderTimeout: { metrics.hostile(.headerTimeout) }),
                            position: .first)
        try sync.addHandler(ProtocolErrorResponder(metrics: metrics))
        try sync.addHandler(DownstreamHandler(core: core, client: client, destination: destination))
    }
}
