import MeshABI
import NIOCore

/// Where a downstream connection was originally headed.
public enum OriginalDestination: Sendable {
    /// The accepted socket's local address: with IP_TRANSPARENT and bpf_sk_assign, the
    /// kernel keeps the client's original destination there. What production uses.
    case localAddress
    /// Every connection goes to this address, whatever the client dialled. Lets tests run
    /// the proxy on loopback without a redirecting datapath.
    case fixed(SocketAddress)
}

/// Everything that shapes one proxy instance; the defaults are production's.
public struct ProxySettings: Sendable {
    /// Address of the transparent listener. Port 0 picks a free port (tests).
    public var host: String = "0.0.0.0"
    public var port: Int = Int(MESH_PROXY_DEFAULT_PORT)
    /// The unix socket meshd connects to.
    public var controlPath: String = "/run/swiftmesh/proxy.sock"
    public var originalDestination: OriginalDestination = .localAddress
    /// A request head must be complete this long after its first byte (slowloris).
    public var headerTimeout: TimeAmount = .seconds(10)
    /// A keep-alive connection with no request in progress closes after this long.
    public var idleTimeout: TimeAmount = .seconds(60)
    /// Connecting upstream may take this long, and so may the response head once the
    /// request has been sent (504 either way).
    public var upstreamTimeout: TimeAmount = .seconds(30)
    /// Connections accepted beyond this many open ones are closed at once.
    public var maxConnections: Int = 10_000
    /// Largest request head (request line and headers) the decoder accepts (431 beyond).
    public var maxHeadBytes: Int = 64 * 1024
    /// Largest control message; a whole ProxyConfig travels as one line.
    public var maxControlLineBytes: Int = 64 * 1024 * 1024

    public init() {}
}
