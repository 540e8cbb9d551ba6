/// Readers for the parts of a policy that select endpoints and addresses: label
/// selectors (with Cilium's and Kubernetes' namespace rules) and CIDR blocks.
enum PolicyPeers {
    /// How label keys may be written.
    enum Dialect {
        /// Kubernetes: plain label keys.
        case kubernetes
        /// Cilium: a key may carry a source prefix, `k8s:` or `any:`, which is dropped.
        case cilium
    }

    /// A label selector as written, before namespaces are applied.
    struct LabelSelector {
        var matchLabels: [String: String] = [:]
        var matchExpressions: [EndpointSelector.Requirement] = []
    }

    /// The label by which Cilium selectors name a namespace.
    static let ciliumNamespaceKey = "io.kubernetes.pod.namespace"
    /// The one label a namespace has here (see EndpointSelector.NamespaceMatch).
    static let namespaceNameKey = "kubernetes.io/metadata.name"

    // MARK: Label selectors

    static func labelSelector(_ node: PolicyNode, dialect: Dialect) throws(PolicyFieldError) -> LabelSelector {
        let fields = try node.fields(allowed: ["matchLabels", "matchExpressions"])
        var selector = LabelSelector()
        if let labels = fields.optional("matchLabels") {
            selector.matchLabels = try matchLabels(labels, dialect: dialect)
        }
        if let expressions = fields.optional("matchExpressions") {
            for item in try expressions.list() {
                selector.matchExpressions.append(try requirement(item, dialect: dialect))
            }
        }
        return selector
    }

    static func matchLabels(_ node: PolicyNode, dialect: Dialect) throws(PolicyFieldError) -> [String: String] {
        var labels: [String: String] = [:]
        var writtenAs: [String: String] = [:]
        for (raw, child) in try node.entries() {
            let key = try labelKey(raw, at: node, dialect: dialect)
            if let other = writtenAs[key] {
                throw node.error("\"\(other)\" and \"\(raw)\" are the same label key \"\(key)\"; give it once")
            }
            labels[key] = try labelValue(child, key: key)
            writtenAs[key] = raw
        }
        return labels
    }

    static func requirement(_ node: PolicyNode, dialect: Dialect) throws(PolicyFieldError) -> EndpointSelector.Requirement {
        typealias Op = EndpointSelector.Requirement.Operator
        let fields = try node.fields(allowed: ["key", "operator", "values"])
        let keyNode = try fields.required("key")
        let key = try labelKey(try keyNode.string(), at: keyNode, dialect: dialect)
        // Cilium reads operators in any case (`in`, `notin`, `exists`), Kubernetes as spelled.
        let opName = try fields.required("operator").choice(["In", "NotIn", "Exists", "DoesNotExist"],
                                                             ignoringCase: dialect == .cilium, what: "operator")
        let op = Op(rawValue: opName)!
        var values: [String] = []
        let valuesNode = fields.optional("values")
        for item in try valuesNode?.list() ?? [] { values.append(try labelValue(item, key: key)) }
        switch op {
        case .in, .notIn:
            guard !values.isEmpty else {
                throw (valuesNode ?? node).error("operator \(opName) needs at least one value in \"values\"")
            }
        case .exists, .doesNotExist:
            guard values.isEmpty else {
                let quoted = values.map { "\"\($0)\"" }.joined(separator: ", ")
                throw valuesNode!.error("operator \(opName) takes no values, but \(quoted) given; leave \"values\" out")
            }
        }
        return .init(key: key, op: op, values: values)
    }

    /// Validates a label key; in Cilium's dialect strips a `k8s:` or `any:` source prefix.
    static func labelKey(_ raw: String, at node: PolicyNode, dialect: Dialect) throws(PolicyFieldError) -> String {
        var key = raw
        if dialect == .cilium, let colon = raw.firstIndex(of: ":"), !raw[..<colon].contains("/") {
            let source = String(raw[..<colon])
            switch source {
            case "k8s", "any":
                key = String(raw[raw.index(after: colon)...])
            case "reserved":
                throw node.error("label key \"\(raw)\": reserved labels cannot be selected",
                                 hint: "use fromEntities/toEntities (\(entityNames)) for the host or the world")
            default:
                throw node.error("label key \"\(raw)\": source prefix \"\(source):\" is not supported; write the key with k8s:, any: or no prefix")
            }
        }
        do { try Labels.validateKey(key) } catch {
            let prefixHint = dialect == .kubernetes && key.contains(":")
                ? "source prefixes such as k8s: belong to CiliumNetworkPolicy; a NetworkPolicy uses plain label keys" : error.hint
            throw node.error(error.message, hint: prefixHint)
        }
        return key
    }

    static func labelValue(_ node: PolicyNode, key: String) throws(PolicyFieldError) -> String {
        let value = try node.string()
        do { try Labels.validateValue(value, key: key) } catch { throw node.error(error) }
        return value
    }

    // MARK: Namespaces

    /// A selector of a CiliumNetworkPolicy's rule: endpoints of the policy's namespace,
    /// unless `io.kubernetes.pod.namespace` is given in matchLabels (that namespace) or in
    /// matchExpressions (the namespaces the expressions select), as Cilium reads it.
    static func ciliumPeerSelector(_ node: PolicyNode, policyNamespace: String) throws(PolicyFieldError) -> EndpointSelector {
        var selector = try labelSelector(node, dialect: .cilium)
        let named = selector.matchLabels.removeValue(forKey: ciliumNamespaceKey)
        if let named, !isDNSLabel(named) {
            throw PolicyNode(tree: .null, path: node.path(of: "matchLabels")).error(
                "\(ciliumNamespaceKey): \"\(named)\" is not a namespace name (lowercase letters, digits and '-')")
        }
        let expressions = selector.matchExpressions.filter { $0.key == ciliumNamespaceKey }
        selector.matchExpressions.removeAll { $0.key == ciliumNamespaceKey }
        let namespaces: EndpointSelector.NamespaceMatch
        if expressions.isEmpty {
            namespaces = .names([named ?? policyNamespace])
        } else {
            let renamed = expressions.map { EndpointSelector.Requirement(key: namespaceNameKey, op: $0.op, values: $0.values) }
            namespaces = .selector(EndpointSelector(matchLabels: named.map { [namespaceNameKey: $0] } ?? [:],
                                                    matchExpressions: renamed))
        }
        return EndpointSelector(matchLabels: selector.matchLabels, matchExpressions: selector.matchExpressions,
                                namespaces: namespaces)
    }

    /// The `endpointSelector` of a CiliumNetworkPolicy: it always applies in the policy's
    /// own namespace, so naming another one is an error rather than silently ignored.
    static func ciliumSubject(_ node: PolicyNode, policyNamespace: String) throws(PolicyFieldError) -> EndpointSelector {
        let selector = try ciliumPeerSelector(node, policyNamespace: policyNamespace)
        let reason = "an endpointSelector always applies in the policy's own namespace, \"\(policyNamespace)\""
        switch selector.namespaces {
        case .names([policyNamespace]): return selector
        case .names(let names):
            throw node.error("\(ciliumNamespaceKey) \"\(names.joined())\" is not the policy's namespace; \(reason)",
                             hint: "set metadata.namespace instead")
        default:
            throw node.error("matchExpressions on \(ciliumNamespaceKey) cannot widen the endpointSelector; \(reason)",
                             hint: "set metadata.namespace instead")
        }
    }

    /// A Kubernetes `podSelector`/`namespaceSelector` pair: pods matching `pods` (all when
    /// nil) in the namespaces matching `namespaces` (the policy's own when nil).
    static func kubernetesSelector(pods: LabelSelector?, namespaces: LabelSelector?, policyNamespace: String) -> EndpointSelector {
        let pods = pods ?? LabelSelector()
        let match: EndpointSelector.NamespaceMatch = namespaces.map {
            .selector(EndpointSelector(matchLabels: $0.matchLabels, matchExpressions: $0.matchExpressions))
        } ?? .names([policyNamespace])
        return EndpointSelector(matchLabels: pods.matchLabels, matchExpressions: pods.matchExpressions, namespaces: match)
    }

    // MARK: Entities and CIDRs

    static var entityNames: String { (Peer.Entity.allCases.map(\.rawValue) + ["world-ipv4", "world-ipv6"]).joined(separator: ", ") }

    /// A Cilium entity; nil for one that stands for no IPv4 peer (`world-ipv6`), which the
    /// IPv4 datapath can never meet.
    static func entity(_ node: PolicyNode) throws(PolicyFieldError) -> Peer.Entity? {
        let name = try node.string()
        switch name {
        case "world-ipv4": return .world
        case "world-ipv6": return nil
        default:
            guard let entity = Peer.Entity(rawValue: name) else {
                let guess = closest(to: name, in: Peer.Entity.allCases.map(\.rawValue)).map { "; did you mean \"\($0)\"?" } ?? ""
                throw node.error("entity \"\(name)\" is not supported\(guess); SwiftMesh knows \(entityNames)")
            }
            return entity
        }
    }

    /// A CIDR with exceptions, `{<cidrKey>: ..., except: [...]}`. Each exception must lie
    /// inside the CIDR; with `strictly`, it must also be smaller (as Kubernetes requires).
    static func cidrBlock(_ node: PolicyNode, cidrKey: String, strictly: Bool) throws(PolicyFieldError) -> Peer {
        let fields = try node.fields(allowed: [cidrKey, "except"])
        let cidr = try fields.required(cidrKey).cidr()
        var except: [IPv4CIDR] = []
        for item in try fields.optional("except")?.list() ?? [] {
            let inner = try item.cidr()
            let minimum = cidr.prefixLength + (strictly ? 1 : 0)
            guard inner.prefixLength >= minimum, cidr.contains(inner.network) else {
                let smaller = strictly ? " and be smaller than it" : ""
                throw item.error("except \(inner) must lie inside \(cidrKey) \(cidr)\(smaller)")
            }
            except.append(inner)
        }
        return .cidr(cidr, except: except)
    }
}
