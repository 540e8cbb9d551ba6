import Logging
import MeshModel
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOPosix

/// A running proxy: the transparent listener and the control socket, sharing one policy.
///
///     let proxy = try await MeshProxy.start(settings: settings, logger: logger)
///     ...
///     await proxy.shutdown(gracePeriod: .seconds(5))
public final class MeshProxy: Sendable {
    /// The listener's port (the one the OS picked when the settings asked for port 0).
    public let port: Int
    public let controlPath: String
    private let core: ProxyCore
    private let listener: any Channel
    private let control: ControlServer
    private let quiescing: ServerQuiescingHelper

    private init(core: ProxyCore, listener: any Channel, control: ControlServer, quiescing: ServerQuiescingHelper,
                 port: Int) {
        self.core = core
        self.listener = listener
        self.control = control
        self.quiescing = quiescing
        self.port = port
        self.controlPath = core.settings.controlPath
    }

    /// Binds the listener, then opens the control socket. Throws a ProxyError that says
    /// what failed and why (port in use, no CAP_NET_ADMIN, control socket folder).
    public static func start(settings: ProxySettings, logger: Logger,
                             group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                             threadPool: NIOThreadPool = .singleton) async throws -> MeshProxy {
        let core = ProxyCore(settings: settings, logger: logger, group: group)
        let quiescing = ServerQuiescingHelper(group: group)
        let listener: any Channel
        do {
            listener = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 1024)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .serverChannelOption(TransparentSocket.ipTransparent, value: 1)
                .serverChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(quiescing.makeServerChannelHandler(channel: channel))
                    }
                }
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelInitializer { channel in
                    accept(channel, core: core)
                }
                .bind(host: settings.host, port: settings.port).get()
        } catch {
            throw ProxyError.listen(error, host: settings.host, port: settings.port)
        }
        let port = listener.localAddress?.port ?? settings.port
        core.listenPort.withLockedValue { $0 = port }
        let control: ControlServer
        do {
            control = try await ControlServer.start(core: core, group: group, threadPool: threadPool)
        } catch {
            try? await listener.close()
            throw error
        }
        logger.info("proxy listening", metadata: ["port": "\(port)", "control": "\(settings.controlPath)"])
        return MeshProxy(core: core, listener: listener, control: control, quiescing: quiescing, port: port)
    }

    private static func accept(_ channel: any Channel, core: ProxyCore) -> EventLoopFuture<Void> {
        guard core.admit(channel) else {
            channel.close(promise: nil)
            return channel.eventLoop.makeSucceededVoidFuture()
        }
        return channel.eventLoop.makeCompletedFuture {
            try ConnectionPipeline.configure(channel, core: core)
        }
    }

    /// Generation of the configuration in force (0 before meshd sent one).
    public var generation: UInt64 { core.policy.index.generation }

    /// Stops accepting, lets requests in flight finish for up to `gracePeriod`, then closes
    /// what is left, the control socket included.
    public func shutdown(gracePeriod: TimeAmount) async {
        core.gateways.closeAll()
        let drained = listener.eventLoop.makePromise(of: Void.self)
        quiescing.initiateShutdown(promise: drained)
        let outcome = NIOLockedValueBox<Bool?>(nil)
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            // Whichever comes first, the drain or the deadline, resumes; the other is ignored.
            let finish: @Sendable (Bool) -> Void = { drainedInTime in
                let first = outcome.withLockedValue { value in
                    defer { if value == nil { value = drainedInTime } }
                    return value == nil
                }
                if first { done.resume() }
            }
            drained.futureResult.whenComplete { _ in finish(true) }
            listener.eventLoop.scheduleTask(in: gracePeriod) { finish(false) }
        }
        if outcome.withLockedValue({ $0 }) == false {
            core.logger.warning("connections still open after the grace period; closing them")
            core.closeAllConnections()
        }
        await control.stop()
    }
}
