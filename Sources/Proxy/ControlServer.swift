import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOPosix

/// The unix socket meshd connects to. One meshd at a time: a newer connection replaces an
/// older one (a restarted meshd whose predecessor's socket is not yet seen as closed).
final class ControlServer: Sendable {
    private let sessions: NIOLockedValueBox<(any Channel)?>
    private let listener: any Channel

    private init(listener: any Channel, sessions: NIOLockedValueBox<(any Channel)?>) {
        self.listener = listener
        self.sessions = sessions
    }

    static func start(core: ProxyCore, group: any EventLoopGroup, threadPool: NIOThreadPool) async throws -> ControlServer {
        let path = core.settings.controlPath
        try await threadPool.runIfActive { try prepareSocketFolder(for: path) }
        let sessions = NIOLockedValueBox<(any Channel)?>(nil)
        let maxLine = core.settings.maxControlLineBytes
        let listener: any Channel
        do {
            listener = try await ServerBootstrap(group: group)
                .childChannelInitializer { channel in
                    replaceSession(in: sessions, with: channel)
                    return channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandlers([
                            LineLengthGuard(maxLength: maxLine),
                            ByteToMessageHandler(LineBasedFrameDecoder()),
                            ControlHandler(core: core, threadPool: threadPool),
                        ])
                    }
                }
                .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
        } catch {
            throw ProxyError(.controlSocket, "cannot listen on the control socket \(path): \(error)")
        }
        // The folder is 0700 already, so no one else can reach the socket before this.
        try await threadPool.runIfActive {
            guard chmod(path, 0o600) == 0 else {
                throw ProxyError(.controlSocket, "cannot make the control socket \(path) mode 0600: errno \(errno)")
            }
        }
        return ControlServer(listener: listener, sessions: sessions)
    }

    /// Closes the listener and the connected meshd, if any. The socket file stays; the
    /// next start replaces it.
    func stop() async {
        try? await listener.close()
        sessions.withLockedValue { $0 }?.close(promise: nil)
    }

    private static func replaceSession(in sessions: NIOLockedValueBox<(any Channel)?>, with channel: any Channel) {
        let older = sessions.withLockedValue { session -> (any Channel)? in
            defer { session = channel }
            return session
        }
        older?.close(promise: nil)
    }

    /// Creates the socket's folder (0700) when missing; a stale socket file is removed by
    /// the bind itself.
    private static func prepareSocketFolder(for path: String) throws {
        let folder = (path as NSString).deletingLastPathComponent
        guard !folder.isEmpty, !FileManager.default.fileExists(atPath: folder) else { return }
        do {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        } catch {
            throw ProxyError(.controlSocket, "cannot create the control socket's folder \(folder): \(error)")
        }
    }
}
