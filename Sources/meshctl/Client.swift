import AsyncHTTPClient
import Foundation
import MeshModel
import NIOCore
import NIOFoundationCompat
import NIOHTTP1

/// Talks to meshd's API over its unix socket, turning every failure into a MeshError
/// with a message that says what to do.
struct APIClient {
    let socket: String

    /// Connects once by hand first: the socket's errno tells "not running" from "not root"
    /// far better than an HTTP client's wrapped error would.
    func checkReachable() throws(MeshError) {
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw MeshError(.internalError, "cannot create a socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(socket.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw .invalid("API socket path \(socket) is too long")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes) }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if rc == 0 { return }
        switch errno {
        case ENOENT, ECONNREFUSED:
            throw MeshError(.unavailable, "meshd is not running at \(socket)",
                            hint: "start it as root (sudo meshd), or point at it with --api-socket or SWIFTMESH_API_SOCKET")
        case EACCES, EPERM:
            throw MeshError(.permissionDenied, "permission denied on \(socket)", hint: "meshctl talks to a root-only socket: run it as root")
        default:
            throw MeshError(.unavailable, "cannot connect to meshd at \(socket): \(String(cString: strerror(errno)))")
        }
    }

    /// GET a stream of JSON lines, handing each decoded line to `each` until the server
    /// ends the stream or `each` returns false.
    func stream<T: Decodable>(_ path: String, as: T.Type, _ each: (T) throws -> Bool) async throws {
        try checkReachable()
        guard let url = URL(httpURLWithSocketPath: socket, uri: path) else { throw MeshError.invalid("bad API socket path \(socket)") }
        let response: HTTPClientResponse
        do { response = try await HTTPClient.shared.execute(HTTPClientRequest(url: url.absoluteString), timeout: .hours(24 * 365)) } catch {
            throw MeshError(.unavailable, "request to meshd failed: \(error)")
        }
        guard response.status == .ok else {
            let body = try await response.body.collect(upTo: 1 << 20)
            if let e = try? MeshJSON.decoder().decode(ErrorResponse.self, from: Data(buffer: body)) { throw e.error }
            throw MeshError(.internalError, "meshd answered \(response.status) to GET \(path)")
        }
        var pending = Data()
        let decoder = MeshJSON.decoder()
        for try await chunk in response.body {
            pending.append(Data(buffer: chunk))
            while let nl = pending.firstIndex(of: 0x0a) {
                let line = pending[pending.startIndex..<nl]
                pending = Data(pending[(nl + 1)...])
                if let value = try? decoder.decode(T.self, from: line), try !each(value) { return }
            }
        }
    }

    func call<T: Decodable>(_ method: HTTPMethod, _ path: String, body: (some Encodable)? = nil as String?,
                            as: T.Type = T.self) async throws -> T {
        try checkReachable()
        guard let url = URL(httpURLWithSocketPath: socket, uri: path) else { throw MeshError.invalid("bad API socket path \(socket)") }
        var request = HTTPClientRequest(url: url.absoluteString)
        request.method = method
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: try MeshJSON.encoder().encode(body)))
        }
        let response: HTTPClientResponse
        let data: ByteBuffer
        do {
            response = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
            data = try await response.body.collect(upTo: 64 << 20)
        } catch {
            throw MeshError(.unavailable, "request to meshd failed: \(error)")
        }
        let bytes = Data(buffer: data)
        guard (200..<300).contains(response.status.code) else {
            if let e = try? MeshJSON.decoder().decode(ErrorResponse.self, from: bytes) { throw e.error }
            throw MeshError(.internalError, "meshd answered \(response.status) to \(method) \(path)")
        }
        do { return try MeshJSON.decoder().decode(T.self, from: bytes) } catch {
            throw MeshError(.internalError, "meshd's answer to \(method) \(path) could not be read: \(error)")
        }
    }
}
