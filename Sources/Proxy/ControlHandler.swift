import Logging
import MeshModel
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// One meshd connection on the control socket: greets it, then answers its messages in
/// the order they came. Decoding and compiling a configuration can take long for a big
/// node, so that work runs on the thread pool, never on the event loop.
final class ControlHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let core: ProxyCore
    private let threadPool: NIOThreadPool
    private var queue: EventLoopFuture<Void>?
    /// The ipcache the last configuration on this connection carried (ProxyConfig.ipcacheUnchanged).
    private let carried = NIOLockedValueBox<[ProxyIPCacheEntry]?>(nil)

    init(core: ProxyCore, threadPool: NIOThreadPool) {
        self.core = core
        self.threadPool = threadPool
    }

    func channelActive(context: ChannelHandlerContext) {
        queue = context.eventLoop.makeSucceededVoidFuture()
        core.events.attach(context.channel)
        send([ProxyControlMessage(hello: core.hello())], context: context)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        core.events.detach(context.channel)
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let line = Self.unwrapInboundIn(data)
        let core = self.core
        let channel = context.channel
        let pool = threadPool
        let loop = context.eventLoop
        // Both are only touched back on this loop, where the replies are written.
        let boundContext = NIOLoopBound(context, eventLoop: loop)
        let boundSelf = NIOLoopBound(self, eventLoop: loop)
        let carried = self.carried
        queue = (queue ?? loop.makeSucceededVoidFuture()).flatMap {
            pool.runIfActive(eventLoop: loop) { core.answer(line, from: channel, carried: carried) }
        }.map { replies in
            boundSelf.value.send(replies, context: boundContext.value)
        }.recover { error in
            core.logger.warning("control message not handled", metadata: ["error": "\(error)"])
        }
    }

    private func send(_ replies: [ProxyControlMessage], context: ChannelHandlerContext) {
        for reply in replies {
            guard let line = ControlWire.encode(reply, allocator: context.channel.allocator) else { continue }
            context.write(Self.wrapOutboundOut(line), promise: nil)
        }
        if !replies.isEmpty { context.flush() }
    }
}

extension ProxyCore {
    /// The replies to one control line. Runs on the thread pool, one line of a connection
    /// at a time; `carried` is the ipcache that connection's last configuration carried.
    func answer(_ line: ByteBuffer, from channel: any Channel, carried: NIOLockedValueBox<[ProxyIPCacheEntry]?>) -> [ProxyControlMessage] {
        let message: ProxyControlMessage
        do {
            message = try ControlWire.decode(line)
        } catch {
            // It may have been a configuration (a half-written line, then a whole one): its
            // ipcache is not the one meshd now takes this connection to hold.
            carried.withLockedValue { $0 = nil }
            logger.warning("control message is not valid JSON for a ProxyControlMessage", metadata: ["error": "\(error)"])
            return []
        }
        var replies: [ProxyControlMessage] = []
        if var config = message.config {
            if config.ipcacheUnchanged == true {
                if let last = carried.withLockedValue({ $0 }) {
                    config.ipcache = last
                    config.ipcacheUnchanged = nil
                    replies.append(apply(config))
                } else {
                    replies.append(rejected(ProxyConfigRejection(generation: config.generation,
                                                                 reason: "the configuration keeps the ipcache of the last one, and this connection holds none",
                                                                 ipcacheMissing: true)))
                }
            } else {
                carried.withLockedValue { $0 = config.ipcache }
                replies.append(apply(config))
            }
        }
        if let enabled = message.events { events.setEnabled(enabled, for: channel) }
        if let id = message.metricsRequest {
            replies.append(ProxyControlMessage(metrics: ProxyMetricsReply(id: id, text: metrics.text())))
        }
        return replies
    }

    private func apply(_ config: ProxyConfig) -> ProxyControlMessage {
        switch policy.apply(config) {
        case .applied(let generation):
            let inForce = policy.inForce
            health.keep(only: inForce.routes.backendAddresses.union(inForce.gateways.backendAddresses))
            budgets.keep(only: inForce.routes.frontendAddresses.union(inForce.gateways.frontendAddresses))
            metrics.configApplied(generation: generation)
            tunnels.update(policy.index.config.tunnel, core: self)
            gateways.update(inForce.gateways, core: self)
            for problem in inForce.gateways.skipped {
                logger.error("gateway listener not served: its certificate does not load", metadata: ["listener": "\(problem)"])
            }
            logger.info("configuration applied", metadata: ["generation": "\(generation)"])
            return ProxyControlMessage(configApplied: generation)
        case .stale(let current):
            logger.info("older configuration ignored",
                        metadata: ["generation": "\(config.generation)", "inForce": "\(current)"])
            return ProxyControlMessage(configApplied: current)
        case .rejected(let rejection):
            return rejected(rejection)
        }
    }

    private func rejected(_ rejection: ProxyConfigRejection) -> ProxyControlMessage {
        logger.warning("configuration rejected", metadata: ["generation": "\(rejection.generation)", "reason": "\(rejection.reason)"])
        return ProxyControlMessage(configRejected: rejection)
    }
}
