import Foundation

/// The versioned HTTP/JSON API between `meshctl` and `meshd` (served on a unix socket).
/// Paths live here so both sides name them once.
public enum APIPath {
    public static let status = "/v1/status"
    public static let endpoints = "/v1/endpoints"
    public static func endpoint(_ name: String) -> String { "/v1/endpoints/\(name)" }
}

/// Body of `POST /v1/endpoints`.
public struct EndpointCreateRequest: Codable, Sendable {
    public var name: String
    public var labels: [String: String]
    public init(name: String, labels: [String: String]) {
        self.name = name
        self.labels = labels
    }
}

/// An endpoint as stored and as shown: a workload with its own namespace, veth and cgroup.
public struct Endpoint: Codable, Sendable, Equatable {
    public var id: Int
    public var name: String
    public var labels: Labels
    public var ipv4: IPv4Address
    /// Named network namespace (`ip netns`) of the workload.
    public var netns: String
    /// Host-side veth, in the node's namespace.
    public var interface: String
    /// Absolute cgroup v2 directory the workload's processes join.
    public var cgroup: String
    public var createdAt: Date

    public init(id: Int, name: String, labels: Labels, ipv4: IPv4Address, netns: String,
                interface: String, cgroup: String, createdAt: Date) {
        self.id = id
        self.name = name
        self.labels = labels
        self.ipv4 = ipv4
        self.netns = netns
        self.interface = interface
        self.cgroup = cgroup
        self.createdAt = createdAt
    }
}

/// `GET /v1/status`.
public struct NodeStatus: Codable, Sendable {
    public struct Program: Codable, Sendable {
        public var name: String
        public var id: Int
        /// Hooks it is attached to right now, e.g. `smv3/ingress`.
        public var attachments: [String]
        public init(name: String, id: Int, attachments: [String]) {
            self.name = name
            self.id = id
            self.attachments = attachments
        }
    }

    public struct Map: Codable, Sendable {
        public var name: String
        public var type: String
        public var entries: Int
        public var capacity: Int
        public init(name: String, type: String, entries: Int, capacity: Int) {
            self.name = name
            self.type = type
            self.entries = entries
            self.capacity = capacity
        }
    }

    public var version: String
    public var node: String
    public var podCIDR: String
    public var bpffs: String
    public var cgroup: String
    public var startedAt: Date
    public var programs: [Program]
    public var maps: [Map]
    public var endpoints: Int
    public var policies: Int = 0
    public var policyRevision: Int = 0

    public init(version: String, node: String, podCIDR: String, bpffs: String, cgroup: String,
                startedAt: Date, programs: [Program], maps: [Map], endpoints: Int) {
        self.version = version
        self.node = node
        self.podCIDR = podCIDR
        self.bpffs = bpffs
        self.cgroup = cgroup
        self.startedAt = startedAt
        self.programs = programs
        self.maps = maps
        self.endpoints = endpoints
    }
}

/// Every non-2xx answer carries one of these.
public struct ErrorResponse: Codable, Sendable {
    public var error: MeshError
    public init(error: MeshError) { self.error = error }
}

/// The JSON coding both sides use: ISO 8601 dates, sorted keys for stable output.
public enum MeshJSON {
    public static func encoder() -> JSONEncoder {
        let e = JSONEncoder()
        e.dateEncodingStrategy = .iso8601
        e.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        return e
    }

    public static func decoder() -> JSONDecoder {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        return d
    }
}

/// The version every binary reports.
public enum MeshVersion {
    public static let string = "0.1.0"
}
