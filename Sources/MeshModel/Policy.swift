import MeshABI

/// Network policy as SwiftMesh enforces it: the common meaning of CiliumNetworkPolicy and
/// Kubernetes NetworkPolicy documents after parsing and validation (see PolicyParser).
///
/// Semantics follow Cilium's documentation: an endpoint selected by a policy with an
/// ingress (egress) section is default-deny in that direction; rules are additive; a deny
/// rule beats any allow rule.
public struct Policy: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable { case ciliumNetworkPolicy = "CiliumNetworkPolicy", networkPolicy = "NetworkPolicy" }

    /// `namespace/name`, unique per node.
    public var key: String { "\(namespace)/\(name)" }
    public var name: String
    /// The policy's namespace (`metadata.namespace`, default `default`). Selectors match only
    /// endpoints of this namespace unless they name one (see EndpointSelector.namespaces).
    public var namespace: String
    public var kind: Kind
    /// Which endpoints the policy applies to.
    public var subject: EndpointSelector
    /// Directions this policy puts its subjects into default-deny for.
    public var enforceIngress: Bool
    public var enforceEgress: Bool
    public var rules: [PolicyRule]

    public init(name: String, namespace: String, kind: Kind, subject: EndpointSelector,
                enforceIngress: Bool, enforceEgress: Bool, rules: [PolicyRule]) {
        self.name = name
        self.namespace = namespace
        self.kind = kind
        self.subject = subject
        self.enforceIngress = enforceIngress
        self.enforceEgress = enforceEgress
        self.rules = rules
    }
}

public enum TrafficDirection: String, Codable, Sendable, CaseIterable {
    case ingress, egress
}

/// One allow or deny rule: traffic between the subject and any of `peers`, on any of
/// `ports` (empty: every protocol and port, ICMP included).
public struct PolicyRule: Codable, Sendable, Equatable {
    public enum Action: String, Codable, Sendable { case allow, deny }

    public var direction: TrafficDirection
    public var action: Action
    /// The document path of the rule, e.g. `spec.ingress[0]` or `specs[1].egressDeny[2]`;
    /// drop events and `policy trace` name it.
    public var path: String
    /// Empty means no peer at all (a rule that only turns on default-deny).
    public var peers: [Peer]
    public var ports: [PortRange]
    /// CiliumNetworkPolicy `authentication: {mode: required}` on an ingress allow rule:
    /// a peer on another node must prove its identity (mTLS between the nodes' proxies)
    /// before the flow reaches the endpoint. nil: no requirement.
    public var authentication: Authentication?

    public enum Authentication: String, Codable, Sendable { case required }

    public init(direction: TrafficDirection, action: Action, path: String, peers: [Peer], ports: [PortRange],
                authentication: Authentication? = nil) {
        self.direction = direction
        self.action = action
        self.path = path
        self.peers = peers
        self.ports = ports
        self.authentication = authentication
    }
}

/// Who is on the other side of a rule.
public enum Peer: Codable, Sendable, Equatable {
    /// Endpoints of this node whose labels match (restricted to namespaces, see EndpointSelector).
    case endpoints(EndpointSelector)
    /// Addresses in `cidr` but not in any of `except`.
    case cidr(IPv4CIDR, except: [IPv4CIDR])
    case entity(Entity)

    public enum Entity: String, Codable, Sendable, CaseIterable {
        /// Everything: every endpoint, the host and the world.
        case all
        /// Everything outside the node: addresses that are neither endpoints nor the host.
        case world
        /// The node itself.
        case host
        /// Everything inside the cluster: every endpoint and the node (not the world).
        case cluster
        /// The ingress gateway's connections to backends on its own node (Cilium's
        /// `reserved:ingress`): a backend can take the gateway without taking the host.
        case ingress
    }
}

/// A set of ports of one protocol: `from...to` (a single port has from == to).
public struct PortRange: Codable, Sendable, Equatable {
    public enum L4Protocol: String, Codable, Sendable, CaseIterable {
        /// ICMP's "ports" are message types (a CiliumNetworkPolicy `icmps` entry).
        case tcp = "TCP", udp = "UDP", icmp = "ICMP", any = "ANY"

        /// IANA protocol number (the C library's), 0 for ANY.
        public var number: UInt8 {
            switch self {
            case .tcp: UInt8(IPPROTO_TCP)
            case .udp: UInt8(IPPROTO_UDP)
            case .icmp: UInt8(IPPROTO_ICMP)
            case .any: 0
            }
        }
    }

    public var proto: L4Protocol
    /// Every port of `proto` is 1...65535 (what PolicyParser produces when `port` is left
    /// out); 0...0 means the same.
    public var from: UInt16
    public var to: UInt16
    /// HTTP rules (a CiliumNetworkPolicy `toPorts[].rules.http`): requests on these TCP
    /// ports go through the L7 proxy, which allows those that match one of them. nil: L4 only.
    public var http: [HTTPRule]?

    public init(proto: L4Protocol, from: UInt16, to: UInt16, http: [HTTPRule]? = nil) {
        self.proto = proto
        self.from = from
        self.to = to
        self.http = http
    }
}

/// Kubernetes-style label selector: every matchLabels pair and every expression must hold.
/// An empty selector matches every endpoint (of the allowed namespaces).
public struct EndpointSelector: Codable, Sendable, Equatable {
    public struct Requirement: Codable, Sendable, Equatable {
        public enum Operator: String, Codable, Sendable { case `in` = "In", notIn = "NotIn", exists = "Exists", doesNotExist = "DoesNotExist" }
        public var key: String
        public var op: Operator
        public var values: [String]

        public init(key: String, op: Operator, values: [String]) {
            self.key = key
            self.op = op
            self.values = values
        }
    }

    public var matchLabels: [String: String]
    public var matchExpressions: [Requirement]
    /// Namespaces whose endpoints may match; nil means any namespace. Set from the policy's
    /// own namespace, or from a namespace selector.
    public var namespaces: NamespaceMatch?

    public indirect enum NamespaceMatch: Codable, Sendable, Equatable {
        /// Exactly these namespaces.
        case names([String])
        /// Namespaces whose labels match; a namespace's only label here is
        /// `kubernetes.io/metadata.name: <name>`, as Kubernetes sets it.
        case selector(EndpointSelector)
    }

    public init(matchLabels: [String: String] = [:], matchExpressions: [Requirement] = [], namespaces: NamespaceMatch? = nil) {
        self.matchLabels = matchLabels
        self.matchExpressions = matchExpressions
        self.namespaces = namespaces
    }

    public func matches(_ labels: Labels) -> Bool {
        if let namespaces {
            let ns = labels.namespace
            switch namespaces {
            case .names(let names): if !names.contains(ns) { return false }
            case .selector(let sel):
                // The namespace's labels: its name, as Kubernetes sets it, and those of its
                // Namespace document, which the endpoint carries under a prefix.
                var nsValues = ["kubernetes.io/metadata.name": ns]
                let prefix = Labels.namespaceLabelPrefix
                for (k, v) in labels.values where k.hasPrefix(prefix) { nsValues[String(k.dropFirst(prefix.count))] = v }
                guard let nsLabels = try? Labels(nsValues), sel.matches(nsLabels) else { return false }
            }
        }
        for (k, v) in matchLabels where labels[k] != v { return false }
        for r in matchExpressions {
            let value = labels[r.key]
            switch r.op {
            case .in: guard let value, r.values.contains(value) else { return false }
            case .notIn: if let value, r.values.contains(value) { return false }
            case .exists: if value == nil { return false }
            case .doesNotExist: if value != nil { return false }
            }
        }
        return true
    }
}
