import MeshModel
import NIOCore
import NIOSSL

/// The ingress gateway's ports of one configuration, compiled once (routes checked, TLS
/// contexts made from the certificate files) and replaced with the rest of it.
final class GatewayPorts: Sendable {
    private let ports: [UInt16: GatewayPort]
    /// Listeners left out, with why (a certificate that did not load).
    let skipped: [String]

    static let empty = GatewayPorts()

    private init() {
        ports = [:]
        skipped = []
    }

    /// Slow (it reads certificate files): call it off the event loops, as PolicyStore does.
    init(_ config: ProxyConfig) throws(MeshError) {
        var ports: [UInt16: GatewayPort] = [:]
        var skipped: [String] = []
        for p in config.gateways {
            var listeners: [GatewayListener] = []
            for l in p.listeners {
                var ssl: NIOSSLContext?
                if p.proto == .https {
                    guard let files = l.certificate else {
                        skipped.append("\(l.label): an HTTPS listener without a certificate")
                        continue
                    }
                    do {
                        ssl = try Self.serverContext(files)
                    } catch {
                        skipped.append("\(l.label): \(files.certificate): \(error)")
                        continue
                    }
                }
                let frontend = try l.route.map { r throws(MeshError) in
                    try RoutedFrontend(r, address: PeerAddress(ip: IPv4Address(0), port: p.port))
                }
                listeners.append(GatewayListener(label: l.label, hostname: l.hostname, frontend: frontend, ssl: ssl,
                                                 passthrough: l.passthrough))
            }
            ports[p.port] = GatewayPort(port: p.port, proto: p.proto, listeners: listeners)
        }
        self.ports = ports
        self.skipped = skipped
    }

    func port(_ number: UInt16) -> GatewayPort? { ports[number] }

    /// The ports to listen on, and what each speaks.
    var listening: [UInt16: Gateway.ListenerProtocol] { ports.mapValues(\.proto) }

    var backendAddresses: Set<PeerAddress> {
        var all = Set<PeerAddress>()
        for p in ports.values {
            for l in p.listeners {
                for rule in l.frontend?.rules ?? [] { for g in rule.rule.backends { for e in g.endpoints { all.insert(PeerAddress(e)) } } }
            }
        }
        return all
    }

    var frontendAddresses: Set<PeerAddress> { Set(ports.keys.map { PeerAddress(ip: IPv4Address(0), port: $0) }) }

    private static func serverContext(_ files: ProxyCertificateFiles) throws -> NIOSSLContext {
        var c = TLSConfiguration.makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMFile(files.certificate).map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(file: files.key, format: .pem)))
        c.minimumTLSVersion = .tlsv12
        // HTTP/2 first, as clients prefer it; one that offers no ALPN speaks HTTP/1.1.
        c.applicationProtocols = ["h2", "http/1.1"]
        return try NIOSSLContext(configuration: c)
    }
}

struct GatewayPort: Sendable {
    let port: UInt16
    let proto: Gateway.ListenerProtocol
    let listeners: [GatewayListener]

    /// The listener that takes `host` (an SNI or a Host header, port removed): an exact
    /// hostname first, then the longest wildcard, then one that takes every hostname.
    func listener(for host: String?) -> GatewayListener? {
        guard let host, !host.isEmpty else { return listeners.first { $0.hostname == nil } }
        let name = Self.withoutPort(host).lowercased()
        var best: (GatewayListener, Int)?
        for l in listeners {
            if let s = GatewayHostname.specificity(l.hostname, host: name), s > (best?.1 ?? -1) { best = (l, s) }
        }
        return best?.0
    }

    func listener(labelled label: String) -> GatewayListener? { listeners.first { $0.label == label } }

    static func withoutPort(_ host: String) -> Substring {
        guard let colon = host.lastIndex(of: ":"), host[host.index(after: colon)...].allSatisfy(\.isNumber) else { return host[...] }
        return host[..<colon]
    }
}

struct GatewayListener: Sendable {
    /// `namespace/gateway/listener`.
    let label: String
    let hostname: String?
    /// HTTP, HTTPS: the attached HTTPRoutes; nil when none is.
    let frontend: RoutedFrontend?
    /// HTTPS: the certificate's context.
    let ssl: NIOSSLContext?
    /// TLS: the attached TLSRoutes.
    let passthrough: [ProxyPassthroughRoute]

    /// The TLSRoute that takes `sni`: one naming it exactly, else the longest wildcard,
    /// else one without hostnames; the older wins a tie.
    func passthroughRoute(for sni: String?) -> ProxyPassthroughRoute? {
        var best: (ProxyPassthroughRoute, Int)?
        for r in passthrough {
            let s: Int? = r.hostnames.isEmpty ? 0
                : sni.flatMap { name in r.hostnames.compactMap { GatewayHostname.specificity($0, host: name) }.max() }
            if let s, s > (best?.1 ?? -1) { best = (r, s) }
        }
        return best?.0
    }
}

extension ProxyMetrics {
    enum GatewayOutcome: String {
        /// Handed to the HTTP handling (HTTP, HTTPS after the handshake) or relayed (TLS).
        case accepted
        /// No listener of the port takes the SNI (or, without SNI, no listener takes every name).
        case noListener = "no_listener"
        /// The TLS handshake failed (HTTPS).
        case tlsFailed = "tls_failed"
        /// A TLS listener has no TLSRoute for the SNI.
        case noRoute = "no_route"
        /// The route's backends have no ready endpoint, or none answered.
        case noBackend = "no_backend"
        /// The first bytes were not a TLS ClientHello (HTTPS, TLS).
        case notTLS = "not_tls"
    }

    func gatewayConnection(port: UInt16, _ outcome: GatewayOutcome) {
        keptCounter("mesh_gateway_connections_total", "Connections to the ingress gateway's ports, by port and outcome.",
                    labels: [("port", "\(port)"), ("result", outcome.rawValue)]).increment()
    }
}
