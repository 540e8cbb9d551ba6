import MeshModel
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// What the proxy learnt about one request while handling it; reported once it is over.
struct ExchangeRecord: Sendable {
    var started: ContinuousClock.Instant
    var method: String
    var target: String
    var host: String
    var source: PeerAddress
    var destination: PeerAddress
    var status: Int = 0
    var verdict: L7Event.Verdict = .forwarded
    var ruleID: UInt32 = 0
    var rule: String = ""
    /// Why the proxy answered itself.
    var error: String?
    var requestBodyBytes = 0
    var responseBodyBytes = 0
    var duration: Duration = .zero
    /// Set when the request was routed; `destination` is then the last backend tried (or
    /// the frontend, when none was).
    var route: RoutedRecord?
}

/// How a routed request went.
struct RoutedRecord: Sendable {
    /// The frontend's Service, `namespace/name`.
    var service: String
    var rule: String?
    /// The endpoint of the last attempt.
    var backend: ProxyBackendEndpoint?
    var attempts = 0
}

/// An IPv4 address and port as policy and events see them.
struct PeerAddress: Sendable, Hashable, CustomStringConvertible {
    var ip: IPv4Address
    var port: UInt16

    init(ip: IPv4Address, port: UInt16) {
        self.ip = ip
        self.port = port
    }

    /// nil for anything but IPv4: the listener and the datapath are IPv4 only.
    init?(_ address: SocketAddress?) {
        guard case .v4(let v4)? = address, let port = address?.port, let p = UInt16(exactly: port) else { return nil }
        self.init(ip: IPv4Address(UInt32(bigEndian: v4.address.sin_addr.s_addr)), port: p)
    }

    var description: String { "\(ip):\(port)" }
}

extension PeerAddress {
    /// The address to connect to.
    var socketAddress: SocketAddress {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = ip.networkOrder
        return SocketAddress(address, host: ip.description)
    }
}
