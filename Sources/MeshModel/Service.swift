/// A Kubernetes `v1 Service` as SwiftMesh serves it: type ClusterIP, a label selector,
/// ports whose target is a number or an endpoint's named port, and optional ClientIP
/// session affinity. Its backends are never listed: they are the ready endpoints of its
/// namespace whose labels match the selector.
public struct MeshService: Codable, Sendable, Equatable {
    public enum TargetPort: Codable, Sendable, Equatable, CustomStringConvertible {
        case number(UInt16)
        /// A port name endpoints declare (`meshctl endpoint create --ports http=8080`).
        case name(String)

        public var description: String {
            switch self {
            case .number(let n): String(n)
            case .name(let s): s
            }
        }
    }

    public struct Port: Codable, Sendable, Equatable {
        public var name: String?
        public var port: UInt16
        public var targetPort: TargetPort
        /// `TCP` or `UDP`.
        public var proto: String
        public init(name: String?, port: UInt16, targetPort: TargetPort, proto: String) {
            self.name = name
            self.port = port
            self.targetPort = targetPort
            self.proto = proto
        }

        /// 6 or 17.
        public var protocolNumber: UInt8 { proto == "UDP" ? 17 : 6 }
    }

    public var name: String
    public var namespace: String
    public var selector: [String: String]
    public var ports: [Port]
    /// The address asked for; nil: meshd allocates one from its service CIDR.
    public var clusterIP: IPv4Address?
    /// Seconds of ClientIP session affinity; nil: `sessionAffinity: None`.
    public var affinityTimeoutSeconds: UInt32?

    public var key: String { "\(namespace)/\(name)" }

    public init(name: String, namespace: String, selector: [String: String], ports: [Port],
                clusterIP: IPv4Address? = nil, affinityTimeoutSeconds: UInt32? = nil) {
        self.name = name
        self.namespace = namespace
        self.selector = selector
        self.ports = ports
        self.clusterIP = clusterIP
        self.affinityTimeoutSeconds = affinityTimeoutSeconds
    }

    /// Whether an endpoint with these labels is selected. A service without a selector
    /// selects nothing, as in Kubernetes (whose users then list endpoints by hand).
    public func selects(_ labels: Labels) -> Bool {
        guard !selector.isEmpty, labels.namespace == namespace else { return false }
        return selector.allSatisfy { labels[$0.key] == $0.value }
    }

    /// Kubernetes' default for `sessionAffinityConfig.clientIP.timeoutSeconds`: 3 hours.
    public static let defaultAffinityTimeout: UInt32 = 10800
}

/// A Kubernetes `v1 Namespace`: a name and labels, which NetworkPolicy `namespaceSelector`
/// and Cilium's namespace-label selectors match.
public struct Namespace: Codable, Sendable, Equatable {
    public var name: String
    public var labels: Labels
    public init(name: String, labels: Labels) {
        self.name = name
        self.labels = labels
    }
}

extension Labels {
    /// The endpoint's namespace: its `namespace` label, else `default`.
    public var namespace: String { self["namespace"] ?? "default" }

    /// The label prefix under which an endpoint carries its namespace's labels, as Cilium
    /// names them; a policy's namespace selector matches them.
    public static let namespaceLabelPrefix = "io.cilium.k8s.namespace.labels."

    /// These labels plus the namespace's labels under `namespaceLabelPrefix`: what identity
    /// and policy see.
    public func withNamespaceLabels(_ ns: Labels?) -> Labels {
        guard let ns, !ns.values.isEmpty else { return self }
        var out = values
        // A prefixed key longer than a label name may be is left out, never made invalid.
        for (k, v) in ns.values where (try? Labels.validateKey(Self.namespaceLabelPrefix + k)) != nil {
            out[Self.namespaceLabelPrefix + k] = v
        }
        return (try? Labels(out)) ?? self
    }
}

/// Reads `v1` Service and Namespace documents (see PolicyParser for the error format).
enum ServiceReader {
    static let serviceTopLevel = ["apiVersion", "kind", "metadata", "spec"]
    static let specFields = ["selector", "ports", "clusterIP", "clusterIPs", "type", "sessionAffinity", "sessionAffinityConfig",
                             "ipFamilies", "ipFamilyPolicy", "internalTrafficPolicy", "publishNotReadyAddresses"]
    static let portFields = ["name", "port", "targetPort", "protocol", "appProtocol"]

    static func service(_ top: PolicyFields, metadata: PolicyMetadata) throws(PolicyFieldError) -> MeshService {
        let spec = try top.required("spec", hint: "a Service needs spec.ports and spec.selector").fields(allowed: specFields)
        if let t = spec.optional("type") {
            let type = try t.string()
            guard type == "ClusterIP" else {
                throw t.error("type \(type) is not supported; SwiftMesh serves ClusterIP services only",
                              hint: "leave type out or write type: ClusterIP")
            }
        }
        let selector = try spec.optional("selector")?.labelMap() ?? [:]
        var ports: [MeshService.Port] = []
        let portNodes = try spec.required("ports", hint: "give at least one port, e.g. ports: [{port: 80, targetPort: 8080}]")
            .nonEmptyList(of: "port")
        for node in portNodes {
            let f = try node.fields(allowed: portFields)
            var name: String?
            if let n = f.optional("name") {
                let s = try n.string()
                guard isDNSLabel(s) else { throw n.error("\"\(s)\" is not a valid port name: at most 63 lowercase letters, digits and '-'") }
                name = s
            }
            let port = try f.required("port").portNumber()
            let proto = try f.optional("protocol")?.choice(["TCP", "UDP"], what: "protocol") ?? "TCP"
            var target = MeshService.TargetPort.number(port)
            if let t = f.optional("targetPort") {
                switch t.tree {
                case .int: target = .number(try t.portNumber(field: "targetPort"))
                case .string(let s) where s.allSatisfy({ $0.isASCII && $0.isNumber }): target = .number(try t.portNumber(field: "targetPort"))
                case .string(let s):
                    guard isPortName(s) else {
                        throw t.error("\"\(s)\" is neither a port number nor a port name (at most 15 lowercase letters, digits and '-', with a letter)")
                    }
                    target = .name(s)
                default: throw t.typeError(expected: "a port number or a port name")
                }
            }
            if let dup = ports.firstIndex(where: { $0.port == port && $0.proto == proto }) {
                throw node.error("port \(port)/\(proto) is already given by ports[\(dup)]")
            }
            if let name, let dup = ports.firstIndex(where: { $0.name == name }) {
                throw node.error("port name \"\(name)\" is already used by ports[\(dup)]")
            }
            ports.append(MeshService.Port(name: name, port: port, targetPort: target, proto: proto))
        }
        if ports.count > 1, let i = ports.firstIndex(where: { $0.name == nil }) {
            throw portNodes[i].error("a service with several ports needs a name on each", hint: "add name: to every port")
        }
        var clusterIP: IPv4Address?
        if let c = spec.optional("clusterIP") {
            let s = try c.string()
            if s == "None" {
                throw c.error("headless services (clusterIP: None) are not supported", hint: "leave clusterIP out to get one allocated")
            }
            if !s.isEmpty {
                guard let ip = IPv4Address(s) else { throw c.error("\"\(s)\" is not an IPv4 address") }
                clusterIP = ip
            }
        }
        if let c = spec.optional("clusterIPs") {
            let items = try c.list()
            guard items.count <= 1 else { throw c.error("one address only: the datapath is IPv4") }
            if let first = items.first {
                let s = try first.string()
                guard let ip = IPv4Address(s) else { throw first.error("\"\(s)\" is not an IPv4 address") }
                if let clusterIP, clusterIP != ip { throw first.error("\(s) differs from clusterIP \(clusterIP)") }
                clusterIP = ip
            }
        }
        if let fam = spec.optional("ipFamilies") {
            for item in try fam.list() { _ = try item.choice(["IPv4"], what: "IP family") }
        }
        _ = try spec.optional("ipFamilyPolicy")?.choice(["SingleStack", "PreferDualStack"], what: "ipFamilyPolicy")
        _ = try spec.optional("internalTrafficPolicy")?.choice(["Cluster", "Local"], what: "internalTrafficPolicy")
        if let p = spec.optional("publishNotReadyAddresses") {
            guard case .bool(false) = p.tree else {
                throw p.error("publishNotReadyAddresses must be false: SwiftMesh sends traffic to ready backends only")
            }
        }
        var affinity: UInt32?
        if let a = spec.optional("sessionAffinity"), try a.choice(["None", "ClientIP"], what: "sessionAffinity") == "ClientIP" {
            affinity = MeshService.defaultAffinityTimeout
        }
        if let cfg = spec.optional("sessionAffinityConfig") {
            let client = try cfg.fields(allowed: ["clientIP"]).required("clientIP").fields(allowed: ["timeoutSeconds"])
            if let t = client.optional("timeoutSeconds") {
                guard case .int(let secs) = t.tree, (1...86400).contains(secs) else {
                    throw t.error("timeoutSeconds must be a whole number of seconds from 1 to 86400")
                }
                guard affinity != nil else {
                    throw t.error("sessionAffinityConfig is given but sessionAffinity is not ClientIP", hint: "add sessionAffinity: ClientIP")
                }
                affinity = UInt32(secs)
            }
        }
        return MeshService(name: metadata.name, namespace: metadata.namespace, selector: selector, ports: ports,
                       clusterIP: clusterIP, affinityTimeoutSeconds: affinity)
    }

    static func namespace(_ top: PolicyFields, metadata: PolicyMetadata) throws(PolicyFieldError) -> Namespace {
        if metadata.hasNamespace {
            throw PolicyNode(tree: .null, path: "metadata.namespace").error("a Namespace is not in a namespace; remove metadata.namespace")
        }
        guard isDNSLabel(metadata.name) else {
            throw PolicyNode(tree: .null, path: "metadata.name").error("\"\(metadata.name)\" is not a valid namespace name: at most 63 lowercase letters, digits and '-'")
        }
        _ = try top.optional("spec")?.fields(allowed: ["finalizers"])
        return Namespace(name: metadata.name, labels: metadata.labels)
    }

    /// IANA service names, as Kubernetes checks named ports: 1-15 characters, lowercase
    /// letters, digits and '-', at least one letter, no '-' at either end or twice in a row.
    static func isPortName(_ s: String) -> Bool {
        guard (1...15).contains(s.count), s.first != "-", s.last != "-", !s.contains("--") else { return false }
        return s.allSatisfy { $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "-") } && s.contains { $0.isLetter }
    }
}
