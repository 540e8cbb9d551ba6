#if canImport(Glibc)
import Glibc
#endif
import NIOCore

/// Why the proxy could not start, in words an operator can act on.
public struct ProxyError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// The listener's port is taken by another process.
        case addressInUse = "address_in_use"
        /// IP_TRANSPARENT or SO_MARK was refused: the process lacks CAP_NET_ADMIN.
        case permissionDenied = "permission_denied"
        /// The control socket's folder or file could not be prepared.
        case controlSocket = "control_socket"
        case other
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }

    /// Names the cause of a failed listener bind from the errno NIO reports.
    static func listen(_ error: any Error, host: String, port: Int) -> ProxyError {
        let errno = (error as? IOError)?.errnoCode
        switch errno {
        case EADDRINUSE:
            return ProxyError(.addressInUse, "cannot listen on \(host):\(port): the port is already in use by another process")
        case EPERM, EACCES:
            return ProxyError(.permissionDenied, "cannot listen on \(host):\(port): setting IP_TRANSPARENT was refused; "
                              + "the proxy needs CAP_NET_ADMIN (run it as root)")
        default:
            return ProxyError(.other, "cannot listen on \(host):\(port): \(error)")
        }
    }
}
