import Foundation
import MeshModel

/// Where a cluster keeps its state in etcd, and what each key holds. Everything sits under
/// one versioned prefix, so a later layout can live beside this one during an upgrade.
///
/// | key | value | lease |
/// | --- | --- | --- |
/// | `nodes/NODE` | `NodeRecord` (JSON) | the node's |
/// | `podcidrs/CIDR` | owning node name | the node's |
/// | `endpoints/NODE/NAME` | `EndpointRecord` (JSON) | the node's |
/// | `identities/id/N` | the label set of identity N | none |
/// | `identities/labels/LABELS` | N | none |
/// | `identities/users/N/NODE` | empty: NODE uses N | the node's |
/// | `docs/KIND/KEY` | a document as `meshctl apply` took it (YAML) | none |
/// | `trust/root` | the cluster's root certificate (PEM), made by the first node | none |
/// | `trust/csr/NODE` | NODE's request for an intermediate (PEM) | none |
/// | `trust/intermediates/NODE` | NODE's intermediate, signed by the root's holder (PEM) | none |
///
/// Whatever a node owns is under its lease: a node that dies without notice vanishes from
/// every other node's view when the lease lapses, in one etcd revision.
public enum ClusterKeys {
    public static let root = "/swiftmesh/v1/"
    public static let nodes = root + "nodes/"
    public static let podCIDRs = root + "podcidrs/"
    public static let endpoints = root + "endpoints/"
    public static let identityIDs = root + "identities/id/"
    public static let identityLabels = root + "identities/labels/"
    public static let identityUsers = root + "identities/users/"
    public static let docs = root + "docs/"
    public static let trust = root + "trust/"
    public static let trustRoot = trust + "root"
    public static let trustRequests = trust + "csr/"
    public static let trustIntermediates = trust + "intermediates/"
    /// During a root roll: the root about to become the cluster's, trusted already.
    public static let trustNextRoot = trust + "next-root"
    /// During a root roll's overlap: the root the cluster left, still trusted.
    public static let trustPreviousRoot = trust + "previous-root"
    /// Each node's report of its bundle and root (a TrustAck), so a roll knows when every
    /// node has taken a step.
    public static let trustAcks = trust + "acks/"

    static func node(_ name: String) -> String { nodes + name }
    /// A CIDR's key: `10.201.1.0-24` (no `/`, which would read as a folder).
    static func podCIDR(_ cidr: IPv4CIDR) -> String { podCIDRs + "\(cidr.network)-\(cidr.prefixLength)" }
    /// The CIDR a `podCIDR(_:)` key names; nil for anything else.
    static func podCIDR(key: String) -> IPv4CIDR? {
        guard key.hasPrefix(podCIDRs) else { return nil }
        return try? IPv4CIDR(parsing: key.dropFirst(podCIDRs.count).replacingOccurrences(of: "-", with: "/"))
    }
    static func endpoint(node: String, name: String) -> String { endpoints + node + "/" + name }
    static func identityID(_ id: UInt32) -> String { identityIDs + String(id) }
    static func identityLabels(_ labels: String) -> String { identityLabels + labels }
    static func identityUsers(_ id: UInt32) -> String { identityUsers + String(id) + "/" }
    static func identityUser(_ id: UInt32, node: String) -> String { identityUsers(id) + node }
    static func doc(kind: String, key: String) -> String { docs + kind + "/" + key }
}

/// A node as the others see it.
public struct NodeRecord: Codable, Sendable, Equatable {
    public var name: String
    public var ip: IPv4Address
    public var podCIDR: IPv4CIDR
    public var version: String
    public var startedAt: Date
    /// When the node last renewed its lease (it rewrites its record then).
    public var heartbeat: Date
    public var endpoints: Int
}

/// An endpoint as the other nodes need it: where it is, who it is, whether it serves.
public struct EndpointRecord: Codable, Sendable, Equatable {
    public var name: String
    public var node: String
    public var ip: IPv4Address
    /// The label set its identity stands for (its own labels and its namespace's).
    public var labels: Labels
    public var identity: UInt32
    public var ports: [String: UInt16]
    public var ready: Bool
    /// Its SVID's SPIFFE ID, its node's address, and whether its node accepts connections
    /// to it only through the mTLS tunnel. Optional: records of older nodes lack them.
    public var spiffeID: String?
    public var nodeIP: IPv4Address?
    public var tunnel: Bool?
}

extension JSONEncoder {
    static let cluster: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        e.dateEncodingStrategy = .iso8601
        return e
    }()
}

extension JSONDecoder {
    static let cluster: JSONDecoder = {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        return d
    }()
}
