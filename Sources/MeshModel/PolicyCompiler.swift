import MeshABI

/// Turns policies and the node's endpoints into what the kernel looks up: identities, an
/// ipcache, policy map entries and per-endpoint enforcement. Pure and deterministic: the
/// same input (identities included, which an allocator hands out and keeps) always gives
/// the same output, so a restarted meshd rebuilds exactly what its predecessor left pinned.
public enum PolicyCompiler {
    // Reserved identities and where allocation starts: the kernel's numbers (mesh_abi.h).
    public static let anyIdentity = UInt32(MESH_ID_ANY.rawValue)
    public static let hostIdentity = UInt32(MESH_ID_HOST.rawValue)
    public static let worldIdentity = UInt32(MESH_ID_WORLD.rawValue)
    public static let ingressIdentity = UInt32(MESH_ID_INGRESS.rawValue)
    static let firstEndpointIdentity = UInt32(MESH_ID_FIRST_ENDPOINT.rawValue)
    static let firstCIDRIdentity = UInt32(MESH_ID_FIRST_CIDR.rawValue)

    /// What a compiled policy set needs to know about an endpoint.
    public struct EndpointInfo: Sendable, Equatable {
        public var id: Int
        public var name: String
        public var labels: Labels
        public var ipv4: IPv4Address
        /// false: an endpoint of another node of the cluster. It is a peer that rules can
        /// name and an ipcache entry, never a subject: its own node enforces its policy.
        /// Its id is unique among the compile's endpoints but means nothing to the kernel.
        public var local: Bool
        /// Another node's endpoint that its node accepts TCP to only through an mTLS tunnel
        /// (its ipcache entry says so, and this node's datapath sends such flows to the proxy).
        public var tunnel: Bool
        public init(id: Int, name: String, labels: Labels, ipv4: IPv4Address, local: Bool = true, tunnel: Bool = false) {
            self.id = id
            self.name = name
            self.labels = labels
            self.ipv4 = ipv4
            self.local = local
            self.tunnel = tunnel
        }
    }

    public struct IPCacheEntry: Sendable, Equatable, Hashable {
        public var prefix: IPv4CIDR
        public var identity: UInt32
        public var endpointID: Int
        public var tunnel: Bool = false
    }

    public struct Entry: Sendable, Equatable, Hashable {
        public var endpointID: Int
        public var direction: TrafficDirection
        /// Peer identity; 0 for every peer.
        public var identity: UInt32
        /// 0 for every protocol (and so every port).
        public var proto: UInt8
        public var portPrefix: UInt16
        public var portPrefixLength: Int
        public var action: PolicyRule.Action
        public var ruleID: UInt32
        public var policyID: UInt32
        /// Allowed, but through the L7 proxy: every allow rule covering it has HTTP rules.
        public var l7: Bool = false
        /// Allowed for a proven peer only: an allow rule covering it requires authentication.
        public var auth: Bool = false

        /// What entries are grouped and ordered by (see groupOrder).
        var group: (Int, TrafficDirection, UInt32) { (endpointID, direction, identity) }

        /// A compile's order of entries: by group, then by port block. Two entries with
        /// the same place in it are the same key in the kernel's policy map.
        public static func precedes(_ a: Entry, _ b: Entry) -> Bool {
            if a.endpointID != b.endpointID || a.direction != b.direction || a.identity != b.identity {
                return groupOrder(a.group, b.group)
            }
            return (a.proto, a.portPrefix, a.portPrefixLength) < (b.proto, b.portPrefix, b.portPrefixLength)
        }
    }

    public struct Enforcement: Sendable, Equatable {
        public var endpointID: Int
        public var ingress: Bool
        public var egress: Bool
        public var ingressDefaultRule: UInt32
        public var egressDefaultRule: UInt32
    }

    /// What a rule id in an entry, an event or a trace stands for.
    public struct RuleInfo: Sendable, Equatable, Codable {
        /// `namespace/name` of the policy, empty for a default-deny entry.
        public var policy: String
        public var path: String
        public var action: PolicyRule.Action
        /// The text of an entry that is no rule of a policy (a default deny).
        var note: String?

        /// Human text: `default/allow-web spec.ingress[0] (allow)` or
        /// `default deny: selected by default/p1, default/p2`. Made when asked for: a
        /// compile makes one RuleInfo per rule, and few are ever named.
        public var description: String { note ?? "\(policy) \(path) (\(action.rawValue))" }
    }

    public struct Result: Sendable {
        public var identities: [UInt32: IdentityInfo]
        public var endpointIdentity: [Int: UInt32]
        public var ipcache: [IPCacheEntry]
        public var entries: [Entry]
        public var enforcement: [Enforcement]
        /// Index = rule id; 0 is "no rule".
        public var rules: [RuleInfo]
        /// Policy id (as counted by the kernel) → policy key.
        public var policyIDs: [UInt32: String]
        /// What the L7 proxy judges requests with: every endpoint direction that has HTTP
        /// rules, with all its allow rules (see L7PortRule).
        public var l7: [L7EndpointPolicy] = []
        /// Ingress allow rules that require authentication, by local endpoint: what the
        /// proxy checks a tunnelled peer's identity against.
        public var authRules: [TunnelAuthPolicy] = []
        /// Egress allow rules that require authentication, by local endpoint (their peers
        /// are destinations): flows they cover leave this node only through the tunnel.
        public var egressAuthRules: [TunnelAuthPolicy] = []
    }

    /// What an identity stands for. Label sets are global (one number per label set on
    /// every node, once several nodes share a store); CIDRs are node-local, as in Cilium.
    public struct IdentityKey: Hashable, Sendable, Codable, Comparable {
        public enum Scope: String, Sendable, Codable, CaseIterable {
            case global, local

            /// The numbers of the scope: the kernel's split (mesh_abi.h).
            public var range: Range<UInt32> {
                switch self {
                case .global: firstEndpointIdentity..<firstCIDRIdentity
                case .local: firstCIDRIdentity..<(firstCIDRIdentity << 1)
                }
            }
        }

        public var scope: Scope
        /// `app=web,namespace=prod` (a label set, canonical form) or `cidr:10.0.0.0/8`.
        public var name: String

        public init(scope: Scope, name: String) {
            self.scope = scope
            self.name = name
        }

        public static func labels(_ labels: Labels) -> IdentityKey { IdentityKey(scope: .global, name: labels.description) }
        public static func cidr(_ cidr: IPv4CIDR) -> IdentityKey { IdentityKey(scope: .local, name: "cidr:\(cidr)") }

        public static func < (a: IdentityKey, b: IdentityKey) -> Bool { (a.scope.rawValue, a.name) < (b.scope.rawValue, b.name) }

        /// The name alone (the scope follows from it): compiles look up ten thousand keys.
        public func hash(into hasher: inout Hasher) { hasher.combine(name) }
    }

    /// The identities a compile of `policies` over `endpoints` needs: one per distinct label
    /// set, one per CIDR a rule names (and each of its exceptions).
    public static func identityKeys(policies: [Policy], endpoints: [EndpointInfo], memo: Memo? = nil) -> Set<IdentityKey> {
        labelKeys(endpoints).union(memo?.cidrKeys(of: policies) ?? Set(ruleCIDRs(policies).map { .cidr($0) }))
    }

    /// The identity keys of the endpoints' label sets.
    public static func labelKeys(_ endpoints: [EndpointInfo]) -> Set<IdentityKey> {
        Set(Set(endpoints.map(\.labels)).map { IdentityKey.labels($0) })
    }

    /// The CIDRs rules name, with their identities: what resolving a CIDR peer and the
    /// ipcache need.
    struct CIDRBlock {
        /// Each CIDR's identity number, as the block was made.
        var identity: [IPv4CIDR: UInt32] = [:]
        /// Sorted by network address: the prefixes inside a CIDR are one contiguous run.
        var index: [(key: IPv4CIDR, value: UInt32)] = []
        /// With room for a compile's label-set and reserved identities.
        var identities: [UInt32: IdentityInfo] = [:]
        /// Their ipcache entries, in `index` order.
        var ipcache: [IPCacheEntry] = []
        /// Their identity keys, in `index` order.
        var keys: [IdentityKey] = []

        init(_ cidrs: Set<IPv4CIDR>, key: (IPv4CIDR) -> IdentityKey, number: (IdentityKey) -> UInt32) {
            identity.reserveCapacity(cidrs.count)
            identities.reserveCapacity(cidrs.count + 4096)
            for c in cidrs {
                let k = key(c)
                let id = number(k)
                identities[id] = IdentityInfo(id: id, description: k.name)
                identity[c] = id
            }
            index = identity.sorted { $0.key < $1.key }
            ipcache = index.map { IPCacheEntry(prefix: $0.key, identity: $0.value, endpointID: 0) }
            keys = index.map { key($0.key) }
        }

        /// Whether `number` still gives every CIDR the number the block was made with.
        func holds(_ number: (IdentityKey) -> UInt32) -> Bool {
            zip(keys, index).allSatisfy { number($0) == $1.value }
        }
    }

    /// What a compile derives from each policy alone, kept for the next compile while the
    /// policy stays the same: most changes (an endpoint created, deleted or relabelled)
    /// leave every policy as it was, and a ten-thousand-rule policy's CIDRs, identity keys
    /// and port blocks then cost nothing to find again, and the last compile's entries
    /// serve the next. Not thread-safe: one owner, one compile at a time.
    public final class Memo: @unchecked Sendable { // used by one compile at a time (see above)
        private struct Part {
            var policy: Policy
            var cidrs: Set<IPv4CIDR>
            var ports: [[(UInt8, UInt16, Int, Bool)]]
            /// The indexes of its rules that name endpoints (PolicyRule.namesEndpoints).
            var labelRules: [Int]
            /// The indexes of its allow rules with HTTP rules, and of its rules that require
            /// authentication: what the proxy's part of a compile starts from.
            var httpRules: [Int]
            var authRules: [Int]
        }
        private var parts: [String: Part] = [:]
        private var keys: [IPv4CIDR: IdentityKey] = [:]
        private var union: (keys: [String], cidrs: Set<IPv4CIDR>)?
        private var unionKeys: Set<IdentityKey>?
        private var block: CIDRBlock?
        /// One more whenever the policies (or one of them) changed.
        private(set) var generation = 0
        /// One more whenever the CIDR block was made again.
        private(set) var blockGeneration = 0
        /// What the last compile with this memo made (see LastCompile).
        var last: LastCompile?
        /// Set by an owner whose numbers for CIDR keys change only at points it knows (a
        /// new allocation of every key): while it stays the same, the CIDR block's numbers
        /// are taken as good without looking each one up again. nil: always look.
        public var numbering: Int?
        private var blockNumbering: Int?

        public init() {}

        private func part(_ p: Policy) -> Part {
            let k = p.key
            // Policy == returns at once for the same rules array (the usual case).
            if let known = parts[k], known.policy == p { return known }
            union = nil
            let part = Part(policy: p, cidrs: PolicyCompiler.ruleCIDRs([p]), ports: p.rules.map { PolicyCompiler.portAtoms($0.ports) },
                            labelRules: PolicyCompiler.labelRules(p),
                            httpRules: PolicyCompiler.httpRules(p), authRules: PolicyCompiler.authRules(p))
            parts[k] = part
            return part
        }

        func ports(of p: Policy) -> [[(UInt8, UInt16, Int, Bool)]] { part(p).ports }
        func labelRules(of p: Policy) -> [Int] { part(p).labelRules }
        func httpRules(of p: Policy) -> [Int] { part(p).httpRules }
        func authRules(of p: Policy) -> [Int] { part(p).authRules }

        /// Every CIDR the policies' rules name (ruleCIDRs).
        func cidrs(of policies: [Policy]) -> Set<IPv4CIDR> {
            let current = policies.map { part($0) }
            let names = policies.map(\.key)
            if let union, union.keys == names { return union.cidrs }
            unionKeys = nil
            block = nil
            generation += 1
            // Forget policies gone, and keys of CIDRs no policy names any more.
            let live = Set(names)
            parts = parts.filter { live.contains($0.key) }
            let all = current.reduce(into: Set<IPv4CIDR>()) { $0.formUnion($1.cidrs) }
            if keys.count > 2 * all.count + 64 { keys = keys.filter { all.contains($0.key) } }
            union = (names, all)
            return all
        }

        /// The identity keys of those CIDRs: the same set (the same storage, so comparing
        /// it with an earlier answer is immediate) while the policies stay the same.
        public func cidrKeys(of policies: [Policy]) -> Set<IdentityKey> {
            let cidrs = cidrs(of: policies)
            if let unionKeys { return unionKeys }
            let keys = Set(cidrs.map { key(of: $0) })
            unionKeys = keys
            return keys
        }

        /// The policies' CIDR block, made again only when the CIDRs or their numbers changed.
        func cidrBlock(of policies: [Policy], number: (IdentityKey) -> UInt32) -> CIDRBlock {
            let cidrs = cidrs(of: policies)
            if let block {
                if let numbering, numbering == blockNumbering { return block }
                if block.holds(number) {
                    blockNumbering = numbering
                    return block
                }
            }
            let made = CIDRBlock(cidrs, key: key(of:), number: number)
            block = made
            blockNumbering = numbering
            blockGeneration += 1
            return made
        }

        func key(of c: IPv4CIDR) -> IdentityKey {
            if let k = keys[c] { return k }
            let k = IdentityKey.cidr(c)
            keys[c] = k
            return k
        }
    }

    static func ruleCIDRs(_ policies: [Policy]) -> Set<IPv4CIDR> {
        var cidrs = Set<IPv4CIDR>()
        for p in policies {
            for r in p.rules {
                for peer in r.peers {
                    if case .cidr(let c, let except) = peer { cidrs.insert(c); except.forEach { cidrs.insert($0) } }
                }
            }
        }
        return cidrs
    }

    /// Numbers for `keys` that `given` lacks, in key order after the highest of each scope:
    /// what a compile without an allocator (unit tests, dry runs) uses.
    static func filling(_ given: [IdentityKey: UInt32], for keys: Set<IdentityKey>) -> [IdentityKey: UInt32] {
        var out = given
        let missing = keys.filter { given[$0] == nil }
        guard !missing.isEmpty else { return out }
        var next: [IdentityKey.Scope: UInt32] = [:]
        for scope in IdentityKey.Scope.allCases {
            next[scope] = (given.filter { $0.key.scope == scope }.values.max()).map { $0 + 1 } ?? scope.range.lowerBound
        }
        for key in missing.sorted() {
            out[key] = next[key.scope]!
            next[key.scope]! += 1
        }
        return out
    }

    public struct IdentityInfo: Sendable, Equatable, Codable {
        public var id: UInt32
        /// `app=web,namespace=prod`, `cidr:10.0.0.0/8`, `reserved:host`, `reserved:world`.
        public var description: String
    }

    public static func policyID(_ key: String) -> UInt32 {
        let h = FNV1a.hash32(key)
        return h == 0 ? 1 : h
    }

    /// `identities` holds the number of each key `identityKeys` names (an allocator's
    /// answer); when empty, keys are numbered as `filling` does.
    ///
    /// `memo` keeps what depends on one policy alone (its CIDRs, its rules' port blocks)
    /// from one compile to the next, and the last compile's entries: while the policies
    /// and the CIDR block stay, only the groups an endpoint change touches are made again
    /// (LastCompile). The result is the same with or without it.
    public static func compile(policies: [Policy], endpoints: [EndpointInfo], hostAddresses: [IPv4Address],
                               identities given: [IdentityKey: UInt32] = [:], memo: Memo? = nil) -> Result {
        // With no numbers given, every key is numbered in key order (deterministic, for
        // tests); with an allocator's answer, a key it lacks (a dry run's new label set)
        // gets a number past the highest, in the order met.
        var numbers = given.isEmpty ? filling([:], for: identityKeys(policies: policies, endpoints: endpoints, memo: memo)) : given
        var spare: [IdentityKey.Scope: UInt32] = [:]
        func number(_ key: IdentityKey) -> UInt32 {
            if let n = numbers[key] { return n }
            let n = spare[key.scope] ?? ((numbers.filter { $0.key.scope == key.scope }.values.max()).map { $0 + 1 } ?? key.scope.range.lowerBound)
            spare[key.scope] = n + 1
            numbers[key] = n
            return n
        }
        var identities: [UInt32: IdentityInfo] = [
            hostIdentity: IdentityInfo(id: hostIdentity, description: "reserved:host"),
            worldIdentity: IdentityInfo(id: worldIdentity, description: "reserved:world"),
            ingressIdentity: IdentityInfo(id: ingressIdentity, description: "reserved:ingress"),
        ]
        // Each distinct label set once, in the order endpoints first have it.
        var labelSets: [(labels: Labels, id: UInt32)] = []
        var idOfLabels: [Labels: UInt32] = [:]
        var endpointIdentity: [Int: UInt32] = [:]
        for ep in endpoints {
            if let id = idOfLabels[ep.labels] {
                endpointIdentity[ep.id] = id
                continue
            }
            let key = IdentityKey.labels(ep.labels)
            let id = number(key)
            identities[id] = IdentityInfo(id: id, description: key.name.isEmpty ? "(no labels)" : key.name)
            idOfLabels[ep.labels] = id
            labelSets.append((ep.labels, id))
            endpointIdentity[ep.id] = id
        }

        let block = memo?.cidrBlock(of: policies, number: number)
            ?? CIDRBlock(ruleCIDRs(policies), key: { .cidr($0) }, number: number)
        // The block's table copied whole (it has room for the rest) costs less than
        // hashing its ten thousand entries into this one.
        var all = block.identities
        for (id, info) in identities { all[id] = info }
        identities = all
        let cidrIdentity = block.identity, cidrIndex = block.index

        // The node's own /32s (an endpoint's or a host's) win over a CIDR entry of the
        // same /32, and a host over an endpoint; then merged with the CIDRs (both sorted).
        var own: [IPv4CIDR: IPCacheEntry] = [:]
        own.reserveCapacity(endpoints.count + hostAddresses.count)
        for ep in endpoints {
            let prefix = IPv4CIDR(host: ep.ipv4)
            own[prefix] = IPCacheEntry(prefix: prefix, identity: endpointIdentity[ep.id]!,
                                       endpointID: ep.local ? ep.id : 0, tunnel: !ep.local && ep.tunnel)
        }
        for h in hostAddresses {
            let prefix = IPv4CIDR(host: h)
            own[prefix] = IPCacheEntry(prefix: prefix, identity: hostIdentity, endpointID: 0)
        }
        let ownSorted = own.values.sorted { $0.prefix < $1.prefix }
        var ipcache: [IPCacheEntry] = []
        ipcache.reserveCapacity(ownSorted.count + block.ipcache.count)
        var i = 0, j = 0
        while i < ownSorted.count || j < block.ipcache.count {
            if j == block.ipcache.count { ipcache.append(ownSorted[i]); i += 1; continue }
            if i == ownSorted.count { ipcache.append(block.ipcache[j]); j += 1; continue }
            let a = ownSorted[i].prefix, b = block.ipcache[j].prefix
            if a == b {
                ipcache.append(ownSorted[i]); i += 1; j += 1
            } else if a < b {
                ipcache.append(ownSorted[i]); i += 1
            } else {
                ipcache.append(block.ipcache[j]); j += 1
            }
        }

        // The rules table: one id per rule of each policy, in policy order (default-deny
        // entries follow, per enforced endpoint).
        let sortedPolicies = policies.sorted { $0.key < $1.key }
        var policyIDs: [UInt32: String] = [:]
        var ruleBase: [UInt32] = [] // per sorted policy: the id of its first rule, less one
        var count: UInt32 = 0
        for p in sortedPolicies {
            policyIDs[policyID(p.key)] = p.key
            ruleBase.append(count)
            count += UInt32(p.rules.count)
        }
        // With the policies and the CIDR block as they were, the last compile's table stands.
        let generations = memo.map { ($0.generation, $0.blockGeneration) }
        var last: LastCompile?
        if let memo, let kept = memo.last, kept.generations == (memo.generation, memo.blockGeneration) { last = kept }
        var rules: [RuleInfo]
        if let last {
            rules = last.policyRules
        } else {
            rules = [RuleInfo(policy: "", path: "", action: .allow, note: "no policy selects this endpoint in this direction")]
            rules.reserveCapacity(Int(count) + 1)
            for p in sortedPolicies {
                for r in p.rules { rules.append(RuleInfo(policy: p.key, path: r.path, action: r.action)) }
            }
        }
        let policyRuleCount = rules.count

        // Subjects are this node's endpoints, found per label set (endpoints that share
        // labels share the answer); peers are every endpoint of the cluster.
        let localEndpoints = endpoints.allSatisfy(\.local) ? endpoints : endpoints.filter(\.local)
        var localSets: [(labels: Labels, members: [Int])] = []
        var localSetIndex: [Labels: Int] = [:]
        for (i, ep) in localEndpoints.enumerated() {
            if let s = localSetIndex[ep.labels] { localSets[s].members.append(i); continue }
            localSetIndex[ep.labels] = localSets.count
            localSets.append((ep.labels, [i]))
        }
        let subjectsOf: [[EndpointInfo]] = sortedPolicies.map { p in
            localSets.filter { p.subject.matches($0.labels) }.flatMap { $0.members.map { localEndpoints[$0] } }
        }
        var selectedBy: [Int: [TrafficDirection: [String]]] = [:]
        for (pi, p) in sortedPolicies.enumerated() {
            for ep in subjectsOf[pi] {
                if p.enforceIngress { selectedBy[ep.id, default: [:]][.ingress, default: []].append(p.key) }
                if p.enforceEgress { selectedBy[ep.id, default: [:]][.egress, default: []].append(p.key) }
            }
        }
        // The peers of rules that name endpoints (by selector, or the cluster): the only
        // ones an endpoint change can change. By rule id, for rules with subjects here.
        let labelRules: [[Int]] = sortedPolicies.map { p in memo?.labelRules(of: p) ?? Self.labelRules(p) }
        var labelRulePeers: [UInt32: [UInt32]] = [:]
        for (pi, p) in sortedPolicies.enumerated() where !subjectsOf[pi].isEmpty {
            for index in labelRules[pi] {
                labelRulePeers[ruleBase[pi] + UInt32(index) + 1] = resolve(p.rules[index].peers, labelSets: labelSets,
                                                                             cidrIdentity: cidrIdentity, cidrIndex: cidrIndex)
            }
        }
        func peers(_ r: PolicyRule, id: UInt32) -> [UInt32] {
            labelRulePeers[id] ?? resolve(r.peers, labelSets: labelSets, cidrIdentity: cidrIdentity, cidrIndex: cidrIndex)
        }

        // Per-(endpoint, direction, peer) atoms, then the entries that resolve them: for
        // every group, or (`last`) only for the groups an endpoint change touched.
        struct GroupKey: Hashable { var ep: Int; var dir: TrafficDirection; var identity: UInt32 }
        var atoms: [GroupKey: [Atom]] = [:]
        var portsOf: [Int: [[(UInt8, UInt16, Int, Bool)]]] = [:] // by sorted policy, made when first needed
        func add(_ p: Policy, pi: Int, _ index: Int, _ r: PolicyRule, peerIDs: [UInt32], subjects: [EndpointInfo],
                 only dirty: Set<GroupKey>? = nil) {
            let ruleID = ruleBase[pi] + UInt32(index) + 1
            if portsOf[pi] == nil { portsOf[pi] = memo?.ports(of: p) ?? p.rules.map { portAtoms($0.ports) } }
            let ports = portsOf[pi]![index]
            let pid = policyID(p.key)
            for ep in subjects {
                for identity in peerIDs {
                    let key = GroupKey(ep: ep.id, dir: r.direction, identity: identity)
                    if let dirty, !dirty.contains(key) { continue }
                    for (proto, prefix, len, l7) in ports {
                        atoms[key, default: []].append(Atom(proto: proto, prefix: prefix, length: len, action: r.action,
                                                           ruleID: ruleID, policyID: pid, l7: l7,
                                                           auth: r.authentication == .required))
                    }
                }
            }
        }
        // Kept from the last compile: entries of endpoints and groups no change touched.
        var kept: [Entry] = []
        var dirtyEndpoints = Set<Int>()
        // What the next compile compares with (LastCompile.subjectLabels).
        var labelsNow: [Int: Labels] = [:]
        if memo != nil {
            labelsNow.reserveCapacity(localEndpoints.count)
            for ep in localEndpoints { labelsNow[ep.id] = ep.labels }
        }
        if let last {
            // Endpoints new, gone or relabelled: every group of theirs is made again.
            for ep in localEndpoints where last.subjectLabels[ep.id] != ep.labels { dirtyEndpoints.insert(ep.id) }
            for id in last.subjectLabels.keys where labelsNow[id] == nil { dirtyEndpoints.insert(id) }
            // Peers an endpoint change added to or took from a rule: those groups of the
            // rule's other subjects are made again, from the rules that name endpoints
            // (no other rule resolves to a label set's identity).
            var dirtyGroups = Set<GroupKey>()
            for (pi, p) in sortedPolicies.enumerated() where !subjectsOf[pi].isEmpty {
                for index in labelRules[pi] {
                    let r = p.rules[index], id = ruleBase[pi] + UInt32(index) + 1
                    guard let before = last.labelRulePeers[id], let now = labelRulePeers[id], before != now else { continue }
                    let changed = Set(before).symmetricDifference(now)
                    for ep in subjectsOf[pi] where !dirtyEndpoints.contains(ep.id) {
                        for identity in changed { dirtyGroups.insert(GroupKey(ep: ep.id, dir: r.direction, identity: identity)) }
                    }
                }
            }
            for (pi, p) in sortedPolicies.enumerated() {
                let dirtySubjects = dirtyEndpoints.isEmpty ? [] : subjectsOf[pi].filter { dirtyEndpoints.contains($0.id) }
                let cleanSubjects = dirtyGroups.isEmpty ? [] : subjectsOf[pi].filter { !dirtyEndpoints.contains($0.id) }
                if !dirtySubjects.isEmpty {
                    for (index, r) in p.rules.enumerated() {
                        add(p, pi: pi, index, r, peerIDs: peers(r, id: ruleBase[pi] + UInt32(index) + 1), subjects: dirtySubjects)
                    }
                }
                if !cleanSubjects.isEmpty {
                    for index in labelRules[pi] {
                        let r = p.rules[index]
                        add(p, pi: pi, index, r, peerIDs: peers(r, id: ruleBase[pi] + UInt32(index) + 1), subjects: cleanSubjects, only: dirtyGroups)
                    }
                }
            }
            // The entries of the groups made again go; the rest are copied a run at a time.
            var gone: [Range<Int>] = []
            let all = last.entries
            func run(_ below: (Entry) -> Bool, _ within: (Entry) -> Bool) -> Range<Int> {
                let lo = partitionPoint(all, from: 0, below)
                var end = lo
                while end < all.count, within(all[end]) { end += 1 }
                return lo..<end
            }
            for id in dirtyEndpoints {
                gone.append(run({ $0.endpointID < id }, { $0.endpointID == id }))
            }
            for g in dirtyGroups where !dirtyEndpoints.contains(g.ep) {
                let key = (g.ep, g.dir, g.identity)
                gone.append(run({ groupOrder($0.group, key) }, { $0.endpointID == g.ep && $0.direction == g.dir && $0.identity == g.identity }))
            }
            if gone.allSatisfy(\.isEmpty) {
                kept = all
            } else {
                kept.reserveCapacity(all.count)
                var at = 0
                for r in gone.filter({ !$0.isEmpty }).sorted(by: { $0.lowerBound < $1.lowerBound }) {
                    if r.lowerBound > at { kept.append(contentsOf: all[at..<r.lowerBound]) }
                    at = max(at, r.upperBound)
                }
                kept.append(contentsOf: all[at...])
            }
        } else {
            for (pi, p) in sortedPolicies.enumerated() where !subjectsOf[pi].isEmpty {
                for (index, r) in p.rules.enumerated() {
                    add(p, pi: pi, index, r, peerIDs: peers(r, id: ruleBase[pi] + UInt32(index) + 1), subjects: subjectsOf[pi])
                }
            }
        }

        var enforcement: [Enforcement] = []
        for ep in localEndpoints.sorted(by: { $0.id < $1.id }) {
            guard let sel = selectedBy[ep.id] else { continue }
            var e = Enforcement(endpointID: ep.id, ingress: sel[.ingress] != nil, egress: sel[.egress] != nil,
                                ingressDefaultRule: 0, egressDefaultRule: 0)
            for dir in TrafficDirection.allCases {
                guard let by = sel[dir] else { continue }
                rules.append(RuleInfo(policy: "", path: "", action: .deny,
                                      note: "default deny (\(dir.rawValue)): selected by \(by.joined(separator: ", "))"))
                if dir == .ingress { e.ingressDefaultRule = UInt32(rules.count - 1) } else { e.egressDefaultRule = UInt32(rules.count - 1) }
            }
            enforcement.append(e)
        }

        var made: [Entry] = []
        for (key, list) in atoms.sorted(by: { groupOrder(($0.key.ep, $0.key.dir, $0.key.identity), ($1.key.ep, $1.key.dir, $1.key.identity)) }) {
            // Only enforced directions need entries; elsewhere everything is allowed anyway.
            guard selectedBy[key.ep]?[key.dir] != nil else { continue }
            for (region, decided) in resolveLongestMatch(list) {
                made.append(Entry(endpointID: key.ep, direction: key.dir, identity: key.identity, proto: region.proto,
                                  portPrefix: region.prefix, portPrefixLength: region.length, action: decided.action,
                                  ruleID: decided.ruleID, policyID: decided.policyID, l7: decided.l7,
                                  auth: decided.auth))
            }
        }
        // Both in group order, and no group in both: each run of new entries goes where
        // its group belongs among the kept ones.
        var entries: [Entry]
        if kept.isEmpty {
            entries = made
        } else if made.isEmpty {
            entries = kept
        } else {
            entries = []
            entries.reserveCapacity(kept.count + made.count)
            var i = 0
            for e in made {
                if i < kept.count, groupOrder(kept[i].group, e.group) {
                    let lo = partitionPoint(kept, from: i) { groupOrder($0.group, e.group) }
                    entries.append(contentsOf: kept[i..<lo])
                    i = lo
                }
                entries.append(e)
            }
            entries.append(contentsOf: kept[i...])
        }
        if let memo, let generations {
            memo.last = LastCompile(generations: generations, subjectLabels: labelsNow, labelRulePeers: labelRulePeers, entries: entries,
                                    policyRules: last?.policyRules ?? Array(rules[..<policyRuleCount]))
        }

        // What the proxy needs: the allow rules of every endpoint direction an HTTP rule
        // applies to, and the rules that require authentication. Most policy sets have
        // neither, and then this costs a look at each rule.
        struct DirectionKey: Hashable { var ep: Int; var dir: TrafficDirection }
        var l7Directions = Set<DirectionKey>()
        for (pi, p) in sortedPolicies.enumerated() where !subjectsOf[pi].isEmpty {
            for index in memo?.httpRules(of: p) ?? httpRules(p) {
                for ep in subjectsOf[pi] { l7Directions.insert(DirectionKey(ep: ep.id, dir: p.rules[index].direction)) }
            }
        }
        var l7Rules: [DirectionKey: [L7PortRule]] = [:]
        var authRules: [DirectionKey: [TunnelAuthRule]] = [:]
        for (pi, p) in sortedPolicies.enumerated() where !subjectsOf[pi].isEmpty {
            // With an HTTP rule somewhere, every allow rule counts; else only those that
            // require authentication.
            for index in l7Directions.isEmpty ? memo?.authRules(of: p) ?? Self.authRules(p) : Array(p.rules.indices) {
                let r = p.rules[index]
                let auth = r.authentication == .required
                let l7 = r.action == .allow && !l7Directions.isEmpty
                guard auth || l7 else { continue }
                let ruleID = ruleBase[pi] + UInt32(index) + 1
                let peerIDs = peers(r, id: ruleID)
                for ep in subjectsOf[pi] {
                    let key = DirectionKey(ep: ep.id, dir: r.direction)
                    if auth {
                        authRules[key, default: []] += authPortRules(r, peers: peerIDs, ruleID: ruleID, description: rules[Int(ruleID)].description)
                    }
                    if l7, l7Directions.contains(key) {
                        l7Rules[key, default: []] += l7PortRules(r, peers: peerIDs, ruleID: ruleID, description: rules[Int(ruleID)].description)
                    }
                }
            }
        }
        var l7: [L7EndpointPolicy] = []
        let addresses = Dictionary(localEndpoints.map { ($0.id, $0.ipv4) }, uniquingKeysWith: { a, _ in a })
        let defaults = Dictionary(enforcement.map { ($0.endpointID, $0) }, uniquingKeysWith: { a, _ in a })
        for (key, list) in l7Rules.sorted(by: { ($0.key.ep, $0.key.dir.rawValue) < ($1.key.ep, $1.key.dir.rawValue) }) {
            guard let ip = addresses[key.ep], let e = defaults[key.ep] else { continue }
            l7.append(L7EndpointPolicy(endpoint: ip, direction: key.dir, rules: list,
                                       defaultRuleID: key.dir == .ingress ? e.ingressDefaultRule : e.egressDefaultRule))
        }
        func authPolicies(_ dir: TrafficDirection) -> [TunnelAuthPolicy] {
            authRules.filter { $0.key.dir == dir }.sorted { $0.key.ep < $1.key.ep }.compactMap { key, list in
                addresses[key.ep].map { TunnelAuthPolicy(endpoint: $0, rules: list) }
            }
        }
        return Result(identities: identities, endpointIdentity: endpointIdentity, ipcache: ipcache, entries: entries,
                      enforcement: enforcement, rules: rules, policyIDs: policyIDs, l7: l7, authRules: authPolicies(.ingress),
                      egressAuthRules: authPolicies(.egress))
    }

    /// The indexes of `p`'s rules that name endpoints (PolicyRule.namesEndpoints).
    static func labelRules(_ p: Policy) -> [Int] { p.rules.indices.filter { p.rules[$0].namesEndpoints } }

    /// The indexes of `p`'s allow rules with HTTP rules.
    static func httpRules(_ p: Policy) -> [Int] {
        p.rules.indices.filter { p.rules[$0].action == .allow && p.rules[$0].ports.contains { $0.http != nil } }
    }

    /// The indexes of `p`'s rules that require authentication.
    static func authRules(_ p: Policy) -> [Int] { p.rules.indices.filter { p.rules[$0].authentication == .required } }

    /// The first index from `start` on whose element is not `below` (a binary search:
    /// `a` holds every such element before every other).
    static func partitionPoint<T>(_ a: [T], from start: Int, _ below: (T) -> Bool) -> Int {
        var lo = start, hi = a.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if below(a[mid]) { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    /// Entries' order: by endpoint, direction (by name), then peer identity.
    static func groupOrder(_ a: (Int, TrafficDirection, UInt32), _ b: (Int, TrafficDirection, UInt32)) -> Bool {
        if a.0 != b.0 { return a.0 < b.0 }
        if a.1 != b.1 { return a.1.rawValue < b.1.rawValue }
        return a.2 < b.2
    }

    /// What a compile with a memo leaves for the next: enough to make again only the
    /// groups an endpoint change touches, while the policies and the CIDR block stay, as
    /// Cilium's selector cache regenerates only the endpoints a change reaches. A group is
    /// (subject endpoint, direction, peer identity). An endpoint created, deleted or
    /// relabelled has all its groups made again; another subject's groups change only
    /// where a rule that names endpoints gained or lost a peer identity (a label set came,
    /// went or was renumbered), and only such rules resolve to a label set's identity.
    struct LastCompile {
        /// The memo's policy and CIDR-block generations it was made under.
        var generations: (Int, Int)
        /// This node's endpoints' labels, by id.
        var subjectLabels: [Int: Labels]
        /// The peers of each rule that names endpoints, by rule id (see compile).
        var labelRulePeers: [UInt32: [UInt32]]
        var entries: [Entry]
        /// The rules table without its default-deny entries.
        var policyRules: [RuleInfo]
    }

    /// An authentication-requiring rule's TCP ports (the tunnel carries TCP only; UDP and
    /// ICMP from other nodes to such a rule are dropped in the kernel).
    static func authPortRules(_ r: PolicyRule, peers: [UInt32], ruleID: UInt32, description: String) -> [TunnelAuthRule] {
        if r.ports.isEmpty { return [TunnelAuthRule(peers: peers, fromPort: 0, toPort: .max, ruleID: ruleID, rule: description)] }
        return r.ports.filter { $0.proto == .tcp || $0.proto == .any }.map {
            TunnelAuthRule(peers: peers, fromPort: $0.from, toPort: $0.to, ruleID: ruleID, rule: description)
        }
    }

    /// An allow rule's TCP ports as the proxy reads them (UDP and ICMP never reach it).
    static func l7PortRules(_ r: PolicyRule, peers: [UInt32], ruleID: UInt32, description: String) -> [L7PortRule] {
        if r.ports.isEmpty {
            return [L7PortRule(peers: peers, fromPort: 0, toPort: .max, http: nil, ruleID: ruleID, rule: description)]
        }
        return r.ports.filter { $0.proto == .tcp || $0.proto == .any }.map {
            L7PortRule(peers: peers, fromPort: $0.from, toPort: $0.to, http: $0.http, ruleID: ruleID, rule: description)
        }
    }

    struct Atom {
        var proto: UInt8 // 0: any protocol
        var prefix: UInt16
        var length: Int // port prefix bits, 0...16 (ignored for proto 0)
        var action: PolicyRule.Action
        var ruleID: UInt32
        var policyID: UInt32
        /// An allow through the L7 proxy (its port has HTTP rules).
        var l7: Bool = false
        /// An allow for proven peers only (its rule requires authentication).
        var auth: Bool = false

        var region: Region { Region(proto: proto, prefix: proto == 0 ? 0 : prefix, length: proto == 0 ? 0 : length) }

        /// Region `r` lies inside this atom's region.
        func covers(_ r: Region) -> Bool {
            if proto == 0 { return true }
            guard r.proto == proto, r.length >= length else { return false }
            let mask: UInt16 = length == 0 ? 0 : ~UInt16(0) << (16 - length)
            return r.prefix & mask == prefix & mask
        }
    }

    struct Region: Hashable {
        var proto: UInt8
        var prefix: UInt16
        var length: Int
    }

    /// For each distinct region the kernel will longest-match on, the verdict over every
    /// packet for which it is the longest match: a deny among it and its ancestors wins,
    /// else an allow. Regions nest or are disjoint, so the answer is uniform per region.
    static func resolveLongestMatch(_ atoms: [Atom]) -> [(Region, Atom)] {
        // One rule for this peer (the common case: a rule per CIDR): nothing to resolve.
        if atoms.count == 1 {
            var only = atoms[0]
            if only.action == .deny { only.l7 = false; only.auth = false }
            return [(only.region, only)]
        }
        var regions: [Region: Atom?] = [:]
        for a in atoms { regions[a.region] = .some(nil) }
        var out: [(Region, Atom)] = []
        for r in regions.keys.sorted(by: { ($0.proto, $0.prefix, $0.length) < ($1.proto, $1.prefix, $1.length) }) {
            let covering = atoms.filter { $0.covers(r) }
            // Most specific first, then lowest rule id: the rule the user will recognise.
            let ordered = covering.sorted { ($0.proto == 0 ? -1 : $0.length, -Int($0.ruleID)) > ($1.proto == 0 ? -1 : $1.length, -Int($1.ruleID)) }
            if let deny = ordered.first(where: { $0.action == .deny }) {
                var d = deny
                d.l7 = false
                d.auth = false
                out.append((r, d))
            } else if var allow = ordered.first {
                // An L4 rule covering the region opens it to every request, as in Cilium:
                // only when every allow has HTTP rules does the flow need the proxy.
                allow.l7 = covering.allSatisfy(\.l7)
                // A requirement to authenticate stands whatever other allow covers the
                // region: a rule that asks for proof is never opened by another's L4 allow.
                allow.auth = covering.contains(where: \.auth)
                out.append((r, allow))
            }
        }
        return out
    }

    /// A rule's ports as (protocol, port prefix, prefix length, has HTTP rules) blocks. No
    /// ports: every protocol. ANY with ports: TCP and UDP.
    static func portAtoms(_ ports: [PortRange]) -> [(UInt8, UInt16, Int, Bool)] {
        if ports.isEmpty { return [(0, 0, 0, false)] }
        var out: [(UInt8, UInt16, Int, Bool)] = []
        for p in ports {
            let protos: [UInt8] = p.proto == .any ? [PortRange.L4Protocol.tcp.number, PortRange.L4Protocol.udp.number] : [p.proto.number]
            // Every port (1-65535, as a rule without a port reads) is one block, not sixteen.
            let (from, to) = p.from <= 1 && p.to == UInt16.max ? (UInt16(0), UInt16.max) : (p.from, p.to)
            for proto in protos {
                for (prefix, len) in portBlocks(from: from, to: to) { out.append((proto, prefix, len, p.http != nil)) }
            }
        }
        return out
    }

    /// Splits `from...to` into the fewest aligned power-of-two blocks (prefix, bits).
    static func portBlocks(from: UInt16, to: UInt16) -> [(UInt16, Int)] {
        var out: [(UInt16, Int)] = []
        var start = UInt32(from)
        let end = UInt32(to)
        while start <= end {
            var size: UInt32 = 1
            // Grow while aligned and inside the range.
            while size < 65536, start % (size * 2) == 0, start + size * 2 - 1 <= end { size *= 2 }
            let bits = 16 - size.trailingZeroBitCount
            out.append((UInt16(start), bits))
            start += size
        }
        return out
    }

    /// The identities a rule's peers stand for; 0 (any) for `all`.
    static func resolve(_ peers: [Peer], labelSets: [(labels: Labels, id: UInt32)],
                        cidrIdentity: [IPv4CIDR: UInt32], cidrIndex: [(key: IPv4CIDR, value: UInt32)]) -> [UInt32] {
        var out = Set<UInt32>()
        for peer in peers {
            switch peer {
            case .entity(.all): out.insert(anyIdentity)
            case .entity(.host): out.insert(hostIdentity)
            case .entity(.ingress): out.insert(ingressIdentity)
            case .entity(.cluster):
                out.insert(hostIdentity)
                for set in labelSets { out.insert(set.id) }
            case .entity(.world):
                out.insert(worldIdentity)
                out.formUnion(cidrIdentity.values)
            case .endpoints(let sel):
                for set in labelSets where sel.matches(set.labels) { out.insert(set.id) }
            case .cidr(let c, let except):
                // Binary search to the first prefix at or after c's network, then walk the run.
                var lo = partitionPoint(cidrIndex, from: 0) { $0.key.network < c.network }
                while lo < cidrIndex.count, cidrIndex[lo].key.network <= c.broadcast {
                    let (prefix, id) = cidrIndex[lo]
                    lo += 1
                    if prefix.prefixLength >= c.prefixLength,
                       !except.contains(where: { $0.prefixLength <= prefix.prefixLength && $0.contains(prefix.network) }) {
                        out.insert(id)
                    }
                }
                if c.prefixLength == 0 { out.insert(worldIdentity) }
            }
        }
        return out.sorted()
    }
}

extension PolicyRule {
    /// Whether a peer is found through endpoints' labels (a selector, or the cluster):
    /// such a rule's identities change with the endpoints, every other rule's only with
    /// the policies and the CIDRs.
    var namesEndpoints: Bool {
        peers.contains {
            switch $0 {
            case .endpoints, .entity(.cluster): true
            case .cidr, .entity: false
            }
        }
    }
}
