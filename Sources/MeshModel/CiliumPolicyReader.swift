/// Reads the body of a `cilium.io/v2` CiliumNetworkPolicy into Policy values.
///
/// A document with `spec` gives one Policy named after the document; one with `specs`
/// gives one Policy per entry, named `<name>#<index>` (`#` cannot occur in a Kubernetes
/// name, so these never collide with another document's policy). Each entry has its own
/// endpointSelector and so its own default-deny scope, as in Cilium.
enum CiliumPolicyReader {
    static let topLevelFields = ["apiVersion", "kind", "metadata", "spec", "specs"]
    static let ruleFields = ["endpointSelector", "ingress", "ingressDeny", "egress", "egressDeny", "description"]

    /// One of a rule object's four sections.
    struct Section {
        let key: String
        let direction: TrafficDirection
        let action: PolicyRule.Action
        /// `from` or `to`: the prefix of the section's peer fields.
        var peerPrefix: String { direction == .ingress ? "from" : "to" }
    }

    /// In the order their rules are listed in a Policy, whatever the document's key order.
    static let sections = [
        Section(key: "ingress", direction: .ingress, action: .allow),
        Section(key: "ingressDeny", direction: .ingress, action: .deny),
        Section(key: "egress", direction: .egress, action: .allow),
        Section(key: "egressDeny", direction: .egress, action: .deny),
    ]

    static func read(_ top: PolicyFields, metadata: PolicyMetadata) throws(PolicyFieldError) -> [Policy] {
        switch (top.optional("spec"), top.optional("specs")) {
        case (nil, nil):
            throw top.node.error("missing required field \"spec\" (one rule object) or \"specs\" (a list of them)")
        case (.some, .some):
            throw PolicyNode(tree: .null, path: "specs").error("\"spec\" and \"specs\" are both given; use exactly one")
        case (let spec?, nil):
            return [try policy(spec, name: metadata.name, metadata: metadata)]
        case (nil, let specs?):
            var policies: [Policy] = []
            for (i, entry) in try specs.nonEmptyList(of: "rule object").enumerated() {
                policies.append(try policy(entry, name: "\(metadata.name)#\(i)", metadata: metadata))
            }
            return policies
        }
    }

    /// One rule object (`spec`, or an entry of `specs`) as one Policy.
    static func policy(_ node: PolicyNode, name: String, metadata: PolicyMetadata) throws(PolicyFieldError) -> Policy {
        let fields = try node.fields(allowed: ruleFields)
        _ = try fields.optional("description")?.string()
        let subject = try PolicyPeers.ciliumSubject(
            fields.required("endpointSelector", hint: "use endpointSelector: {} to select every endpoint of the namespace"),
            policyNamespace: metadata.namespace)
        var rules: [PolicyRule] = []
        for section in sections {
            for item in try fields.optional(section.key)?.list() ?? [] {
                rules.append(try rule(item, section: section, namespace: metadata.namespace))
            }
        }
        return Policy(name: name, namespace: metadata.namespace, kind: .ciliumNetworkPolicy, subject: subject,
                      // An empty section is no section, as in Cilium: `ingress: []` leaves
                      // ingress open, `ingress: [{}]` closes it.
                      enforceIngress: fields.hasItems("ingress") || fields.hasItems("ingressDeny"),
                      enforceEgress: fields.hasItems("egress") || fields.hasItems("egressDeny"),
                      rules: rules)
    }

    /// One item of a section. No peer field but `toPorts` or `icmps` means every peer on
    /// those ports or ICMP types; no field at all (`- {}`) means no peer, a rule that only
    /// enables default-deny. `toPorts` and `icmps` together allow either. An empty list
    /// counts as a field left out, as Cilium reads it (`fromEndpoints: []` with `toPorts`
    /// allows every peer on those ports).
    static func rule(_ node: PolicyNode, section: Section, namespace: String) throws(PolicyFieldError) -> PolicyRule {
        let p = section.peerPrefix
        let peerFields = ["\(p)Endpoints", "\(p)CIDR", "\(p)CIDRSet", "\(p)Entities"]
        let fields = try node.fields(allowed: peerFields + ["toPorts", "icmps"])

        var peers: [Peer] = []
        for item in try fields.optional("\(p)Endpoints")?.list() ?? [] {
            peers.append(.endpoints(try PolicyPeers.ciliumPeerSelector(item, policyNamespace: namespace)))
        }
        for item in try fields.optional("\(p)CIDR")?.list() ?? [] {
            peers.append(.cidr(try item.cidr(), except: []))
        }
        for item in try fields.optional("\(p)CIDRSet")?.list() ?? [] {
            peers.append(try PolicyPeers.cidrBlock(item, cidrKey: "cidr", strictly: false))
        }
        for item in try fields.optional("\(p)Entities")?.list() ?? [] {
            if let entity = try PolicyPeers.entity(item) { peers.append(.entity(entity)) }
        }

        var ports: [PortRange] = []
        for item in try fields.optional("toPorts")?.list() ?? [] {
            ports += try portRule(item, deny: section.action == .deny)
        }
        for item in try fields.optional("icmps")?.list() ?? [] { ports += try icmpRule(item) }
        if fields.hasItems("toPorts") || fields.hasItems("icmps") {
            if !peerFields.contains(where: fields.hasItems) { peers = [.entity(.all)] }
            // Only IPv6 ICMP types: nothing of this IPv4 datapath matches the rule (no
            // ports at all would mean every protocol).
            if ports.isEmpty { peers = [] }
        }
        return PolicyRule(direction: section.direction, action: section.action, path: node.path, peers: peers, ports: ports)
    }

    // MARK: Ports

    /// One `toPorts` item: `{ports: [...], rules: {...}}`.
    static func portRule(_ node: PolicyNode, deny: Bool) throws(PolicyFieldError) -> [PortRange] {
        let fields = try node.fields(allowed: ["ports", "rules"])
        var ranges: [PortRange] = []
        for item in try fields.optional("ports")?.nonEmptyList(of: "port") ?? [] {
            ranges.append(try port(item))
        }
        if let rules = fields.optional("rules") {
            guard !deny else {
                throw rules.error("deny rules cannot have L7 rules; a deny rule drops whole connections",
                                  hint: "remove \"rules\", or move them to an ingress/egress allow section")
            }
            try l7Rules(rules)
        }
        guard !ranges.isEmpty else {
            throw node.error("missing required field \"ports\"", hint: "for example ports: [{port: \"80\", protocol: TCP}]")
        }
        return ranges
    }

    /// `{port, endPort, protocol}`; no port means every port of the protocol.
    static func port(_ node: PolicyNode) throws(PolicyFieldError) -> PortRange {
        let fields = try node.fields(allowed: ["port", "endPort", "protocol"])
        let name = try fields.optional("protocol")?.choice(["TCP", "UDP", "ANY"], ignoringCase: true, what: "protocol") ?? "ANY"
        let proto = PortRange.L4Protocol(rawValue: name)!
        return try PolicyPorts.range(fields, proto: proto)
    }

    // MARK: ICMP

    /// ICMPv4 message types by the names Cilium accepts besides the numbers.
    static let icmpTypeNames: [String: UInt16] = [
        "EchoReply": 0, "DestinationUnreachable": 3, "Redirect": 5, "Echo": 8, "EchoRequest": 8,
        "RouterAdvertisement": 9, "RouterSelection": 10, "TimeExceeded": 11, "ParameterProblem": 12,
        "Timestamp": 13, "TimestampReply": 14,
    ]

    /// One `icmps` item: `{fields: [{type, family}]}`. IPv6 types are read and checked,
    /// and match nothing here: the datapath is IPv4 only.
    static func icmpRule(_ node: PolicyNode) throws(PolicyFieldError) -> [PortRange] {
        let fields = try node.fields(allowed: ["fields"])
        var ranges: [PortRange] = []
        for item in try fields.required("fields", hint: "for example fields: [{type: 8, family: IPv4}]").nonEmptyList(of: "ICMP field") {
            let f = try item.fields(allowed: ["type", "family"])
            let family = try f.optional("family")?.choice(["IPv4", "IPv6"], what: "ICMP family") ?? "IPv4"
            let typeNode = try f.required("type", hint: "an ICMP type number (8 is an echo request) or a name such as EchoRequest")
            let type: UInt16
            switch typeNode.tree {
            case .int(let i):
                guard (0...255).contains(i) else { throw typeNode.error("\(i) is not an ICMP type (0-255)") }
                type = UInt16(i)
            case .string(let s):
                if let n = UInt16(s), n <= 255 {
                    type = n
                } else if let n = icmpTypeNames[s], family == "IPv4" {
                    type = n
                } else if family == "IPv6" {
                    continue // an ICMPv6 name: nothing to match here
                } else {
                    throw typeNode.error("\"\(s)\" is not an ICMPv4 type; use a number (0-255) or one of \(icmpTypeNames.keys.sorted().joined(separator: ", "))")
                }
            default:
                throw typeNode.error("expected an ICMP type number or name")
            }
            if family == "IPv4" { ranges.append(PortRange(proto: .icmp, from: type, to: type)) }
        }
        return ranges
    }

    // MARK: L7

    /// `rules` of a toPorts item. HTTP rules are checked in full, so that a malformed one
    /// gets its own error, and then refused: they need the L7 proxy.
    static func l7Rules(_ node: PolicyNode) throws(PolicyFieldError) {
        let fields = try node.fields(allowed: ["http"])
        guard let http = fields.optional("http") else { return }
        for item in try http.list() {
            let rule = try item.fields(allowed: ["method", "path", "host", "headers"])
            for key in ["method", "path", "host"] { _ = try rule.optional(key)?.string() }
            for header in try rule.optional("headers")?.list() ?? [] { _ = try header.string() }
        }
        throw http.error("L7 HTTP rules need the L7 proxy, which this version of SwiftMesh does not have yet",
                         hint: "remove \"rules\" to allow the port at L4")
    }
}
