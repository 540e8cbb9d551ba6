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
        let fields = try node.fields(allowed: peerFields + ["toPorts", "icmps", "authentication"])

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
        let authentication = try fields.optional("authentication").flatMap { node throws(PolicyFieldError) in
            try authenticationMode(node, section: section)
        }
        return PolicyRule(direction: section.direction, action: section.action, path: node.path, peers: peers, ports: ports,
                          authentication: authentication)
    }

    /// `authentication: {mode: required}` (or `disabled`, no requirement), on an allow rule
    /// of either direction: on ingress the receiving node asks the peer for proof; on egress
    /// the sending node carries the flow to another node's endpoint only inside the mTLS
    /// tunnel, to the node that proves it holds the destination.
    static func authenticationMode(_ node: PolicyNode, section: Section) throws(PolicyFieldError) -> PolicyRule.Authentication? {
        let fields = try node.fields(allowed: ["mode"])
        let modeNode = try fields.required("mode", hint: "mode: required")
        let mode = try modeNode.string()
        switch mode {
        case "disabled":
            return nil
        case "required":
            guard section.action == .allow else {
                throw modeNode.error("authentication applies to allow rules; a deny rule denies whoever the peer is")
            }
            return .required
        default:
            throw modeNode.error("authentication mode \"\(mode)\" is not supported: use required or disabled")
        }
    }

    // MARK: Ports

    /// One `toPorts` item: `{ports: [...], rules: {...}}`.
    static func portRule(_ node: PolicyNode, deny: Bool) throws(PolicyFieldError) -> [PortRange] {
        let fields = try node.fields(allowed: ["ports", "rules"])
        var ranges: [PortRange] = []
        for item in try fields.optional("ports")?.nonEmptyList(of: "port") ?? [] {
            ranges.append(try port(item))
        }
        guard !ranges.isEmpty else {
            throw node.error("missing required field \"ports\"", hint: "for example ports: [{port: \"80\", protocol: TCP}]")
        }
        if let rules = fields.optional("rules") {
            guard !deny else {
                throw rules.error("deny rules cannot have L7 rules; a deny rule drops whole connections",
                                  hint: "remove \"rules\", or move them to an ingress/egress allow section")
            }
            if let http = try l7Rules(rules) {
                // HTTP is TCP: ANY narrows to TCP, as the proxy only ever sees TCP.
                for (i, r) in ranges.enumerated() {
                    guard r.proto != .udp else {
                        throw rules.error("HTTP rules need TCP, and ports[\(i)] is UDP",
                                          hint: "give the HTTP rules their own toPorts item with protocol TCP")
                    }
                    ranges[i].proto = .tcp
                    ranges[i].http = http
                }
            }
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

    /// `rules` of a toPorts item: the HTTP rules, or nil when there are none (an empty
    /// `http: []` is no rule, as in Cilium: the port is allowed at L4).
    static func l7Rules(_ node: PolicyNode) throws(PolicyFieldError) -> [HTTPRule]? {
        let fields = try node.fields(allowed: ["http"])
        guard let http = fields.optional("http") else { return nil }
        var out: [HTTPRule] = []
        for item in try http.list() {
            let f = try item.fields(allowed: ["method", "path", "host", "headers", "headerMatches"])
            var rule = HTTPRule()
            rule.method = try regex(f.optional("method"))
            rule.path = try regex(f.optional("path"))
            rule.host = try regex(f.optional("host"))
            for header in try f.optional("headers")?.list() ?? [] {
                // "Name" (present) or "Name: value" (exactly this value), as Cilium writes them.
                let text = try header.string()
                let parts = text.split(separator: ":", maxSplits: 1).map(trimmed)
                guard let name = parts.first, !name.isEmpty, name.allSatisfy(isTokenCharacter) else {
                    throw header.error("\"\(text)\" is not a header; write \"Name\" or \"Name: value\"")
                }
                rule.headers.append(.init(name: name, value: parts.count > 1 ? parts[1] : nil))
            }
            for match in try f.optional("headerMatches")?.list() ?? [] {
                let m = try match.fields(allowed: ["name", "value", "mismatch", "secret"])
                if let secret = m.optional("secret") {
                    throw secret.error("header values from Kubernetes secrets are not supported", hint: "give the value itself in \"value\"")
                }
                if let mismatch = m.optional("mismatch") {
                    throw mismatch.error("mismatch actions (LOG, ADD, DELETE, REPLACE) are not supported; a request without the header is refused",
                                         hint: "remove \"mismatch\"")
                }
                let nameNode = try m.required("name", hint: "the header's name, for example X-Token")
                let name = try nameNode.string()
                guard !name.isEmpty, name.allSatisfy(isTokenCharacter) else { throw nameNode.error("\"\(name)\" is not a header name") }
                rule.headers.append(.init(name: name, value: try m.optional("value")?.string()))
            }
            out.append(rule)
        }
        return out.isEmpty ? nil : out
    }

    /// A regular expression field of an HTTP rule, checked here so that a bad one is an
    /// error at its own path rather than in the proxy.
    static func regex(_ node: PolicyNode?) throws(PolicyFieldError) -> String? {
        guard let node else { return nil }
        let pattern = try node.string()
        do {
            _ = try Regex(pattern)
        } catch {
            throw node.error("\"\(pattern)\" is not a valid regular expression (\(error))")
        }
        return pattern
    }

    static func trimmed(_ s: Substring) -> String {
        let blank: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        return String(s.drop(while: blank).reversed().drop(while: blank).reversed())
    }

    /// RFC 9110 token characters: what a header name is made of.
    static func isTokenCharacter(_ c: Character) -> Bool {
        guard c.isASCII, let v = c.asciiValue else { return false }
        return (c.isLetter || c.isNumber) || "!#$%&'*+-.^_`|~".utf8.contains(v)
    }
}
