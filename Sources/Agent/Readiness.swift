import Foundation
import MeshModel
import NIOCore
import NIOHTTP1
import NIOPosix

/// One readiness check from the node, on NIO's event loops (nothing blocks a thread):
/// `tcp` passes when a connection opens, `http` when a GET gets a status from 200 to 399
/// (as Kubernetes reads an httpGet probe). The response is read by NIO's HTTP/1 decoder;
/// a peer that sends garbage or nothing fails the probe at its timeout.
enum ReadinessCheck {
    static func run(_ probe: ReadinessProbe, address: IPv4Address, port: UInt16) async -> Bool {
        let timeout = TimeAmount.milliseconds(Int64(probe.timeoutSeconds * 1000))
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let status = loop.makePromise(of: Bool.self)
        let deadline = loop.scheduleTask(in: timeout) { status.fail(ChannelError.connectTimeout(timeout)) }
        let bootstrap = ClientBootstrap(group: loop)
            .connectTimeout(timeout)
            .channelInitializer { channel in
                guard probe.kind == .http else { return channel.eventLoop.makeSucceededVoidFuture() }
                return channel.pipeline.addHTTPClientHandlers().flatMap {
                    channel.pipeline.addHandler(StatusHandler(promise: status))
                }
            }
        do {
            let channel: Channel = try await bootstrap.connect(host: address.description, port: Int(port)).get()
            defer { channel.close(promise: nil) }
            guard probe.kind == .http else {
                deadline.cancel()
                status.succeed(true) // NIO insists that every promise completes
                return true
            }
            var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: probe.path)
            head.headers.add(name: "Host", value: "\(address):\(port)")
            head.headers.add(name: "User-Agent", value: "swiftmesh-readiness/\(MeshVersion.string)")
            head.headers.add(name: "Connection", value: "close")
            channel.write(NIOAny(HTTPClientRequestPart.head(head)), promise: nil)
            channel.writeAndFlush(NIOAny(HTTPClientRequestPart.end(nil)), promise: nil)
            let ok = try await status.futureResult.get()
            deadline.cancel()
            return ok
        } catch {
            deadline.cancel()
            status.fail(error)
            return false
        }
    }

    /// Completes with whether the first response head's status is 200-399.
    final class StatusHandler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPClientResponsePart
        let promise: EventLoopPromise<Bool>
        init(promise: EventLoopPromise<Bool>) { self.promise = promise }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            if case .head(let head) = unwrapInboundIn(data) {
                promise.succeed((200..<400).contains(Int(head.status.code)))
                context.close(promise: nil)
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            promise.fail(error)
            context.close(promise: nil)
        }

        func channelInactive(context: ChannelHandlerContext) {
            promise.fail(ChannelError.eof)
        }
    }
}
