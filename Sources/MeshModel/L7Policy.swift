/// HTTP rules of a CiliumNetworkPolicy (`toPorts[].rules.http[]`), as Cilium reads them:
/// every field given must match; `method`, `path` and `host` are regular expressions that
/// must match the whole value (Envoy's safe-regex full match, which Cilium configures);
/// `path` is matched against the request target as sent, query included, as Envoy's
/// `:path` is. A rule with no field at all allows every request (and still sends the
/// flow through the proxy, for visibility).
public struct HTTPRule: Codable, Sendable, Equatable, Hashable {
    public var method: String?
    public var path: String?
    public var host: String?
    /// Headers the request must carry: name only (present, any value) or name and value
    /// (exactly this value). Names compare without case.
    public var headers: [HeaderRequirement]

    public init(method: String? = nil, path: String? = nil, host: String? = nil, headers: [HeaderRequirement] = []) {
        self.method = method
        self.path = path
        self.host = host
        self.headers = headers
    }

    public struct HeaderRequirement: Codable, Sendable, Equatable, Hashable {
        /// Lower case.
        public var name: String
        public var value: String?

        public init(name: String, value: String?) {
            self.name = name.lowercased()
            self.value = value
        }
    }

    /// Checks that each regular expression compiles; the error names the field.
    public func validate() throws(MeshError) {
        for (field, pattern) in [("method", method), ("path", path), ("host", host)] {
            if let pattern { _ = try compileRegex(pattern, at: field) }
        }
    }
}

/// A regular expression of a policy or a route, compiled; the error quotes the pattern and
/// Swift's reason, after `place` when given (`path: "(" is not a valid regular expression: …`).
public func compileRegex(_ pattern: String, at place: String? = nil) throws(MeshError) -> Regex<AnyRegexOutput> {
    do {
        return try Regex(pattern)
    } catch {
        throw MeshError.invalid((place.map { "\($0): " } ?? "") + "\"\(pattern)\" is not a valid regular expression: \(error)")
    }
}

/// A rule's regular expression, matched against the whole of a request's method, path or
/// host. Most such expressions are plain text ("GET") or plain text then `.*` ("/v1/.*");
/// those are compared as strings, which gives the same answer (both compare Characters) at
/// a fraction of the cost: Swift Regex's wholeMatch of `/.*` took about 2% of the proxy's
/// time per request under wrk. Any other expression runs as the Regex it compiles to.
public struct L7Pattern: @unchecked Sendable {
    // @unchecked: Regex is immutable once compiled, but not declared Sendable.
    enum Form {
        case equal(String)
        case prefix(String)
        case regex(Regex<AnyRegexOutput>)
    }
    let form: Form

    /// Characters that make an expression more than plain text.
    private static let special: Set<Character> = ["\\", "^", "$", ".", "|", "?", "*", "+", "(", ")", "[", "]", "{", "}"]

    public init(_ pattern: String, at place: String? = nil) throws(MeshError) {
        // Compiled in every case, so that what is refused is refused the same way.
        let regex = try compileRegex(pattern, at: place)
        if !pattern.contains(where: Self.special.contains) {
            form = .equal(pattern)
        } else if pattern.hasSuffix(".*"), !pattern.dropLast(2).contains(where: Self.special.contains) {
            form = .prefix(String(pattern.dropLast(2)))
        } else {
            form = .regex(regex)
        }
    }

    /// Whether the expression matches all of `text`.
    public func wholeMatch(_ text: String) -> Bool {
        switch form {
        case .equal(let literal): text == literal
        case .prefix(let literal):
            // `.` matches anything but a line break. A request's target is printable ASCII,
            // checked by bytes; anything else is walked by Characters, as Regex would.
            text.hasPrefix(literal)
                && (text.utf8.allSatisfy { $0 >= 0x20 && $0 < 0x7F } || !text.dropFirst(literal.count).contains(where: \.isNewline))
        case .regex(let regex): (try? regex.wholeMatch(in: text)) != nil
        }
    }
}

/// A request as the L7 policy sees it.
public struct L7Request: Sendable {
    public var method: String
    /// The request target as sent (`/v1/request-landing?x=1`).
    public var target: String
    /// The Host header (or HTTP/2 `:authority`), as sent; empty when absent.
    public var host: String
    /// Header names in lower case, with their values, in the order sent.
    public var headers: [(name: String, value: String)]

    public init(method: String, target: String, host: String, headers: [(name: String, value: String)]) {
        self.method = method
        self.target = target
        self.host = host
        self.headers = headers
    }
}

/// One allow rule of an endpoint's L7-enforced direction, as the proxy judges requests
/// with it: the peers and TCP ports it covers and its HTTP rules (`nil`: a rule without
/// HTTP rules, which allows every request on its ports, as in Cilium, where an L4 rule on
/// the same port as an L7 one opens the port to every request).
public struct L7PortRule: Codable, Sendable, Equatable {
    /// Peer identities; 0 stands for every peer.
    public var peers: [UInt32]
    public var fromPort: UInt16
    public var toPort: UInt16
    public var http: [HTTPRule]?
    /// The rule id the kernel and the monitor use, and what it stands for
    /// (`default/rule1 specs[0].ingress[0] (allow)`).
    public var ruleID: UInt32
    public var rule: String

    public init(peers: [UInt32], fromPort: UInt16, toPort: UInt16, http: [HTTPRule]?, ruleID: UInt32, rule: String) {
        self.peers = peers
        self.fromPort = fromPort
        self.toPort = toPort
        self.http = http
        self.ruleID = ruleID
        self.rule = rule
    }
}

/// The allow rules of one endpoint and direction that has at least one HTTP rule.
public struct L7EndpointPolicy: Codable, Sendable, Equatable {
    public var endpoint: IPv4Address
    public var direction: TrafficDirection
    public var rules: [L7PortRule]
    /// Rule id of the direction's default deny, for requests no rule allows.
    public var defaultRuleID: UInt32

    public init(endpoint: IPv4Address, direction: TrafficDirection, rules: [L7PortRule], defaultRuleID: UInt32) {
        self.endpoint = endpoint
        self.direction = direction
        self.rules = rules
        self.defaultRuleID = defaultRuleID
    }
}

/// An endpoint as the proxy names it in events and metrics.
public struct ProxyEndpoint: Codable, Sendable, Equatable {
    public var ip: IPv4Address
    public var name: String
    public var namespace: String
    public var identity: UInt32

    public init(ip: IPv4Address, name: String, namespace: String, identity: UInt32) {
        self.ip = ip
        self.name = name
        self.namespace = namespace
        self.identity = identity
    }
}

/// Everything meshd tells the proxy: who is who and which requests policy allows. A new
/// configuration replaces the old one whole; `generation` only grows.
public struct ProxyConfig: Codable, Sendable, Equatable {
    public var generation: UInt64
    /// The node's endpoints: a connection's source address names its endpoint (the
    /// datapath drops packets an endpoint sends from any other address).
    public var endpoints: [ProxyEndpoint]
    /// Address prefix → identity, for peers that are not endpoints (host, CIDR rules).
    @CompactIPCache public var ipcache: [ProxyIPCacheEntry]
    public var l7: [L7EndpointPolicy]
    /// Rule id → description, for the default-deny rule ids `l7` names.
    public var ruleNames: [UInt32: String]
    /// Service frontends with an HTTPRoute: requests to them are routed per request.
    public var routes: [ProxyRoute]
    public var resilience: ProxyResilience
    /// Mutual TLS between nodes; nil when this node is not in a cluster.
    public var tunnel: ProxyTunnelConfig?
    /// The ingress gateway's ports (Gateway listeners).
    public var gateways: [ProxyGatewayPort]
    /// Egress allow rules that require authentication, by source endpoint (their peers are
    /// destination identities): what they cover goes only through an mTLS tunnel.
    public var egressAuth: [TunnelAuthPolicy]
    /// true: `ipcache` is sent empty and is the one the last configuration on this control
    /// connection carried (protocol 3). An endpoint change leaves the ipcache the proxy
    /// sees alone (its entries are peers that are not this node's endpoints), and ten
    /// thousand CIDR entries cost both sides milliseconds to write and read again.
    public var ipcacheUnchanged: Bool?

    public init(generation: UInt64, endpoints: [ProxyEndpoint], ipcache: [ProxyIPCacheEntry], l7: [L7EndpointPolicy],
                ruleNames: [UInt32: String], routes: [ProxyRoute] = [], resilience: ProxyResilience = .default,
                tunnel: ProxyTunnelConfig? = nil, gateways: [ProxyGatewayPort] = [], egressAuth: [TunnelAuthPolicy] = []) {
        self.generation = generation
        self.endpoints = endpoints
        self.ipcache = ipcache
        self.l7 = l7
        self.ruleNames = ruleNames
        self.routes = routes
        self.resilience = resilience
        self.tunnel = tunnel
        self.gateways = gateways
        self.egressAuth = egressAuth
    }

    public static let empty = ProxyConfig(generation: 0, endpoints: [], ipcache: [], l7: [], ruleNames: [:])
}

public struct ProxyIPCacheEntry: Codable, Sendable, Equatable {
    public var prefix: IPv4CIDR
    public var identity: UInt32

    public init(prefix: IPv4CIDR, identity: UInt32) {
        self.prefix = prefix
        self.identity = identity
    }
}

/// The ipcache on the wire as one string, `10.0.0.0/8=12345 192.0.2.1/32=12346`: a policy
/// with ten thousand CIDR rules sends ten thousand entries with every change the proxy
/// must hear of, and as JSON objects they cost meshd's encoder 34 ms of a 250 ms relabel
/// (perf, 1,000 endpoints). Written byte by byte for the same reason.
@propertyWrapper
public struct CompactIPCache: Codable, Sendable, Equatable {
    public var wrappedValue: [ProxyIPCacheEntry]

    public init(wrappedValue: [ProxyIPCacheEntry]) { self.wrappedValue = wrappedValue }

    /// Set to true in an encoder's userInfo: the ipcache as the array of objects proxies
    /// before protocol 2 read.
    public static let legacyArrayKey = CodingUserInfoKey(rawValue: "swiftmesh.ipcache-as-array")!

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        // A meshd before protocol 2 (this proxy adopted by an older one) sends the array.
        if let array = try? c.decode([ProxyIPCacheEntry].self) {
            wrappedValue = array
            return
        }
        var text = try c.decode(String.self)
        var out: [ProxyIPCacheEntry] = []
        // Over the bytes: splitting ten thousand entries as Characters cost the proxy
        // 45 ms per configuration (perf), more than meshd spent on the whole relabel.
        let bad: Substring? = text.withUTF8 { Self.parse($0, into: &out) }
        if let bad {
            throw DecodingError.dataCorruptedError(in: c, debugDescription: "ipcache entry \"\(bad.prefix(64))\" is not PREFIX=IDENTITY")
        }
        wrappedValue = out
    }

    /// Reads `a.b.c.d/len=identity` entries separated by single spaces (decimal, no
    /// leading zeros, octets to 255, lengths to 32 with no host bit set, identities to
    /// 2^32-1). Returns the first entry that is not one, or nil.
    static func parse(_ bytes: UnsafeBufferPointer<UInt8>, into out: inout [ProxyIPCacheEntry]) -> Substring? {
        var i = 0
        let n = bytes.count
        /// A decimal at i, no leading zero, at most `max`; nil if none.
        func number(_ max: UInt64) -> UInt64? {
            let start = i
            var v: UInt64 = 0
            while i < n, bytes[i] >= UInt8(ascii: "0"), bytes[i] <= UInt8(ascii: "9") {
                v = v * 10 + UInt64(bytes[i] - UInt8(ascii: "0"))
                i += 1
                if v > max { return nil }
            }
            guard i > start, i - start == 1 || bytes[start] != UInt8(ascii: "0") else { return nil }
            return v
        }
        func expect(_ c: UInt8) -> Bool {
            guard i < n, bytes[i] == c else { return false }
            i += 1
            return true
        }
        while i < n {
            let start = i
            while i < n, bytes[i] != UInt8(ascii: "/"), bytes[i] != UInt8(ascii: " ") { i += 1 }
            var entry: ProxyIPCacheEntry?
            if let address = IPv4Address(utf8: bytes[start..<i]), expect(UInt8(ascii: "/")), let len = number(32), expect(UInt8(ascii: "=")),
               let identity = number(UInt64(UInt32.max)), let prefix = IPv4CIDR(network: address, prefixLength: Int(len)),
               i == n || bytes[i] == UInt8(ascii: " ") {
                entry = ProxyIPCacheEntry(prefix: prefix, identity: UInt32(identity))
            }
            guard let entry else {
                var end = start
                while end < n, bytes[end] != UInt8(ascii: " ") { end += 1 }
                return Substring(String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<end]), as: UTF8.self))
            }
            out.append(entry)
            // One space between entries; none after the last.
            if i < n {
                i += 1
                if i == n { return "" }
            }
        }
        return nil
    }

    public func encode(to encoder: any Encoder) throws {
        if encoder.userInfo[Self.legacyArrayKey] as? Bool == true {
            var c = encoder.singleValueContainer()
            try c.encode(wrappedValue)
            return
        }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(wrappedValue.count * 26)
        func decimal(_ v: UInt32) {
            if v >= 10 { decimal(v / 10) }
            bytes.append(UInt8(ascii: "0") + UInt8(v % 10))
        }
        for (i, e) in wrappedValue.enumerated() {
            if i > 0 { bytes.append(UInt8(ascii: " ")) }
            let a = e.prefix.network.value
            decimal(a >> 24)
            for shift in [16, 8, 0] as [UInt32] {
                bytes.append(UInt8(ascii: "."))
                decimal(a >> shift & 0xff)
            }
            bytes.append(UInt8(ascii: "/"))
            decimal(UInt32(e.prefix.prefixLength))
            bytes.append(UInt8(ascii: "="))
            decimal(e.identity)
        }
        var c = encoder.singleValueContainer()
        try c.encode(String(decoding: bytes, as: UTF8.self))
    }
}

/// A request's verdict under L7 policy.
public struct L7Verdict: Sendable, Equatable {
    public var allowed: Bool
    /// The rule that decided (0 when no L7 rule applies in either direction).
    public var ruleID: UInt32
    public var rule: String
    /// The direction whose rules decided: the destination's ingress or the source's egress.
    public var direction: TrafficDirection?
}

/// A ProxyConfig made ready to judge requests: regular expressions compiled once, rules
/// indexed by endpoint address. Immutable, so one instance is shared by every connection
/// until the next configuration replaces it.
public final class L7PolicyIndex: Sendable {
    public let config: ProxyConfig
    private let endpointsByIP: [IPv4Address: ProxyEndpoint]
    /// The ipcache by prefix length, longest first, each level network → identity: a
    /// lookup costs a probe per length present, not a walk over every entry (ten thousand
    /// with a large CIDR policy, on every request the reporter names a source for).
    private let ipcacheLevels: [(mask: UInt32, identities: [UInt32: UInt32])]
    private let sets: [Key: CompiledSet]
    /// The mTLS tunnel's parts by address: found once per connection, not by a scan over
    /// every endpoint of the cluster.
    private let tunnelPeers: [IPv4Address: TunnelPeer]
    private let tunnelWorkloads: [IPv4Address: TunnelWorkload]
    private let ingressAuth: [IPv4Address: [TunnelAuthRule]]
    private let egressAuth: [IPv4Address: [TunnelAuthRule]]

    struct Key: Hashable { var ip: IPv4Address; var direction: TrafficDirection }

    struct CompiledSet: Sendable {
        var rules: [CompiledPortRule]
        var defaultRuleID: UInt32
    }

    struct CompiledPortRule: Sendable {
        var rule: L7PortRule
        var http: [CompiledHTTPRule]?

        /// Whether the rule covers a flow with the peer `peer` on `port`.
        func covers(peer: UInt32, port: UInt16) -> Bool {
            (rule.peers.contains(0) || rule.peers.contains(peer)) && rule.fromPort <= port && port <= rule.toPort
        }
    }

    /// Swift's Regex is not Sendable; these are built once, never mutated, and only
    /// matched against (which reads them), so sharing them across threads is safe.
    struct CompiledHTTPRule: Sendable {
        var method: L7Pattern?
        var path: L7Pattern?
        var host: L7Pattern?
        var headers: [HTTPRule.HeaderRequirement]

        init(_ r: HTTPRule) throws(MeshError) {
            // Each expression compiled once, the error naming its field (as validate() does).
            func compiled(_ pattern: String?, _ field: String) throws(MeshError) -> L7Pattern? {
                guard let pattern else { return nil }
                return try L7Pattern(pattern, at: field)
            }
            method = try compiled(r.method, "method")
            path = try compiled(r.path, "path")
            host = try compiled(r.host, "host")
            headers = r.headers
        }

        func matches(_ req: L7Request) -> Bool {
            if let method, !method.wholeMatch(req.method) { return false }
            if let path, !path.wholeMatch(req.target) { return false }
            if let host, !host.wholeMatch(req.host) { return false }
            for h in headers {
                let values = req.headers.lazy.filter { $0.name == h.name }.map(\.value)
                if let want = h.value {
                    if !values.contains(want) { return false }
                } else if values.isEmpty {
                    return false
                }
            }
            return true
        }
    }

    public init(_ config: ProxyConfig) throws(MeshError) {
        self.config = config
        var eps: [IPv4Address: ProxyEndpoint] = [:]
        for e in config.endpoints { eps[e.ip] = e }
        endpointsByIP = eps
        let t = config.tunnel
        tunnelPeers = Dictionary((t?.peers ?? []).map { ($0.ip, $0) }, uniquingKeysWith: { first, _ in first })
        tunnelWorkloads = Dictionary((t?.workloads ?? []).map { ($0.ip, $0) }, uniquingKeysWith: { first, _ in first })
        ingressAuth = Dictionary((t?.authRules ?? []).map { ($0.endpoint, $0.rules) }, uniquingKeysWith: { first, _ in first })
        egressAuth = Dictionary(config.egressAuth.map { ($0.endpoint, $0.rules) }, uniquingKeysWith: { first, _ in first })
        var levels: [Int: [UInt32: UInt32]] = [:]
        for e in config.ipcache where levels[e.prefix.prefixLength]?[e.prefix.network.value] == nil {
            levels[e.prefix.prefixLength, default: [:]][e.prefix.network.value] = e.identity
        }
        ipcacheLevels = levels.sorted { $0.key > $1.key }.map { (IPv4CIDR.mask(bits: $0.key), $0.value) }
        hostAddress = config.ipcache.first { $0.identity == PolicyCompiler.hostIdentity && $0.prefix.prefixLength == 32 }?.prefix.network
        var sets: [Key: CompiledSet] = [:]
        for s in config.l7 {
            var rules: [CompiledPortRule] = []
            for r in s.rules {
                var compiled: [CompiledHTTPRule]?
                if let http = r.http {
                    compiled = []
                    for h in http { compiled!.append(try CompiledHTTPRule(h)) }
                }
                rules.append(CompiledPortRule(rule: r, http: compiled))
            }
            sets[Key(ip: s.endpoint, direction: s.direction)] = CompiledSet(rules: rules, defaultRuleID: s.defaultRuleID)
        }
        self.sets = sets
    }

    public var generation: UInt64 { config.generation }

    public func endpoint(_ ip: IPv4Address) -> ProxyEndpoint? { endpointsByIP[ip] }

    /// One of the node's own addresses (a host /32 of the ipcache): where the proxy's
    /// connections that are not on an endpoint's behalf come from.
    public let hostAddress: IPv4Address?

    /// The identity of an address, as the datapath's ipcache gives it: an endpoint's, else
    /// the longest matching prefix's, else the world's.
    public func identity(of ip: IPv4Address) -> UInt32 {
        if let e = endpointsByIP[ip] { return e.identity }
        for level in ipcacheLevels {
            if let identity = level.identities[ip.value & level.mask] { return identity }
        }
        return PolicyCompiler.worldIdentity
    }

    /// The egress rule of `source` that allows its flow to `destination:port` only
    /// authenticated, if one does.
    public func egressAuthRule(source: IPv4Address, destination: IPv4Address, port: UInt16) -> TunnelAuthRule? {
        guard let rules = egressAuth[source] else { return nil }
        let peer = identity(of: destination)
        return rules.first { $0.covers(identity: peer, port: port) }
    }

    /// Another node's endpoint at `ip`, as the tunnel knows it.
    public func tunnelPeer(_ ip: IPv4Address) -> TunnelPeer? { tunnelPeers[ip] }

    /// This node's endpoint at `ip`, with its SVID files.
    public func tunnelWorkload(_ ip: IPv4Address) -> TunnelWorkload? { tunnelWorkloads[ip] }

    /// The ingress rules of this node's endpoint at `ip` that require authentication.
    public func ingressAuthRules(_ ip: IPv4Address) -> [TunnelAuthRule] { ingressAuth[ip] ?? [] }

    /// Whether L7 policy allows `request` from `source` to `destination:port`: the source's
    /// egress rules and the destination's ingress rules must both allow it, each where it
    /// has HTTP rules for this peer and port.
    /// `sourceIdentity` overrides the source address's (the ingress gateway's requests).
    public func decide(_ request: L7Request, source: IPv4Address, destination: IPv4Address, port: UInt16,
                       sourceIdentity: UInt32? = nil) -> L7Verdict {
        let egress = check(request, at: source, direction: .egress, peer: identity(of: destination), port: port)
        if !egress.allowed { return egress }
        let ingress = check(request, at: destination, direction: .ingress, peer: sourceIdentity ?? identity(of: source), port: port)
        if !ingress.allowed { return ingress }
        // Report the rule that actually read the request: the one with HTTP rules.
        if ingress.ruleID != 0 { return ingress }
        return egress
    }

    /// Whether `source`'s own egress rules read the HTTP of its flow to `destination:port`:
    /// a rule that covers the flow has HTTP rules, so the flow's requests must be judged
    /// here, at the source, whichever way its bytes then leave the node.
    public func egressReadsHTTP(source: IPv4Address, destination: IPv4Address, port: UInt16) -> Bool {
        guard let set = sets[Key(ip: source, direction: .egress)] else { return false }
        let peer = identity(of: destination)
        return set.rules.contains { $0.http != nil && $0.covers(peer: peer, port: port) }
    }

    /// Whether the flow needs the proxy at all under this configuration (the datapath's
    /// own decision is the authority; this is for tools and tests).
    public func hasL7Rules(at ip: IPv4Address, direction: TrafficDirection) -> Bool {
        sets[Key(ip: ip, direction: direction)] != nil
    }

    private func check(_ req: L7Request, at ip: IPv4Address, direction: TrafficDirection, peer: UInt32,
                       port: UInt16) -> L7Verdict {
        guard let set = sets[Key(ip: ip, direction: direction)] else {
            return L7Verdict(allowed: true, ruleID: 0, rule: "", direction: nil)
        }
        // Walked in place, twice, rather than filtered into a new array on every request.
        // A rule without HTTP rules on this port opens it to every request.
        for r in set.rules where r.http == nil && r.covers(peer: peer, port: port) {
            return L7Verdict(allowed: true, ruleID: r.rule.ruleID, rule: r.rule.rule, direction: direction)
        }
        for r in set.rules where r.covers(peer: peer, port: port) {
            if let http = r.http, http.contains(where: { $0.matches(req) }) {
                return L7Verdict(allowed: true, ruleID: r.rule.ruleID, rule: r.rule.rule, direction: direction)
            }
        }
        let id = set.defaultRuleID
        return L7Verdict(allowed: false, ruleID: id,
                         rule: config.ruleNames[id] ?? "default deny (\(direction.rawValue))", direction: direction)
    }
}
