import Foundation

/// API paths and wire types of `meshctl apply`, services, namespaces and the load balancer.
extension APIPath {
    /// POST a PolicyApplyRequest whose YAML holds any mix of the kinds SwiftMesh reads.
    public static let apply = "/v1/apply"
    public static let services = "/v1/services"
    public static func service(_ namespace: String, _ name: String) -> String { "/v1/services/\(namespace)/\(name)" }
    public static let namespaces = "/v1/namespaces"
    public static func namespace(_ name: String) -> String { "/v1/namespaces/\(name)" }
    public static let bpfLB = "/v1/bpf/lb"
}

/// What `POST /v1/apply` did, one line per object as kubectl prints them
/// (`service/default/web created`), and the policy part's figures when it had policies.
public struct ApplyResult: Codable, Sendable {
    public var changes: [String]
    public var policy: PolicyApplyResult?
    public var dryRun: Bool
    public var warnings: [String]
    public init(changes: [String], policy: PolicyApplyResult?, dryRun: Bool, warnings: [String]) {
        self.changes = changes
        self.policy = policy
        self.dryRun = dryRun
        self.warnings = warnings
    }
}

/// A service as `meshctl get service` shows it: what was applied, the address it got, and
/// its backends with their state.
public struct ServiceView: Codable, Sendable {
    public struct Backend: Codable, Sendable, Equatable {
        public var endpoint: String
        public var address: IPv4Address
        /// `ready`, `unready` (its probe fails, or has not passed yet).
        public var state: String
        /// Target port per service port name (or port number when unnamed); a port the
        /// endpoint has no such name for is missing.
        public var ports: [String: Int]
        public init(endpoint: String, address: IPv4Address, state: String, ports: [String: Int]) {
            self.endpoint = endpoint
            self.address = address
            self.state = state
            self.ports = ports
        }
    }

    public var name: String
    public var namespace: String
    public var clusterIP: IPv4Address
    public var ports: [MeshService.Port]
    public var selector: [String: String]
    public var sessionAffinity: String
    public var affinityTimeoutSeconds: Int?
    public var backends: [Backend]
    public var appliedAt: Date
    /// `NAME.NAMESPACE.svc.cluster.local`.
    public var dnsName: String

    public init(service: MeshService, clusterIP: IPv4Address, backends: [Backend], appliedAt: Date) {
        name = service.name
        namespace = service.namespace
        self.clusterIP = clusterIP
        ports = service.ports
        selector = service.selector
        sessionAffinity = service.affinityTimeoutSeconds == nil ? "None" : "ClientIP"
        affinityTimeoutSeconds = service.affinityTimeoutSeconds.map(Int.init)
        self.backends = backends
        self.appliedAt = appliedAt
        dnsName = "\(service.name).\(service.namespace).svc.cluster.local"
    }
}

public struct NamespaceView: Codable, Sendable {
    public var name: String
    public var labels: Labels
    public var endpoints: [String]
    public var services: [String]
    public init(name: String, labels: Labels, endpoints: [String], services: [String]) {
        self.name = name
        self.labels = labels
        self.endpoints = endpoints
        self.services = services
    }
}

/// `GET /v1/bpf/lb`: one frontend as the kernel holds it.
public struct BPFLBRow: Codable, Sendable {
    public var frontend: Int
    public var service: String
    public var vip: String
    public var proto: String
    public var affinitySeconds: Int?
    /// `endpoint address:port` per slot, in slot order.
    public var backends: [String]
    /// An HTTPRoute binds it: connect() keeps the VIP and mesh-proxy picks per request.
    public var routed: Bool?
    public init(frontend: Int, service: String, vip: String, proto: String, affinitySeconds: Int?, backends: [String],
                routed: Bool? = nil) {
        self.routed = routed
        self.frontend = frontend
        self.service = service
        self.vip = vip
        self.proto = proto
        self.affinitySeconds = affinitySeconds
        self.backends = backends
    }
}

/// An endpoint's readiness probe, run by meshd from the node: `tcp:PORT` (a connection
/// opens) or `http:PORT/PATH` (a GET answers 200-399). PORT is a number or one of the
/// endpoint's port names.
public struct ReadinessProbe: Codable, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Codable, Sendable { case tcp, http }
    public var kind: Kind
    /// A number or a port name, resolved against the endpoint's ports.
    public var port: String
    public var path: String
    public var intervalSeconds: Double
    public var timeoutSeconds: Double
    /// Consecutive failures that make a ready endpoint unready.
    public var failureThreshold: Int
    /// Consecutive successes that make an unready endpoint ready.
    public var successThreshold: Int

    public init(parsing text: String, intervalSeconds: Double = 1, timeoutSeconds: Double = 1,
                failureThreshold: Int = 3, successThreshold: Int = 1) throws(MeshError) {
        let hint = "write tcp:8080, http:8080/healthz or http:http/healthz (a port name)"
        guard let colon = text.firstIndex(of: ":") else { throw .invalid("readiness probe \"\(text)\" has no kind", hint: hint) }
        guard let kind = Kind(rawValue: String(text[..<colon])) else {
            throw .invalid("readiness probe \"\(text)\": \"\(text[..<colon])\" is neither tcp nor http", hint: hint)
        }
        var rest = Substring(text[text.index(after: colon)...])
        var path = ""
        if let slash = rest.firstIndex(of: "/") {
            guard kind == .http else { throw .invalid("readiness probe \"\(text)\": a tcp probe has no path", hint: hint) }
            path = String(rest[slash...])
            rest = rest[..<slash]
        } else if kind == .http {
            path = "/"
        }
        let port = String(rest)
        self.kind = kind
        self.port = port
        self.path = path
        self.intervalSeconds = intervalSeconds
        self.timeoutSeconds = timeoutSeconds
        self.failureThreshold = failureThreshold
        self.successThreshold = successThreshold
        try validate()
    }

    enum CodingKeys: String, CodingKey {
        case kind, port, path, intervalSeconds, timeoutSeconds, failureThreshold, successThreshold
    }

    /// A probe from the API gets the same checks as one typed on the command line.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        kind = try c.decode(Kind.self, forKey: .kind)
        port = try c.decode(String.self, forKey: .port)
        path = try c.decode(String.self, forKey: .path)
        intervalSeconds = try c.decode(Double.self, forKey: .intervalSeconds)
        timeoutSeconds = try c.decode(Double.self, forKey: .timeoutSeconds)
        failureThreshold = try c.decode(Int.self, forKey: .failureThreshold)
        successThreshold = try c.decode(Int.self, forKey: .successThreshold)
        do { try validate() } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: error.message))
        }
    }

    func validate() throws(MeshError) {
        if let n = Int(port) {
            guard (1...65535).contains(n) else { throw .invalid("readiness probe \(self): \(n) is not a port number (1-65535)") }
        } else {
            try EndpointPorts.validateName(port, what: "readiness probe \(self): port")
        }
        guard kind == .http || path.isEmpty else { throw .invalid("readiness probe \(self): a tcp probe has no path") }
        guard kind == .tcp || path.hasPrefix("/"), path.count <= 1024,
              path.allSatisfy({ $0.isASCII && !$0.isWhitespace && !$0.isNewline && $0 != "\u{0}" }) else {
            throw .invalid("readiness probe \(self): the path must start with / and be printable ASCII without spaces, at most 1024 characters")
        }
        guard intervalSeconds.isFinite, intervalSeconds >= 0.1, intervalSeconds <= 3600 else {
            throw .invalid("readiness interval \(intervalSeconds) s is outside 0.1-3600 s")
        }
        guard timeoutSeconds.isFinite, timeoutSeconds >= 0.05, timeoutSeconds <= intervalSeconds * 10 else {
            throw .invalid("readiness timeout \(timeoutSeconds) s is outside 0.05 s to ten intervals")
        }
        guard (1...100).contains(failureThreshold), (1...100).contains(successThreshold) else {
            throw .invalid("readiness thresholds must be 1-100")
        }
    }

    public var description: String { kind == .tcp ? "tcp:\(port)" : "http:\(port)\(path)" }
}

/// An endpoint's named ports (`--ports http=8080,grpc=9090`), which a Service's
/// `targetPort: http` refers to.
public enum EndpointPorts {
    public static func parse(_ text: String) throws(MeshError) -> [String: UInt16] {
        var out: [String: UInt16] = [:]
        let trimmed = text.trimmingWhitespace()
        guard !trimmed.isEmpty else { return [:] }
        for (i, part) in trimmed.split(separator: ",", omittingEmptySubsequences: false).enumerated() {
            let pair = part.trimmingWhitespace()
            guard let eq = pair.firstIndex(of: "=") else {
                throw .invalid("port \(i + 1) \"\(pair)\" is not name=number", hint: "write ports as http=8080,grpc=9090")
            }
            let name = String(pair[..<eq]), number = String(pair[pair.index(after: eq)...])
            try validateName(name, what: "port \(i + 1)")
            guard let n = Int(number), (1...65535).contains(n) else {
                throw .invalid("port \(i + 1) \"\(pair)\": \"\(number)\" is not a port number (1-65535)")
            }
            guard out[name] == nil else { throw .invalid("port name \"\(name)\" is given twice") }
            out[name] = UInt16(n)
        }
        return out
    }

    public static func validateName(_ name: String, what: String) throws(MeshError) {
        guard ServiceReader.isPortName(name) else {
            throw .invalid("\(what): \"\(name)\" is not a port name: 1-15 lowercase letters, digits and '-', with at least one letter")
        }
    }
}
