/// Mutual TLS between nodes: what meshd tells its proxy so that flows to other nodes'
/// endpoints that require authentication travel inside an mTLS tunnel between the two
/// nodes' proxies, and so that the receiving proxy can check who is knocking.
///
/// The tunnel: one TLS 1.3 connection per tunnelled TCP connection, from the client
/// endpoint's node to the destination node's proxy on `port`, the client presenting the
/// *source endpoint's* SVID and the server its *node* certificate. Right after the
/// handshake the client sends an HTTP/1.1 head, `CONNECT ip:port` (the original
/// destination) with `SwiftMesh-Source: ip:port` (the original source); `200` opens it, then
/// the bytes flow both ways as they are. A refusal is `403` (or `400`) with a
/// `SwiftMesh-Reason` header (`identity_not_allowed`, ...), then the connection closes.
/// (HBONE multiplexes connections as HTTP/2 streams over one TLS connection per workload
/// pair; one TLS connection per TCP connection costs a handshake each, and keeps each
/// connection's fate its own.)
public struct ProxyTunnelConfig: Codable, Sendable, Equatable {
    /// The SPIFFE trust domain (`cluster.local`).
    public var trustDomain: String
    /// PEM file with every root a peer's chain may end at (the trust bundle).
    public var trustBundlePath: String
    /// This node's certificate (leaf, then its intermediate) and key, presented by the
    /// inbound listener. Its URI SAN is `nodeSPIFFEID(trustDomain:node:)`.
    public var nodeCertificatePath: String
    public var nodeKeyPath: String
    public var nodeName: String
    /// The inbound listener's TCP port, the same on every node.
    public var port: UInt16
    /// This node's endpoints and their SVIDs (a tunnel is opened with the source's).
    public var workloads: [TunnelWorkload]
    /// Other nodes' endpoints: who they are (to check a tunnel's claimed source against
    /// its certificate) and where they live (to open a tunnel to them).
    public var peers: [TunnelPeer]
    /// Rules of this node's endpoints that require authentication: a tunnelled connection
    /// is let through only when one of them names the peer's identity on the port.
    public var authRules: [TunnelAuthPolicy]
    /// Grows whenever a certificate file was rewritten (rotation): new TLS connections
    /// then read the files again; connections already open keep going.
    public var certificateGeneration: UInt64

    public init(trustDomain: String, trustBundlePath: String, nodeCertificatePath: String, nodeKeyPath: String,
                nodeName: String, port: UInt16, workloads: [TunnelWorkload], peers: [TunnelPeer],
                authRules: [TunnelAuthPolicy], certificateGeneration: UInt64) {
        self.trustDomain = trustDomain
        self.trustBundlePath = trustBundlePath
        self.nodeCertificatePath = nodeCertificatePath
        self.nodeKeyPath = nodeKeyPath
        self.nodeName = nodeName
        self.port = port
        self.workloads = workloads
        self.peers = peers
        self.authRules = authRules
        self.certificateGeneration = certificateGeneration
    }

    /// The URI SAN of a workload's certificate (its SVID).
    public static func workloadSPIFFEID(trustDomain: String, namespace: String, serviceAccount: String) -> String {
        "spiffe://\(trustDomain)/ns/\(namespace)/sa/\(serviceAccount)"
    }

    /// The URI SAN of a node's certificate.
    public static func nodeSPIFFEID(trustDomain: String, node: String) -> String {
        "spiffe://\(trustDomain)/swiftmesh/node/\(node)"
    }
}

/// One of this node's endpoints and the files of its SVID (certificate then intermediate).
public struct TunnelWorkload: Codable, Sendable, Equatable {
    public var ip: IPv4Address
    public var spiffeID: String
    public var certificatePath: String
    public var keyPath: String

    public init(ip: IPv4Address, spiffeID: String, certificatePath: String, keyPath: String) {
        self.ip = ip
        self.spiffeID = spiffeID
        self.certificatePath = certificatePath
        self.keyPath = keyPath
    }
}

/// An endpoint of another node.
public struct TunnelPeer: Codable, Sendable, Equatable {
    public var ip: IPv4Address
    public var name: String
    public var namespace: String
    public var identity: UInt32
    public var spiffeID: String
    public var nodeName: String
    public var nodeIP: IPv4Address
    /// Its node accepts TCP to it only through a tunnel (an ingress rule requires
    /// authentication, or the node is `mtls: strict`); the datapath then hands this
    /// node's connections to it to the proxy, which opens one.
    public var tunnel: Bool

    public init(ip: IPv4Address, name: String, namespace: String, identity: UInt32, spiffeID: String,
                nodeName: String, nodeIP: IPv4Address, tunnel: Bool) {
        self.ip = ip
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.spiffeID = spiffeID
        self.nodeName = nodeName
        self.nodeIP = nodeIP
        self.tunnel = tunnel
    }
}

/// The allow rules of one direction of one of this node's endpoints that require
/// authentication: on ingress their peers are sources (an endpoint without any, a strict
/// node's, is judged by the kernel's L4 policy alone once the tunnel proved the peer's
/// address); on egress, destinations.
public struct TunnelAuthPolicy: Codable, Sendable, Equatable {
    public var endpoint: IPv4Address
    public var rules: [TunnelAuthRule]

    public init(endpoint: IPv4Address, rules: [TunnelAuthRule]) {
        self.endpoint = endpoint
        self.rules = rules
    }
}

public struct TunnelAuthRule: Codable, Sendable, Equatable {
    /// Peer identities; 0 stands for every peer.
    public var peers: [UInt32]
    public var fromPort: UInt16
    public var toPort: UInt16
    public var ruleID: UInt32
    /// What the rule stands for (`default/secure specs[0].ingress[0] (allow)`).
    public var rule: String

    public init(peers: [UInt32], fromPort: UInt16, toPort: UInt16, ruleID: UInt32, rule: String) {
        self.peers = peers
        self.fromPort = fromPort
        self.toPort = toPort
        self.ruleID = ruleID
        self.rule = rule
    }

    public func covers(identity: UInt32, port: UInt16) -> Bool {
        (peers.contains(0) || peers.contains(identity)) && fromPort <= port && port <= toPort
    }
}

/// Why a tunnel or one of its connections was refused; a metric label and a
/// `swiftmesh-reason` value.
public enum TunnelRefusal: String, Codable, Sendable, CaseIterable {
    /// The client sent no certificate.
    case noClientCertificate = "no_client_certificate"
    /// The chain does not end at a root of the trust bundle.
    case unknownCA = "unknown_ca"
    /// A certificate of the chain is expired (or not yet valid).
    case expired
    /// Bytes that are not a TLS handshake (plaintext to the tunnel port).
    case notTLS = "not_tls"
    /// The certificate has no SPIFFE ID of this trust domain.
    case badIdentity = "bad_identity"
    /// The claimed source address is not an endpoint with the certificate's SPIFFE ID.
    case identityMismatch = "identity_mismatch"
    /// No authentication-requiring rule of the destination names the peer on this port.
    case identityNotAllowed = "identity_not_allowed"
    /// The destination is not an endpoint of this node, or the request is not a CONNECT.
    case badRequest = "bad_request"
    /// Outbound: the source's egress rule requires authentication, and no tunnel leads to
    /// the destination (not an endpoint of another node of the cluster, or no cluster).
    case noTunnel = "no_tunnel"
    /// Any other handshake failure.
    case handshake
}
