/// Reads the body of a `networking.k8s.io/v1` NetworkPolicy into one Policy.
///
/// Kubernetes semantics: every rule allows; a rule without `from`/`to` allows every peer;
/// one without `ports` allows every port; `policyTypes` says which directions are
/// enforced and, when left out, is `Ingress` plus `Egress` if there are egress rules.
enum NetworkPolicyReader {
    static let topLevelFields = ["apiVersion", "kind", "metadata", "spec"]

    static func read(_ top: PolicyFields, metadata: PolicyMetadata) throws(PolicyFieldError) -> Policy {
        let spec = try top.required("spec").fields(allowed: ["podSelector", "policyTypes", "ingress", "egress"])
        let podSelector = try spec.required("podSelector", hint: "use podSelector: {} to select every pod of the namespace")
        let subject = PolicyPeers.kubernetesSelector(
            pods: try PolicyPeers.labelSelector(podSelector, dialect: .kubernetes), namespaces: nil,
            policyNamespace: metadata.namespace)

        var rules: [PolicyRule] = []
        for item in try spec.optional("ingress")?.list() ?? [] {
            rules.append(try rule(item, direction: .ingress, namespace: metadata.namespace))
        }
        let ingressCount = rules.count
        for item in try spec.optional("egress")?.list() ?? [] {
            rules.append(try rule(item, direction: .egress, namespace: metadata.namespace))
        }
        let types = try policyTypes(spec, hasIngressRules: ingressCount > 0, hasEgressRules: rules.count > ingressCount)
        return Policy(name: metadata.name, namespace: metadata.namespace, kind: .networkPolicy, subject: subject,
                      enforceIngress: types.contains(.ingress), enforceEgress: types.contains(.egress), rules: rules)
    }

    /// The enforced directions. Rules for a direction that `policyTypes` leaves out would be
    /// ignored by Kubernetes; here they are an error, since the author surely meant them.
    static func policyTypes(_ spec: PolicyFields, hasIngressRules: Bool, hasEgressRules: Bool) throws(PolicyFieldError) -> Set<TrafficDirection> {
        guard let node = spec.optional("policyTypes"), case let items = try node.list(), !items.isEmpty else {
            return hasEgressRules ? [.ingress, .egress] : [.ingress]
        }
        var types = Set<TrafficDirection>()
        for item in items {
            types.insert(try item.choice(["Ingress", "Egress"], what: "policy type") == "Ingress" ? .ingress : .egress)
        }
        for (direction, hasRules) in [(TrafficDirection.ingress, hasIngressRules), (.egress, hasEgressRules)]
        where hasRules && !types.contains(direction) {
            let name = direction == .ingress ? "Ingress" : "Egress"
            throw node.error("\(direction.rawValue) rules are given but policyTypes does not list \(name), so they would be ignored",
                             hint: "add \(name) to policyTypes, or remove spec.\(direction.rawValue)")
        }
        return types
    }

    /// One `ingress` (`from`, `ports`) or `egress` (`to`, `ports`) item.
    static func rule(_ node: PolicyNode, direction: TrafficDirection, namespace: String) throws(PolicyFieldError) -> PolicyRule {
        let peerKey = direction == .ingress ? "from" : "to"
        let fields = try node.fields(allowed: [peerKey, "ports"])
        var peers: [Peer] = []
        for item in try fields.optional(peerKey)?.list() ?? [] {
            peers.append(try peer(item, namespace: namespace))
        }
        var ports: [PortRange] = []
        for item in try fields.optional("ports")?.list() ?? [] {
            ports.append(try port(item))
        }
        return PolicyRule(direction: direction, action: .allow, path: node.path,
                          peers: peers.isEmpty ? [.entity(.all)] : peers, ports: ports)
    }

    /// A `from`/`to` item: `podSelector`, `namespaceSelector`, both, or `ipBlock` alone.
    static func peer(_ node: PolicyNode, namespace: String) throws(PolicyFieldError) -> Peer {
        let fields = try node.fields(allowed: ["podSelector", "namespaceSelector", "ipBlock"])
        let pods = fields.optional("podSelector"), namespaces = fields.optional("namespaceSelector")
        if let ipBlock = fields.optional("ipBlock") {
            guard pods == nil, namespaces == nil else {
                throw ipBlock.error("ipBlock cannot be combined with podSelector or namespaceSelector in one peer",
                                    hint: "write them as two separate items of the list")
            }
            return try PolicyPeers.cidrBlock(ipBlock, cidrKey: "cidr", strictly: true)
        }
        guard pods != nil || namespaces != nil else {
            throw node.error("a peer needs podSelector, namespaceSelector or ipBlock",
                             hint: "to allow every peer, leave out \"from\"/\"to\" altogether")
        }
        let selector = PolicyPeers.kubernetesSelector(
            pods: try pods.map { (n) throws(PolicyFieldError) in try PolicyPeers.labelSelector(n, dialect: .kubernetes) },
            namespaces: try namespaces.map { (n) throws(PolicyFieldError) in try PolicyPeers.labelSelector(n, dialect: .kubernetes) },
            policyNamespace: namespace)
        return .endpoints(selector)
    }

    /// `{port, endPort, protocol}`; protocol TCP unless given; no port means every port.
    static func port(_ node: PolicyNode) throws(PolicyFieldError) -> PortRange {
        let fields = try node.fields(allowed: ["port", "endPort", "protocol"])
        let name = try fields.optional("protocol")?.choice(["TCP", "UDP"], ignoringCase: true, what: "protocol") ?? "TCP"
        return try PolicyPorts.range(fields, proto: PortRange.L4Protocol(rawValue: name)!)
    }
}
