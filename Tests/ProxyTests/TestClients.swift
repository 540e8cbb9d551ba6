import Foundation
import MeshModel
import NIOCore
import NIOExtras
import NIOHTTP1
import NIOPosix

/// One response as a test client received it.
struct TestResponse {
    var status: HTTPResponseStatus
    var headers: HTTPHeaders
    var body: ByteBuffer

    var text: String { String(buffer: body) }
}

struct ConnectionClosed: Error {}

/// Closes a test's connection if the test is still using it after this long, so that a
/// proxy that stalls makes the test fail instead of hang.
let testWatchdog = TimeAmount.seconds(20)

func watch(_ channel: any Channel) -> Scheduled<Void> {
    channel.eventLoop.scheduleTask(in: testWatchdog) { channel.close(promise: nil) }
}

/// A keep-alive HTTP/1.1 client connection (NIO's client codec on a real socket).
struct HTTPTestConnection {
    var inbound: NIOAsyncChannelInboundStream<HTTPClientResponsePart>.AsyncIterator
    let outbound: NIOAsyncChannelOutboundWriter<HTTPClientRequestPart>
    /// The client's own port, which a transparent upstream connection reuses.
    var localPort = 0

    /// `reuseAddress` lets a transparent upstream socket bind the same address and port
    /// on loopback, where client and proxy share one network namespace; `from` is a
    /// loopback address for the client's end.
    static func with<R>(port: Int, reuseAddress: Bool = false, from: String? = nil,
                        _ body: (inout HTTPTestConnection) async throws -> R) async throws -> R {
        var bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.socketOption(.so_reuseaddr), value: reuseAddress ? 1 : 0)
        if let from { bootstrap = bootstrap.bind(to: try SocketAddress(ipAddress: from, port: 0)) }
        let channel = try await bootstrap
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(
                        wrappingChannelSynchronously: channel)
                }
            }
        let localPort = channel.channel.localAddress?.port ?? 0
        let watchdog = watch(channel.channel)
        defer { watchdog.cancel() }
        return try await channel.executeThenClose { inbound, outbound in
            var connection = HTTPTestConnection(inbound: inbound.makeAsyncIterator(), outbound: outbound, localPort: localPort)
            return try await body(&connection)
        }
    }

    mutating func send(_ method: HTTPMethod = .GET, _ target: String, headers: [(String, String)] = [],
                       body: ByteBuffer? = nil) async throws -> TestResponse {
        let hasHost = headers.contains { $0.0.lowercased() == "host" }
        var all = HTTPHeaders((hasHost ? [] : [("host", "upstream.test")]) + headers)
        if let body { all.replaceOrAdd(name: "content-length", value: String(body.readableBytes)) }
        try await outbound.write(.head(HTTPRequestHead(version: .http1_1, method: method, uri: target, headers: all)))
        if let body { try await outbound.write(.body(.byteBuffer(body))) }
        try await outbound.write(.end(nil))
        return try await receive()
    }

    mutating func receive() async throws -> TestResponse {
        var response: TestResponse?
        while let part = try await inbound.next() {
            switch part {
            case .head(let head):
                response = TestResponse(status: head.status, headers: head.headers, body: ByteBuffer())
            case .body(var chunk):
                response?.body.writeBuffer(&chunk)
            case .end:
                if let response { return response }
            }
        }
        throw ConnectionClosed()
    }
}

/// A plain TCP client for input no HTTP library would send.
enum RawClient {
    /// Sends `bytes`, then reads until the server closes; returns everything read.
    static func exchange(port: Int, _ bytes: String) async throws -> String {
        try await exchange(port: port, [bytes])
    }

    /// Sends each piece in turn, then reads until the server closes.
    static func exchange(port: Int, _ pieces: [String]) async throws -> String {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        let watchdog = watch(channel.channel)
        defer { watchdog.cancel() }
        return try await channel.executeThenClose { inbound, outbound in
            for piece in pieces { try? await outbound.write(ByteBuffer(string: piece)) }
            var received = ""
            do {
                for try await chunk in inbound { received += String(buffer: chunk) }
            } catch {
                // A reset after the answer still leaves the answer to check.
            }
            return received
        }
    }
}

/// meshd's side of the control socket, one JSON message per line.
struct ControlTestConnection {
    var inbound: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator
    let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>

    static func with<R>(path: String, _ body: (inout ControlTestConnection) async throws -> R) async throws -> R {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(unixDomainSocketPath: path) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineBasedFrameDecoder()))
                    return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        let watchdog = watch(channel.channel)
        defer { watchdog.cancel() }
        return try await channel.executeThenClose { inbound, outbound in
            var connection = ControlTestConnection(inbound: inbound.makeAsyncIterator(), outbound: outbound)
            return try await body(&connection)
        }
    }
}

extension ControlTestConnection {
    func send(_ message: ProxyControlMessage) async throws {
        var data = try JSONEncoder().encode(message)
        data.append(UInt8(ascii: "\n"))
        try await outbound.write(ByteBuffer(bytes: data))
    }

    /// Bytes as they are: a damaged line, say.
    func sendRaw(_ text: String) async throws {
        try await outbound.write(ByteBuffer(string: text))
    }

    /// The next message that satisfies `accept`, skipping others (events, say).
    mutating func next(where accept: (ProxyControlMessage) -> Bool = { _ in true }) async throws -> ProxyControlMessage {
        while let line = try await inbound.next() {
            let message = try JSONDecoder().decode(ProxyControlMessage.self, from: Data(line.readableBytesView))
            if accept(message) { return message }
        }
        throw ConnectionClosed()
    }
}
