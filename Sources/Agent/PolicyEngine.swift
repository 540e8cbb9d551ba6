import Datapath
import Foundation
import Logging
import MeshModel

/// Owns the node's policies: parses and validates documents, compiles them with the
/// endpoints into a revision, publishes it to the kernel atomically, persists it, and
/// explains rule ids, identities and verdicts afterwards.
public actor PolicyEngine {
    struct Document {
        var key: String
        var kind: String
        var tree: PolicyTree
        var appliedAt: Date
        /// The document as the user wrote it, when the file held only this one; else nil
        /// and the tree is written out again.
        var text: String?

        var yaml: String { text ?? YAMLTree.text(tree) }
    }

    let store: Store
    let datapath: MeshDatapath
    let identityAllocator: any IdentityAllocator
    let logger: Logger
    /// The gateway every host-side veth holds: traffic from the node itself.
    let hostAddresses: [IPv4Address]
    private var documents: [String: Document] = [:]
    private var policies: [Policy] = []
    private(set) var compiled: PolicyCompiler.Result?
    /// The identity keys of the last compile that allocated (retained once it is in force):
    /// its endpoints' label sets, and its policies' CIDRs (the memo's set, whose storage
    /// stays the same while the policies do).
    private var compiledKeys = (labels: Set<IdentityKey>(), cidrs: Set<IdentityKey>())
    /// Keys the allocator holds in use for this engine, and their numbers (with numbers of
    /// keys no longer in use, until the next full retain): a change that leaves the
    /// policies alone asks the allocator only about label sets that are new. Sound because
    /// an allocator never moves the number of a key in use; the one exception, the etcd
    /// allocator reclaiming numbers after a lapsed lease, goes through
    /// `publishAfterRenumbering`.
    private var inUse: (labels: Set<IdentityKey>, cidrs: Set<IdentityKey>, numbers: [IdentityKey: UInt32])?
    /// When `retainOnly` last visited every key (and released what its grace allowed).
    private var lastFullRetain: ContinuousClock.Instant?
    /// What readers (monitor, metrics, traces, status) need to name rules, identities and
    /// policies, readable without waiting for this actor while it parses or compiles.
    nonisolated let names = Names()
    /// Called with the apply-to-enforced time of each change.
    var onEnforced: (@Sendable (Duration) -> Void)?

    public init(store: Store, datapath: MeshDatapath, identities: any IdentityAllocator, logger: Logger) throws(MeshError) {
        self.store = store
        self.datapath = datapath
        self.identityAllocator = identities
        self.logger = logger
        self.hostAddresses = [IPv4Address(Plumbing.gateway)!]
        for row in try store.policyDocuments() {
            do {
                let trees = try YAMLTree.documents(row.yaml, source: "stored policy \(row.key)")
                let parsed = try PolicyParser.parse(documents: trees, source: "stored policy \(row.key)")
                documents[row.key] = Document(key: row.key, kind: row.kind, tree: trees.first(where: { $0 != .null }) ?? .null,
                                              appliedAt: row.appliedAt, text: row.yaml)
                policies += parsed
            } catch {
                logger.error("a stored policy no longer parses; it is not enforced", metadata: ["policy": "\(row.key)", "error": "\(error.message)"])
            }
        }
        names.setDocumentCount(documents.count)
    }

    /// Parsing, compiling and publishing block (a 64 MiB file, a grace period): they run on
    /// the control thread, never on Swift's cooperative pool, which the API needs free.
    public nonisolated var unownedExecutor: UnownedSerialExecutor { ControlThread.executor.asUnownedSerialExecutor() }

    func setOnEnforced(_ f: @escaping @Sendable (Duration) -> Void) { onEnforced = f }

    /// Told what the L7 proxy needs after every publish (and at once, if one happened).
    var onProxyConfig: (@Sendable (ProxyConfig) -> Void)?
    func setOnProxyConfig(_ f: @escaping @Sendable (ProxyConfig) -> Void) {
        onProxyConfig = f
        if let compiled, let eps = try? store.endpoints() { f(proxyConfig(compiled, endpoints: eps)) }
    }

    /// What mTLS tunnels between nodes need besides a compile: set once by a cluster member.
    public struct TunnelSetup: Sendable {
        public var trustDomain: String
        public var bundlePath: String
        public var nodeCertificatePath: String
        public var nodeKeyPath: String
        public var nodeName: String
        public var port: UInt16
        /// An endpoint's SVID files, by endpoint name.
        public var certificatePath: @Sendable (String) -> String
        public var keyPath: @Sendable (String) -> String
        /// `mtls: strict`: every local endpoint takes other nodes' endpoints through tunnels only.
        public var strict: Bool
    }
    private var tunnelSetup: TunnelSetup?
    func setTunnelSetup(_ t: TunnelSetup) { tunnelSetup = t }

    /// Called when the set of this node's endpoints that take other nodes' connections only
    /// through a tunnel changed (the cluster's endpoint records say so to the other nodes).
    private var onTunnelledChange: (@Sendable () -> Void)?
    func setOnTunnelledChange(_ f: @escaping @Sendable () -> Void) { onTunnelledChange = f }
    private var lastTunnelled: Set<String> = []

    /// This node's endpoints (by name) that other nodes must reach through the mTLS tunnel:
    /// every one under `mtls: strict`, else those an ingress rule requiring authentication
    /// selects.
    public func tunnelledEndpoints() -> Set<String> {
        guard tunnelSetup != nil, let eps = try? store.endpoints() else { return [] }
        return Self.tunnelled(compiled, endpoints: eps, strict: tunnelSetup?.strict ?? false)
    }

    static func tunnelled(_ r: PolicyCompiler.Result?, endpoints: [Endpoint], strict: Bool) -> Set<String> {
        if strict { return Set(endpoints.map(\.name)) }
        let protected = Set((r?.authRules ?? []).map(\.endpoint))
        return Set(endpoints.filter { protected.contains($0.ipv4) }.map(\.name))
    }

    /// The proxy's view of a compile: who is who, the L7 rule sets, and (in a cluster) what
    /// its mTLS tunnels need. The generation is the proxy supervisor's to set.
    func proxyConfig(_ r: PolicyCompiler.Result, endpoints: [Endpoint]) -> ProxyConfig {
        let eps = endpoints.compactMap { ep -> ProxyEndpoint? in
            guard let id = r.endpointIdentity[ep.id] else { return nil }
            return ProxyEndpoint(ip: ep.ipv4, name: ep.name, namespace: ep.labels.namespace, identity: id)
        }
        var names: [UInt32: String] = [:]
        for s in r.l7 where Int(s.defaultRuleID) < r.rules.count { names[s.defaultRuleID] = r.rules[Int(s.defaultRuleID)].description }
        var config = ProxyConfig(generation: 0, endpoints: eps,
                                 ipcache: r.ipcache.filter { $0.endpointID == 0 }.map { ProxyIPCacheEntry(prefix: $0.prefix, identity: $0.identity) },
                                 l7: r.l7, ruleNames: names, egressAuth: r.egressAuthRules)
        if let t = tunnelSetup {
            let workloads = endpoints.map {
                TunnelWorkload(ip: $0.ipv4, spiffeID: ProxyTunnelConfig.workloadSPIFFEID(trustDomain: t.trustDomain, namespace: $0.labels.namespace,
                                                                                 serviceAccount: $0.serviceAccount),
                               certificatePath: t.certificatePath($0.name), keyPath: t.keyPath($0.name))
            }
            let peers = remoteEndpoints.compactMap { rec -> TunnelPeer? in
                // Records of nodes older than tunnels carry neither; such a peer can only be reached in the clear.
                guard let spiffeID = rec.spiffeID, let nodeIP = rec.nodeIP else { return nil }
                return TunnelPeer(ip: rec.ip, name: rec.name, namespace: rec.labels.namespace, identity: rec.identity, spiffeID: spiffeID,
                                  nodeName: rec.node, nodeIP: nodeIP, tunnel: rec.tunnel ?? false)
            }
            config.tunnel = ProxyTunnelConfig(trustDomain: t.trustDomain, trustBundlePath: t.bundlePath,
                                              nodeCertificatePath: t.nodeCertificatePath, nodeKeyPath: t.nodeKeyPath,
                                              nodeName: t.nodeName, port: t.port, workloads: workloads, peers: peers,
                                              authRules: r.authRules, certificateGeneration: 0)
        }
        return config
    }

    public var revision: UInt32 { (try? datapath.policyState().revision) ?? 0 }

    /// The revision `compiled` was published as.
    private var compiledRevision: UInt32?

    static func datapathEntry(_ e: PolicyCompiler.IPCacheEntry) -> MeshDatapath.IPCacheEntry {
        .init(address: e.prefix.network.value, prefixLength: e.prefix.prefixLength, identity: e.identity, endpointID: UInt32(e.endpointID),
              tunnel: e.tunnel)
    }

    static func datapathEntry(_ e: PolicyCompiler.Entry) -> MeshDatapath.PolicyEntry {
        .init(endpointID: UInt32(e.endpointID), direction: e.direction == .ingress ? .ingress : .egress, identity: e.identity, proto: e.proto,
              portPrefix: e.portPrefix, portPrefixLength: e.portPrefixLength, action: e.action == .allow ? .allow : .deny,
              ruleID: e.ruleID, policyID: e.policyID, l7: e.l7, auth: e.auth)
    }

    static func datapathEntry(_ e: PolicyCompiler.Enforcement) -> MeshDatapath.Enforcement {
        .init(endpointID: UInt32(e.endpointID), ingress: e.ingress, egress: e.egress, ingressDefaultRule: e.ingressDefaultRule,
              egressDefaultRule: e.egressDefaultRule)
    }

    /// `new` as changes from `old`: both lists of each kind are in the compiler's order
    /// (every key once), so one merge of each finds them. nil when a list is not in that
    /// order: then the caller publishes the whole revision.
    static func changes(from old: PolicyCompiler.Result, to new: PolicyCompiler.Result) -> MeshDatapath.PolicyChanges? {
        var out = MeshDatapath.PolicyChanges()
        guard let ipcache = merge(old.ipcache, new.ipcache, precedes: { $0.prefix < $1.prefix }),
              let policy = merge(old.entries, new.entries, precedes: PolicyCompiler.Entry.precedes),
              let enforcement = merge(old.enforcement, new.enforcement, precedes: { $0.endpointID < $1.endpointID }) else { return nil }
        out.ipcache = ipcache.changed.map(datapathEntry)
        out.ipcacheGone = ipcache.gone.map(datapathEntry)
        out.policy = policy.changed.map(datapathEntry)
        out.policyGone = policy.gone.map(datapathEntry)
        out.enforcement = enforcement.changed.map(datapathEntry)
        out.enforcementGone = enforcement.gone.map(datapathEntry)
        return out
    }

    /// The entries of `new` that are not in `old` as they are, and those of `old` whose key
    /// `new` lacks; nil unless both strictly follow `precedes`.
    static func merge<T: Equatable>(_ old: [T], _ new: [T], precedes: (T, T) -> Bool) -> (changed: [T], gone: [T])? {
        for list in [old, new] where list.count > 1 {
            for k in 1..<list.count where !precedes(list[k - 1], list[k]) { return nil }
        }
        var changed: [T] = [], gone: [T] = []
        var i = 0, j = 0
        while i < old.count || j < new.count {
            if j == new.count || (i < old.count && precedes(old[i], new[j])) {
                gone.append(old[i])
                i += 1
            } else if i == old.count || precedes(new[j], old[i]) {
                changed.append(new[j])
                j += 1
            } else {
                if old[i] != new[j] { changed.append(new[j]) }
                i += 1
                j += 1
            }
        }
        return (changed, gone)
    }

    /// Publishes again after the allocator moved numbers of keys in use (the cluster's
    /// lease lapsed and etcd gave some label sets other numbers): every key's number is
    /// asked for again.
    public func publishAfterRenumbering() throws(MeshError) {
        inUse = nil
        lastFullRetain = nil
        try publish()
    }

    /// Compiles the current desired state and publishes it as the next revision.
    @discardableResult
    public func publish() throws(MeshError) -> MeshDatapath.PublishStats {
        try publish(policies: policies)
    }

    /// Endpoints as identity and policy see them: their labels and their namespace's; then
    /// the other nodes' endpoints (ids below zero), peers that rules may name.
    private func endpointInfos() throws(MeshError) -> [PolicyCompiler.EndpointInfo] {
        let nsLabels = ServiceManager.namespaceLabels(store)
        let local: [PolicyCompiler.EndpointInfo] = try store.endpoints().map {
            .init(id: $0.id, name: $0.name, labels: $0.labels.withNamespaceLabels(nsLabels[$0.labels.namespace]), ipv4: $0.ipv4)
        }
        return local + remoteEndpoints.enumerated().map { i, r in
            .init(id: -1 - i, name: "\(r.node)/\(r.name)", labels: r.labels, ipv4: r.ip, local: false, tunnel: r.tunnel ?? false)
        }
    }

    /// What compiles derive from each policy alone, kept between them.
    private let memo = PolicyCompiler.Memo()
    /// How many times every key was allocated anew (see compile).
    private var allocations = 0
    /// A visit of every key is queued to run after the current publish.
    private var fullRetainQueued = false

    /// The other nodes' endpoints, as the cluster's store says (sorted by address).
    private(set) var remoteEndpoints: [EndpointRecord] = []

    /// Takes the other nodes' endpoints and publishes a revision with them, unless they
    /// are what the last one had. A failed publish keeps the old ones (the caller retries).
    public func setRemoteEndpoints(_ records: [EndpointRecord]) throws(MeshError) {
        let sorted = records.sorted { $0.ip < $1.ip }
        guard sorted != remoteEndpoints else { return }
        let old = remoteEndpoints
        remoteEndpoints = sorted
        do { try publish() } catch {
            remoteEndpoints = old
            throw error
        }
    }

    /// The labels identity and policy see for each of this node's endpoints (by name), and
    /// their identity numbers in the revision in force.
    public func localIdentities() throws(MeshError) -> [String: (labels: Labels, identity: UInt32)] {
        var out: [String: (labels: Labels, identity: UInt32)] = [:]
        for ep in try endpointInfos() where ep.local {
            if let id = compiled?.endpointIdentity[ep.id] { out[ep.name] = (ep.labels, id) }
        }
        return out
    }

    /// `allocate`: take numbers for new label sets and CIDRs from the allocator (and mark
    /// the ones this set no longer needs unused); else number them for this compile only.
    private func compile(_ set: [Policy], allocate: Bool = true) throws(MeshError) -> PolicyCompiler.Result {
        let t0 = ContinuousClock.now
        let endpoints = try endpointInfos()
        let labelKeys = PolicyCompiler.labelKeys(endpoints), cidrKeys = memo.cidrKeys(of: set)
        let t1 = ContinuousClock.now
        let numbers: [IdentityKey: UInt32]
        if allocate {
            if var held = inUse, held.cidrs == cidrKeys {
                let added = labelKeys.subtracting(held.labels)
                if !added.isEmpty {
                    for (k, n) in try identityAllocator.allocate(added) { held.numbers[k] = n }
                    held.labels.formUnion(added)
                    inUse = held
                }
                numbers = held.numbers
            } else {
                inUse = nil
                let all = labelKeys.union(cidrKeys)
                numbers = try identityAllocator.allocate(all)
                inUse = (labelKeys, cidrKeys, numbers)
                allocations += 1
                lastFullRetain = nil // the next publish visits every key
            }
            compiledKeys = (labelKeys, cidrKeys)
        } else {
            numbers = Dictionary(try identityAllocator.allocated().map { ($0.key, $0.id) }, uniquingKeysWith: { a, _ in a })
        }
        // Between two allocations of every key, the CIDRs' numbers stay (only label sets
        // are asked about): the memo need not check them. A dry run's numbers it checks.
        memo.numbering = allocate ? allocations : nil
        let t2 = ContinuousClock.now
        let result = PolicyCompiler.compile(policies: set, endpoints: endpoints, hostAddresses: hostAddresses, identities: numbers, memo: memo)
        logger.debug("compiled", metadata: ["endpoints_ms": "\((t1 - t0).seconds * 1000)", "identities_ms": "\((t2 - t1).seconds * 1000)",
                                            "compiler_ms": "\((ContinuousClock.now - t2).seconds * 1000)", "entries": "\(result.entries.count)"])
        let perSlot = Int(MeshDatapath.policyCapacityPerSlot)
        guard result.entries.count <= perSlot else {
            throw MeshError(.exhausted, "the policy set compiles to \(result.entries.count) map entries; the policy map holds \(perSlot) per revision",
                            hint: "narrow port ranges or selectors, or split the policies")
        }
        guard result.ipcache.count <= Int(MeshDatapath.ipcacheCapacityPerSlot) else {
            throw MeshError(.exhausted, "the policy set needs \(result.ipcache.count) ipcache entries; the map holds \(MeshDatapath.ipcacheCapacityPerSlot) per revision")
        }
        return result
    }

    private func publish(policies set: [Policy]) throws(MeshError) -> MeshDatapath.PublishStats {
        let start = ContinuousClock.now
        let result = try compile(set)
        let compiledAt = ContinuousClock.now
        let inForce = revision
        let next = MeshDatapath.revision(after: inForce)
        var byChanges: MeshDatapath.PublishStats?
        // What changed since the revision in force, when this engine published it: the
        // kernel is given only that (a relabel among ten thousand entries: a few).
        if let compiled, compiledRevision == inForce, let changes = Self.changes(from: compiled, to: result) {
            do {
                byChanges = try datapath.publish(revision: next, from: inForce, changes: changes)
            } catch {
                // The datapath has read the slots back from the kernel: the whole revision
                // against them repairs whatever went wrong.
                logger.warning("publishing policy changes failed; publishing the whole revision", metadata: ["revision": "\(next)", "error": "\(error)"])
            }
        }
        let stats: MeshDatapath.PublishStats
        do {
            stats = try byChanges ?? datapath.publish(revision: next, ipcache: result.ipcache.map(Self.datapathEntry),
                                                      policy: result.entries.map(Self.datapathEntry),
                                                      enforcement: result.enforcement.map(Self.datapathEntry))
        } catch {
            throw MeshError(.datapath, "publishing policy revision \(next) failed: \(error)")
        }
        compiled = result
        compiledRevision = next
        names.published(revision: next, result: result)
        if let eps = try? store.endpoints() {
            onProxyConfig?(proxyConfig(result, endpoints: eps))
            if let t = tunnelSetup {
                let now = Self.tunnelled(result, endpoints: eps, strict: t.strict)
                if now != lastTunnelled {
                    lastTunnelled = now
                    onTunnelledChange?()
                }
            }
        }
        // Only now may identities this revision no longer uses start their grace period.
        retainCompiledKeys()
        let done = ContinuousClock.now
        names.setLastPublish(PublishSummary(revision: Int(next), entries: result.entries.count, written: stats.written, deleted: stats.deleted,
                                            compileSeconds: (compiledAt - start).seconds, publishSeconds: (done - compiledAt).seconds))
        logger.info("policy revision published", metadata: [
            "revision": "\(next)", "slot": "\(stats.slot)", "entries": "\(result.entries.count)",
            "written": "\(stats.written)", "deleted": "\(stats.deleted)",
            "grace_wait_ms": "\(Double(stats.graceWait.components.attoseconds) / 1e15 + Double(stats.graceWait.components.seconds) * 1000)"])
        return stats
    }

    /// Applies a file of documents: all of them or none.
    public func apply(_ request: PolicyApplyRequest) throws(MeshError) -> PolicyApplyResult {
        let start = ContinuousClock.now
        let trees = try YAMLTree.documents(request.yaml, source: request.source).filter { $0 != .null }
        guard !trees.isEmpty else { throw MeshError.invalid("\(request.source): no policy documents found") }
        let (parsed, warnings) = try PolicyParser.read(documents: trees, source: request.source)
        return try apply(trees: trees, parsed: parsed, warnings: warnings, text: trees.count == 1 ? request.yaml : nil,
                         dryRun: request.dryRun, start: start)
    }

    /// Applies policy documents already parsed (by `meshctl apply`, from a file of several
    /// kinds): all of them or none.
    func apply(trees: [PolicyTree], parsed: [Policy], warnings: [String], text: String?, dryRun: Bool,
               start: ContinuousClock.Instant = .now) throws(MeshError) -> PolicyApplyResult {
        for w in warnings { logger.warning("policy field ignored", metadata: ["warning": "\(w)"]) }
        var incoming: [String: Document] = [:]
        for tree in trees {
            let key = Self.documentKey(tree)
            incoming[key] = Document(key: key, kind: tree["kind"].flatMap { if case .string(let s) = $0 { s } else { nil } } ?? "",
                                     tree: tree, appliedAt: Date(), text: text)
        }
        // The new set: everything else as it was, these documents replaced.
        let replaced = Set(incoming.keys)
        let next = policies.filter { !replaced.contains(Self.documentKey(of: $0)) } + parsed
        let rules = parsed.reduce(0) { $0 + $1.rules.count }
        if dryRun {
            let result = try compile(next, allocate: false)
            return PolicyApplyResult(documents: incoming.keys.sorted(), policies: parsed.count, rules: rules,
                                     revision: Int(revision), dryRun: true, entries: result.entries.count, enforcedSeconds: 0,
                                     warnings: warnings)
        }
        try publish(policies: next)
        let elapsed = ContinuousClock.now - start
        onEnforced?(elapsed)
        do {
            try store.writePolicyDocuments(incoming.values.map {
                Store.PolicyDocumentRow(key: $0.key, kind: $0.kind, yaml: $0.yaml, appliedAt: $0.appliedAt)
            })
        } catch {
            // Keep kernel and store in step: put the previous revision's policies back.
            _ = try? publish(policies: policies)
            throw error
        }
        policies = next
        documents.merge(incoming) { $1 }
        names.setDocumentCount(documents.count)
        // Parsing and compiling a large file allocates in bursts: hand the pages back.
        ProcessMemory.trim()
        logger.info("policies applied", metadata: ["documents": "\(incoming.keys.sorted())", "revision": "\(revision)"])
        return PolicyApplyResult(documents: incoming.keys.sorted(), policies: parsed.count, rules: rules, revision: Int(revision),
                                 dryRun: false, entries: compiled?.entries.count ?? 0,
                                 enforcedSeconds: Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18,
                                 warnings: warnings)
    }

    public func delete(_ name: String) throws(MeshError) -> String {
        let key = Self.normalise(name)
        guard documents[key] != nil else {
            throw MeshError(.notFound, "policy \"\(key)\" does not exist", hint: "meshctl policy list shows the policies")
        }
        let next = policies.filter { Self.documentKey(of: $0) != key }
        try publish(policies: next)
        try store.writePolicyDocuments([], delete: [key])
        policies = next
        documents[key] = nil
        names.setDocumentCount(documents.count)
        logger.info("policy deleted", metadata: ["policy": "\(key)", "revision": "\(revision)"])
        return key
    }

    public func list() throws(MeshError) -> [PolicySummary] {
        let eps = try endpointInfos()
        return documents.values.sorted { $0.key < $1.key }.map { doc in
            let mine = policies.filter { Self.documentKey(of: $0) == doc.key }
            let selected = eps.filter { ep in mine.contains { $0.subject.matches(ep.labels) } }.map(\.name)
            return PolicySummary(key: doc.key, kind: doc.kind, appliedAt: doc.appliedAt, selects: selected,
                                 rules: mine.reduce(0) { $0 + $1.rules.count })
        }
    }

    public func get(_ name: String) throws(MeshError) -> PolicyDocumentView {
        let key = Self.normalise(name)
        guard let doc = documents[key] else {
            throw MeshError(.notFound, "policy \"\(key)\" does not exist", hint: "meshctl policy list shows the policies")
        }
        return PolicyDocumentView(key: key, kind: doc.kind, yaml: doc.yaml,
                                  policies: policies.filter { Self.documentKey(of: $0) == key })
    }

    /// `name` means `default/name`.
    static func normalise(_ name: String) -> String { name.contains("/") ? name : "default/\(name)" }

    static func documentKey(_ tree: PolicyTree) -> String {
        let meta = tree["metadata"]
        let name = meta?["name"].flatMap { if case .string(let s) = $0 { s } else { nil } } ?? ""
        let ns = meta?["namespace"].flatMap { if case .string(let s) = $0 { s } else { nil } } ?? "default"
        return "\(ns)/\(name)"
    }

    /// A policy from `specs[i]` is named `name#i`; its document is `namespace/name`.
    static func documentKey(of p: Policy) -> String {
        "\(p.namespace)/\(p.name.split(separator: "#", maxSplits: 1).first.map(String.init) ?? p.name)"
    }

    public nonisolated func describe(rule: UInt32, revision: UInt32) -> String { names.describe(rule: rule, revision: revision) }

    public nonisolated func describe(identity: UInt32) -> String { names.describe(identity: identity) }

    public nonisolated func policyName(id: UInt32) -> String { names.policyName(id: id) }

    public nonisolated var policyCount: Int { names.documentCount }

    public nonisolated var lastPublish: PublishSummary? { names.lastPublish }

    public var policyKeys: [String] { documents.keys.sorted() }

    /// Names for the numbers the kernel reports, behind a lock: the newest compile's policy
    /// ids and identities, and the rule tables of recent revisions, so events from just
    /// before a flip still resolve.
    public final class Names: @unchecked Sendable {
        private let lock = NSLock()
        private var rulesByRevision: [UInt32: [PolicyCompiler.RuleInfo]] = [:]
        private var latestRules: [PolicyCompiler.RuleInfo] = []
        /// Identities of recent revisions, newest in `latestIdentities`: an event names the
        /// peer as the revision that decided it knew it.
        private var identitiesByRevision: [UInt32: [UInt32: PolicyCompiler.IdentityInfo]] = [:]
        private var latestIdentities: [UInt32: PolicyCompiler.IdentityInfo] = [:]
        private var policyIDs: [UInt32: String] = [:]
        private var documents = 0

        func published(revision: UInt32, result: PolicyCompiler.Result) {
            lock.withLock {
                rulesByRevision[revision] = result.rules
                for old in rulesByRevision.keys where old &+ 8 < revision { rulesByRevision[old] = nil }
                latestRules = result.rules
                identitiesByRevision[revision] = result.identities
                for old in identitiesByRevision.keys where old &+ 8 < revision { identitiesByRevision[old] = nil }
                latestIdentities = result.identities
                policyIDs = result.policyIDs
            }
        }

        func setDocumentCount(_ n: Int) { lock.withLock { documents = n } }

        private var last: PublishSummary?
        func setLastPublish(_ p: PublishSummary) { lock.withLock { last = p } }
        var lastPublish: PublishSummary? { lock.withLock { last } }

        var documentCount: Int { lock.withLock { documents } }

        func describe(rule: UInt32, revision: UInt32) -> String {
            lock.withLock {
                let table = rulesByRevision[revision] ?? latestRules
                return Int(rule) < table.count ? table[Int(rule)].description : "rule \(rule) of revision \(revision)"
            }
        }

        func describe(identity: UInt32) -> String {
            lock.withLock {
                let known = latestIdentities[identity]
                    ?? identitiesByRevision.sorted { $0.key > $1.key }.lazy.compactMap { $0.value[identity] }.first
                return known?.description ?? (identity == 0 ? "any" : "identity \(identity)")
            }
        }

        func policyName(id: UInt32) -> String {
            lock.withLock { id == 0 ? "(default deny)" : policyIDs[id] ?? "(deleted)" }
        }
    }

    /// Releases the identities whose grace period has passed since the revision in force
    /// stopped using them: called on a timer, so a number goes back to the pool without
    /// waiting for the next change.
    public func releaseUnusedIdentities() {
        fullRetainQueued = false
        guard compiled != nil else { return }
        lastFullRetain = nil
        retainCompiledKeys()
    }

    /// Marks unused what the revision just published no longer uses. Visiting every key
    /// (ten thousand with a large CIDR policy) when the CIDRs changed, else at most once a
    /// second, after the publish, which is also when numbers past their grace period go
    /// back; a change that left the policies alone marks only the label sets that went.
    private func retainCompiledKeys() {
        let now = ContinuousClock.now
        do {
            if let last = lastFullRetain, var held = inUse, held.cidrs == compiledKeys.cidrs {
                let gone = held.labels.subtracting(compiledKeys.labels)
                if !gone.isEmpty {
                    try identityAllocator.markUnused(gone)
                    inUse = nil // `held` is the only copy while it changes
                    held.labels = compiledKeys.labels
                    for key in gone { held.numbers[key] = nil }
                    inUse = held
                }
                // The visit of every key (10 ms and more with ten thousand CIDRs) waits
                // until this publish has answered: it releases numbers, which no revision
                // waits for.
                if now - last >= .seconds(1), !fullRetainQueued {
                    fullRetainQueued = true
                    Task { self.releaseUnusedIdentities() }
                }
                return
            }
            fullRetainQueued = false
            try identityAllocator.retainOnly(compiledKeys.labels.union(compiledKeys.cidrs))
            lastFullRetain = now
            if var held = inUse, held.cidrs == compiledKeys.cidrs {
                inUse = nil
                held.labels = compiledKeys.labels
                held.numbers = held.numbers.filter { held.labels.contains($0.key) || held.cidrs.contains($0.key) }
                inUse = held
            } else {
                inUse = nil
            }
        } catch {
            // The allocator's view is unknown now: the next compile asks about every key.
            inUse = nil
            logger.warning("cannot mark unused identities; they stay allocated until the next publish", metadata: ["error": "\(error.message)"])
        }
    }

    /// Every allocated identity with the endpoints that hold it.
    public func identityViews() throws(MeshError) -> [IdentityView] {
        let eps = try endpointInfos()
        return try identityAllocator.allocated().map { a in
            IdentityView(id: Int(a.id), scope: a.key.scope.rawValue, labels: a.key.name.isEmpty ? "(no labels)" : a.key.name,
                         endpoints: a.key.scope == .global ? eps.filter { $0.labels.description == a.key.name }.map(\.name) : [],
                         unusedSince: a.unusedSince)
        }
    }
}


extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
