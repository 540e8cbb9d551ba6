import MeshABI
import NIOCore

/// The raw socket options of a transparent proxy, which NIO has no names for.
enum TransparentSocket {
    /// IP_TRANSPARENT (SOL_IP, 19): accept connections for, and bind to, addresses that are
    /// not the node's own. Needs CAP_NET_ADMIN.
    static let ipTransparent = ChannelOptions.Types.SocketOption(level: 0, name: 19)
    /// SO_MARK (SOL_SOCKET, 36): the mark the datapath reads to let the proxy's own upstream
    /// connections through instead of redirecting them back to the proxy.
    static let soMark = ChannelOptions.Types.SocketOption(level: 1, name: 36)
    static let fromProxyMark = SocketOptionValue(MESH_MARK_FROM_PROXY)
    /// The gateway's upstream connections: from the proxy, judged as reserved:ingress.
    static let fromGatewayMark = SocketOptionValue(MESH_MARK_FROM_PROXY | MESH_MARK_GATEWAY)
    /// IP_BIND_ADDRESS_NO_PORT (SOL_IP, 24): bind() to port 0 takes no port; connect()
    /// picks one unique for the whole 4-tuple.
    static let bindAddressNoPort = ChannelOptions.Types.SocketOption(level: 0, name: 24)
}
