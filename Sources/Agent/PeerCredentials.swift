import Foundation
import Glibc
import Hummingbird
import MeshModel
import NIOCore
import NIOHTTPTypes

/// Who may use the API: root, and members of `--api-group` when one is set. The socket's
/// mode (0660, root and that group) already says so to the kernel; this check holds even
/// if someone loosens the mode, and tells a refused caller why instead of a bare EACCES.
struct APIAccess: Sendable {
    /// The group allowed besides root, if any.
    let group: (name: String, gid: gid_t)?

    func allows(uid: uid_t, gid: gid_t) -> Bool {
        if uid == 0 { return true }
        guard let group else { return false }
        if gid == group.gid { return true }
        // A supplementary member: the group's member list names the user. The _r calls:
        // connections are checked on several event-loop threads at once.
        var buffer = [CChar](repeating: 0, count: 16384)
        var pw = passwd(), pwResult: UnsafeMutablePointer<passwd>?
        guard getpwuid_r(uid, &pw, &buffer, buffer.count, &pwResult) == 0, pwResult != nil else { return false }
        let user = String(cString: pw.pw_name)
        var groupBuffer = [CChar](repeating: 0, count: 65536)
        var gr = group_t(), grResult: UnsafeMutablePointer<group_t>?
        guard getgrgid_r(group.gid, &gr, &groupBuffer, groupBuffer.count, &grResult) == 0, grResult != nil,
              var member = gr.gr_mem else { return false }
        while let m = member.pointee {
            if String(cString: m) == user { return true }
            member += 1
        }
        return false
    }

    var whoMay: String { group.map { "root or members of group \($0.name)" } ?? "root" }
}

typealias group_t = Glibc.group

/// struct ucred (pid, uid, gid), which Glibc's Swift module hides behind _GNU_SOURCE.
struct PeerCred {
    var pid: Int32
    var uid: UInt32
    var gid: UInt32
}

/// Reads the connecting process's credentials (SO_PEERCRED) as the connection opens, and
/// answers every request of a caller `access` does not allow with 403 and a message, then
/// closes the connection. Sits after Hummingbird's HTTP decoding, before its responder.
final class PeerCredentialHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let access: APIAccess
    /// nil until read; a connection whose credentials cannot be read is refused.
    private var peer: (uid: uid_t, gid: gid_t)?
    private var refused = false

    init(access: APIAccess) { self.access = access }

    func channelActive(context: ChannelHandlerContext) {
        readCredentials(context: context)
        context.fireChannelActive()
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { readCredentials(context: context) }
    }

    private func readCredentials(context: ChannelHandlerContext) {
        guard peer == nil, let provider = context.channel as? any SocketOptionProvider else { return }
        // On the channel's event loop the future is already complete.
        let future: EventLoopFuture<PeerCred> = provider.unsafeGetSocketOption(
            level: NIOBSDSocket.OptionLevel(rawValue: SOL_SOCKET), name: NIOBSDSocket.Option(rawValue: SO_PEERCRED))
        future.whenSuccess { [self] cred in peer = (cred.uid, cred.gid) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if refused { return }
        guard case .head = unwrapInboundIn(data) else { return context.fireChannelRead(data) }
        if let peer, access.allows(uid: peer.uid, gid: peer.gid) { return context.fireChannelRead(data) }
        refused = true
        let who = peer.map { "uid \($0.uid), gid \($0.gid)" } ?? "a process whose credentials could not be read"
        let error = MeshError(.permissionDenied, "the meshd API serves \(access.whoMay); this caller is \(who)",
                              hint: "run meshctl as root, or start meshd with --api-group GROUP and add the user to it")
        let body = (try? MeshJSON.encoder().encode(ErrorResponse(error: error))) ?? Data()
        var head = HTTPResponse(status: .forbidden)
        head.headerFields[.contentType] = "application/json"
        head.headerFields[.contentLength] = "\(body.count)"
        head.headerFields[.connection] = "close"
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(context.channel.allocator.buffer(bytes: body))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in context.close(promise: nil) }
    }
}
