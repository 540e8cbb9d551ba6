import Foundation
import Logging
import MeshModel
import NIOConcurrencyHelpers
import ServiceLifecycle
import Crypto
import X509

/// How a node joins a cluster (`--cluster etcd://…`).
public struct ClusterSettings: Sendable, Equatable {
    /// `host:port` of each etcd member.
    public var etcd: [String]
    /// The node's address on the network between nodes: other nodes route its pod CIDR via it.
    public var nodeIP: IPv4Address
    /// Seconds a node's lease lasts without renewal: how long a node that died without
    /// notice stays in the others' view.
    public var leaseTTL: Int
}

/// The node's part in a cluster: registers the node under a lease and keeps it alive,
/// claims its pod CIDR, writes its endpoints, and applies what the other nodes write —
/// their pod CIDRs as routes, their endpoints as peers of policy and backends of services,
/// documents applied anywhere as the cluster's desired state.
///
/// With etcd away, nothing is withdrawn: the node keeps enforcing and forwarding with what
/// it last knew, says so (status, metric, log), and once etcd answers again reads the
/// whole state anew and applies only the difference.
public actor ClusterAgent: Service {
    public let settings: ClusterSettings
    let node: NodeSettings
    let etcd: EtcdClient
    let store: Store
    let logger: Logger
    private var policy: PolicyEngine?
    private var services: ServiceManager?
    private(set) var allocator: EtcdIdentityAllocator?
    /// The node's lease, readable without the actor (the identity allocator's user keys).
    nonisolated let leaseID = NIOLockedValueBox<Int64>(0)
    nonisolated let health = NIOLockedValueBox(Health())

    /// What status and metrics show about the cluster connection.
    public struct Health: Sendable {
        public var connected = false
        public var lastError: String?
        public var lastContact: Date?
        /// The store's revision as last seen in any answer, and the one applied last.
        public var etcdRevision: Int64 = 0
        public var appliedRevision: Int64 = 0
        public var nodes: [NodeRecord] = []
        public var remoteEndpoints = 0
        public var resyncs = 0
        public var leaseRenewals = 0
        public var leasesLost = 0
    }

    /// Nodes and other nodes' endpoints as applied here, and as etcd holds them now.
    private var nodes: [String: NodeRecord] = [:]
    private var remote: [String: EndpointRecord] = [:]
    private var etcdNodes: [String: NodeRecord] = [:]
    private var etcdRemote: [String: EndpointRecord] = [:]
    /// Until then, what vanishes from etcd is kept: the window after an etcd outage in
    /// which every node's lease may have lapsed at once (etcd counts a lease down while its
    /// holders cannot reach it) and the nodes are still registering again. Withdrawing
    /// their endpoints meanwhile would be a window of wrong verdicts; a node that really
    /// died is withdrawn when the window closes.
    private var quietUntil = Date.distantPast
    private var recheckScheduled = false
    /// How many records the last "keeping" log line named (one line per change, not per recheck).
    private var keptLogged = 0
    /// Whether the kernel's routes to other nodes matched `nodes` after the last change.
    private var routesProgrammed = false
    /// This node's endpoint records as last written to etcd.
    private var written: [String: EndpointRecord] = [:]
    /// Documents as last applied from (or written to) the store: key → text.
    private var documents: [String: String] = [:]
    private var revision: Int64 = 0
    private var startedAt = Date()
    private var localDirty = false
    private var publishing = false

    public init(settings: ClusterSettings, node: NodeSettings, store: Store, logger: Logger) {
        self.settings = settings
        self.node = node
        self.etcd = EtcdClient(endpoints: settings.etcd)
        self.store = store
        var logger = logger
        logger[metadataKey: "part"] = "cluster"
        self.logger = logger
    }

    /// The identity allocator of a cluster node: global identities from etcd, CIDRs local.
    public func makeAllocator(local: StoreIdentityAllocator, grace: TimeInterval) -> EtcdIdentityAllocator {
        let box = leaseID
        let a = EtcdIdentityAllocator(etcd: etcd, node: node.nodeName, local: local, grace: grace, lease: { box.withLockedValue { $0 } })
        allocator = a
        return a
    }

    public func attach(policy: PolicyEngine, services: ServiceManager) {
        self.policy = policy
        self.services = services
    }

    // MARK: joining

    /// Joins the cluster before the node's first publish: a lease (the previous run's when
    /// it is still alive, so a restart of meshd withdraws nothing), the pod CIDR claim, the
    /// node's record, and the whole state read once. Waits for etcd as long as it takes:
    /// meanwhile the datapath keeps enforcing what was pinned.
    public func join() async throws(MeshError) {
        var delay = 0.5
        while true {
            do {
                try await joinOnce()
                return
            } catch let error where error.code == .unavailable {
                setHealth(error: error.message)
                logger.warning("waiting for etcd to join the cluster", metadata: ["etcd": "\(settings.etcd.joined(separator: ","))",
                                                                                   "error": "\(error.message)"])
                try? await Task.sleep(for: .seconds(delay))
                delay = min(delay * 2, 5)
            }
        }
    }

    private func joinOnce() async throws(MeshError) {
        let lease = try await obtainLease()
        try await claimPodCIDR(lease: lease)
        startedAt = Date()
        try await writeNodeRecord(lease: lease)
        try await resync(initial: true)
        logger.info("joined the cluster", metadata: ["etcd": "\(settings.etcd.joined(separator: ","))", "node_ip": "\(settings.nodeIP)",
                                                      "pod_cidr": "\(node.podCIDR)", "nodes": "\(nodes.count)", "lease": "\(lease)"])
    }

    private static let leaseSetting = "cluster.lease"

    /// The lease this node's keys live under: the stored one while etcd still keeps it.
    private func obtainLease() async throws(MeshError) -> Int64 {
        if let text = try? store.setting(Self.leaseSetting), let old = Int64(text), old != 0 {
            if (try? await etcd.keepAlive(old))?.ttl ?? 0 > 0 {
                leaseID.withLockedValue { $0 = old }
                return old
            }
        }
        let lease = try await etcd.grantLease(ttl: settings.leaseTTL)
        try store.setSetting(Self.leaseSetting, String(lease))
        leaseID.withLockedValue { $0 = lease }
        return lease
    }

    /// Claims the node's pod CIDR: refused while a live node holds one that overlaps it.
    /// The check and the claim are one transaction (no claim may appear in between).
    private func claimPodCIDR(lease: Int64) async throws(MeshError) {
        let mine = node.podCIDR
        for _ in 0..<8 {
            let (claims, revision) = try await PodCIDRAllocation.otherClaims(etcd, node: node.nodeName)
            if let other = claims.first(where: { $0.cidr.overlaps(mine) }) {
                throw MeshError(.alreadyExists, "pod CIDR \(mine) overlaps \(other.cidr) of node \(other.owner) in the cluster",
                                hint: "give this node a pod CIDR of its own with --pod-cidr")
            }
            if try await PodCIDRAllocation.claim(mine, node: node.nodeName, lease: lease, since: revision, etcd) { return }
        }
        throw MeshError(.unavailable, "claiming pod CIDR \(mine) kept conflicting with other nodes' claims")
    }

    private func writeNodeRecord(lease: Int64) async throws(MeshError) {
        let record = NodeRecord(name: node.nodeName, ip: settings.nodeIP, podCIDR: node.podCIDR, version: MeshVersion.string,
                                startedAt: startedAt, heartbeat: Date(), endpoints: written.count)
        try await etcd.put(ClusterKeys.node(node.nodeName), Self.encode(record), lease: lease)
    }

    // MARK: running

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await self.keepAliveLoop() }
                group.addTask { await self.watchLoop() }
                await group.waitForAll()
            }
        }
        await etcd.shutdown()
    }

    /// Renews the lease three times per TTL, rewriting the node's record (its heartbeat).
    /// A lease that lapsed (etcd away for longer than the TTL) is replaced, and everything
    /// the node owns written again under the new one.
    private func keepAliveLoop() async {
        let interval = Double(settings.leaseTTL) / 3
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(interval))
            guard !Task.isCancelled else { return }
            do throws(MeshError) {
                let lease = leaseID.withLockedValue { $0 }
                let (ttl, seen) = try await etcd.keepAlive(lease)
                health.withLockedValue { $0.etcdRevision = max($0.etcdRevision, seen) }
                if ttl <= 0 {
                    logger.warning("the node's lease lapsed while etcd was away; registering again", metadata: ["lease": "\(lease)"])
                    health.withLockedValue { $0.leasesLost += 1 }
                    try await reRegister()
                } else {
                    try await writeNodeRecord(lease: lease)
                    health.withLockedValue { $0.leaseRenewals += 1 }
                }
                markContact()
                if localDirty { await publishLocal() }
                await policy?.releaseUnusedIdentities()
            } catch {
                setHealth(error: error.message)
            }
        }
    }

    private func reRegister() async throws(MeshError) {
        let lease = try await etcd.grantLease(ttl: settings.leaseTTL)
        try store.setSetting(Self.leaseSetting, String(lease))
        leaseID.withLockedValue { $0 = lease }
        try await claimPodCIDR(lease: lease)
        try await writeNodeRecord(lease: lease)
        written = [:]
        localDirty = true
        if let allocator, try await allocator.reclaim() {
            try await policy?.publishAfterRenumbering()
        }
        await publishLocal()
    }

    /// Follows every change from the revision last applied; on any break (a member gone,
    /// etcd down, compaction) reads the whole state again and carries on from there.
    private func watchLoop() async {
        var delay = 0.2
        while !Task.isCancelled {
            do {
                for try await batch in etcd.watch(prefix: ClusterKeys.root, from: revision + 1) {
                    delay = 0.2
                    markContact()
                    await apply(batch)
                }
            } catch {
                if Task.isCancelled { return }
                setHealth(error: "\(error)")
                logger.warning("etcd watch broke; will read the state again", metadata: ["error": "\(error)"])
            }
            try? await Task.sleep(for: .seconds(delay))
            delay = min(delay * 2, 3)
            do throws(MeshError) {
                try await resync(initial: false)
                health.withLockedValue { $0.resyncs += 1 }
                if localDirty { await publishLocal() }
            } catch {
                setHealth(error: error.message)
            }
        }
    }

    /// Reads everything under the prefix at one revision and applies the difference.
    private func resync(initial: Bool) async throws(MeshError) {
        let (kvs, rev) = try await etcd.range(ClusterKeys.root, prefix: true)
        markContact()
        var newNodes: [String: NodeRecord] = [:], newRemote: [String: EndpointRecord] = [:], docs: [String: String] = [:]
        var trustKeys: [String: String] = [:]
        var mine = Set<String>()
        for kv in kvs {
            switch Self.classify(kv.key) {
            case .node(let name): if let r: NodeRecord = decode(kv) { newNodes[name] = r }
            case .endpoint(let owner, _):
                if owner == node.nodeName { mine.insert(kv.key) } else if let r: EndpointRecord = decode(kv) { newRemote[kv.key] = r }
            case .document: docs[kv.key] = kv.string
            case .trust: trustKeys[kv.key] = kv.string
            case .other: break
            }
        }
        revision = rev
        etcdNodes = newNodes
        etcdRemote = newRemote
        // Our own records as etcd holds them: any missing or stale one is written again.
        if Set(written.keys.map { ClusterKeys.endpoint(node: node.nodeName, name: $0) }) != mine { localDirty = true }
        // The other nodes' endpoints first: every revision a document's apply publishes
        // (all of them, once, after a restart) must already know them as peers.
        await applyView(initial: initial)
        let removedDocs = documents.keys.filter { docs[$0] == nil }
        for (key, text) in docs.sorted(by: { Self.documentOrder($0.key) < Self.documentOrder($1.key) }) where documents[key] != text {
            await applyDocument(key: key, text: text)
        }
        for key in removedDocs { await deleteDocument(key: key) }
        for key in Array(rollRoots.keys) where trustKeys[key] == nil { rollRoots[key] = nil }
        for (key, text) in trustKeys.sorted(by: { $0.key < $1.key }) { await trustChanged(key: key, text: text) }
        await pushRoots()
        health.withLockedValue { $0.appliedRevision = rev; $0.etcdRevision = max($0.etcdRevision, rev) }
    }

    private func apply(_ batch: EtcdClient.WatchBatch) async {
        var nodesChanged = false, remoteChanged = false
        var newNodes = etcdNodes, newRemote = etcdRemote
        var trustPuts: [EtcdClient.KeyValue] = []
        var trustDeletes: [String] = []
        for event in batch.events {
            switch Self.classify(event.key) {
            case .node(let name):
                nodesChanged = true
                if case .put(let kv) = event, let r: NodeRecord = decode(kv) { newNodes[name] = r } else { newNodes[name] = nil }
            case .endpoint(let owner, _):
                if owner == node.nodeName {
                    // Someone else changed (or etcd expired) our record: write ours again.
                    if case .delete = event { localDirty = true }
                    continue
                }
                remoteChanged = true
                if case .put(let kv) = event, let r: EndpointRecord = decode(kv) { newRemote[event.key] = r } else { newRemote[event.key] = nil }
            case .document:
                switch event {
                case .put(let kv): if documents[kv.key] != kv.string { await applyDocument(key: kv.key, text: kv.string) }
                case .delete(let key, _): if documents[key] != nil { await deleteDocument(key: key) }
                }
            case .trust:
                switch event {
                case .put(let kv): trustPuts.append(kv)
                case .delete(let key, _): trustDeletes.append(key)
                }
            case .other:
                if case .delete(let key, _) = event, key.hasPrefix(ClusterKeys.identityUsers) { await collectIfOrphaned(userKey: key) }
            }
        }
        revision = max(revision, batch.revision)
        etcdNodes = newNodes
        etcdRemote = newRemote
        if nodesChanged || remoteChanged { await applyView(initial: false) }
        // After the nodes: a request is signed only for a node registered by then.
        for kv in trustPuts { await trustChanged(key: kv.key, text: kv.string) }
        // After the puts: a roll's switch deletes the next root in the transaction that makes
        // it the cluster's, and the bundle must never be without it in between.
        var dropped = false
        for key in trustDeletes where rollRoots.removeValue(forKey: key) != nil { dropped = true }
        if dropped { await pushRoots() }
        if localDirty { await publishLocal() }
        health.withLockedValue { $0.appliedRevision = batch.revision; $0.etcdRevision = max($0.etcdRevision, batch.revision) }
    }

    // MARK: applying what others wrote

    /// Applies etcd's view, keeping what vanished from it while the quiet window after an
    /// outage lasts (and looking again when it closes).
    ///
    /// Nothing is withdrawn while etcd cannot be reached either: what the node last read is
    /// all it knows (a recheck that fell in a moment's loss of etcd, right after an outage,
    /// withdrew a node that was registering again at that moment; seen in CI). The window
    /// opens again when etcd answers.
    private func applyView(initial: Bool) async {
        var wantNodes = etcdNodes, wantRemote = etcdRemote
        let connected = health.withLockedValue { $0.connected }
        if Date() < quietUntil || !connected {
            var kept = 0
            for (k, v) in nodes where wantNodes[k] == nil { wantNodes[k] = v; kept += 1 }
            for (k, v) in remote where wantRemote[k] == nil { wantRemote[k] = v; kept += 1 }
            if kept > 0 {
                if kept != keptLogged {
                    logger.info("keeping records etcd no longer holds until the nodes had time to register again",
                                metadata: ["records": "\(kept)", "until": connected ? "\(quietUntil)" : "etcd answers"])
                }
                scheduleRecheck(in: connected ? quietUntil.timeIntervalSinceNow : 1)
            }
            keptLogged = kept
        } else {
            keptLogged = 0
        }
        if wantNodes != nodes || initial { await applyNodes(wantNodes, initial: initial) }
        await applyRemote(wantRemote, initial: initial)
    }

    private func scheduleRecheck(in seconds: TimeInterval) {
        guard !recheckScheduled else { return }
        recheckScheduled = true
        let wait = max(0, seconds) + 0.05
        Task {
            try? await Task.sleep(for: .seconds(wait))
            await self.recheck()
        }
    }

    private func recheck() async {
        recheckScheduled = false
        await applyView(initial: false)
    }

    /// Routes to every other node's pod CIDR via its node IP; routes of departed nodes go.
    private func applyNodes(_ new: [String: NodeRecord], initial: Bool = false) async {
        let old = nodes
        nodes = new
        let others = new.values.filter { $0.name != node.nodeName }
        let wanted = Dictionary(others.map { ($0.podCIDR, $0.ip) }, uniquingKeysWith: { a, _ in a })
        let had = Dictionary(old.values.filter { $0.name != node.nodeName }.map { ($0.podCIDR, $0.ip) }, uniquingKeysWith: { a, _ in a })
        health.withLockedValue { $0.nodes = new.values.sorted { $0.name < $1.name } }
        // A heartbeat changes no route: the kernel is asked only when one may have changed
        // (or the last attempt failed).
        guard initial || wanted != had || !routesProgrammed else { return }
        routesProgrammed = false
        do {
            try await ControlThread.run { () throws(MeshError) in
                let present = try Netlink.nodeRoutes()
                for (cidr, gw) in present where wanted[cidr] != gw { try? Netlink.deleteRoute(cidr) }
                for (cidr, gw) in wanted where !present.contains(where: { $0.0 == cidr && $0.1 == gw }) {
                    try Netlink.setNodeRoute(cidr, via: gw)
                }
            }
            routesProgrammed = true
        } catch {
            logger.error("cannot route to other nodes' pod CIDRs", metadata: ["error": "\(error.message)"])
        }
        for (name, r) in new where name != node.nodeName && old[name]?.podCIDR != r.podCIDR {
            logger.info("node joined", metadata: ["peer": "\(name)", "ip": "\(r.ip)", "pod_cidr": "\(r.podCIDR)"])
        }
        for name in old.keys where new[name] == nil && name != node.nodeName {
            logger.info("node left (lease ended or deregistered)", metadata: ["peer": "\(name)"])
        }
    }

    /// Other nodes' endpoints into policy (peers) and services (backends). A publish that
    /// fails is tried again with the next change or resync.
    private func applyRemote(_ new: [String: EndpointRecord], initial: Bool) async {
        guard new != remote || initial else { return }
        let records = Array(new.values)
        do {
            try await policy?.setRemoteEndpoints(records)
            await services?.setRemoteEndpoints(records)
            remote = new
            health.withLockedValue { $0.remoteEndpoints = new.count }
        } catch {
            logger.error("cannot publish the other nodes' endpoints", metadata: ["error": "\(error.message)"])
        }
    }

    /// A node that died lost its user keys with its lease: release the numbers only it
    /// used. (A live node releases its own when it stops using them.)
    private func collectIfOrphaned(userKey: String) async {
        let rest = userKey.dropFirst(ClusterKeys.identityUsers.count).split(separator: "/")
        // Not in the quiet window after an outage: every lease may have lapsed at once.
        guard rest.count == 2, let id = UInt32(rest[0]), etcdNodes[String(rest[1])] == nil, Date() >= quietUntil,
              health.withLockedValue({ $0.connected }) else { return }
        do {
            let (kvs, _) = try await etcd.range(ClusterKeys.identityID(id))
            guard let labels = kvs.first?.string else { return }
            if try await EtcdIdentityAllocator.collect(etcd, labels: labels, id: id) {
                logger.info("identity released: its last user node is gone", metadata: ["identity": "\(id)", "labels": "\(labels)"])
            }
        } catch {
            logger.debug("identity collection deferred", metadata: ["identity": "\(id)", "error": "\(error.message)"])
        }
    }

    // MARK: one root for the cluster

    private var ca: CertificateAuthority?
    private var workloads: WorkloadIdentities?
    private var clusterRoot: Certificate?
    /// The key of the intermediate this node asked the root's holder to sign.
    private var pendingIntermediateKey: P256.Signing.PrivateKey?

    /// Makes the node's certificates the cluster's: the first node to get here publishes
    /// its root as the cluster's (its key stays with it); every other node keeps a key of
    /// its own and asks, through etcd, for an intermediate signed by that root. An
    /// operator's root (--trust-root-cert on every node) needs none of this.
    public func establishTrust(ca: CertificateAuthority, workloads: WorkloadIdentities) async {
        self.ca = ca
        self.workloads = workloads
        do throws(MeshError) {
            let mine = try CertificateAuthority.pem(ca.root)
            let r = try await etcd.txn([.absent(ClusterKeys.trustRoot)], success: [.put(ClusterKeys.trustRoot, Array(mine.utf8), lease: 0)],
                                       failure: [.get(ClusterKeys.trustRoot)])
            if r.succeeded {
                clusterRoot = ca.root
                logger.info("this node's root is now the cluster's root; it signs the other nodes' intermediates")
                await pushRoots()
                return
            }
            defer { Task { await self.signWaitingRequests() } }
            guard let text = r.ranges.first?.first?.string, let root = try? Certificate(pemEncoded: text) else {
                throw MeshError(.internalError, "the cluster root in etcd does not parse")
            }
            clusterRoot = root
            await pushRoots()
            if root == ca.root && CertificateAuthority.signs(root, ca.currentIntermediate) { return }
            try await requestIntermediate()
        } catch {
            logger.error("cannot take part in the cluster's trust; workloads keep certificates of this node's own root",
                         metadata: ["error": "\(error.message)"])
        }
    }

    /// Asks the cluster root's holder, through etcd, to sign an intermediate for a key made
    /// here; the node's present certificates serve until the answer comes.
    private func requestIntermediate() async throws(MeshError) {
        guard let ca else { return }
        let (csr, key) = try ca.intermediateRequest()
        pendingIntermediateKey = key
        _ = try await etcd.txn([], success: [.delete(ClusterKeys.trustIntermediates + node.nodeName),
                                             .put(ClusterKeys.trustRequests + node.nodeName, Array(csr.utf8), lease: 0)])
        logger.info("asked the cluster root's holder to sign this node's intermediate; the node's present certificates serve until then")
    }

    /// Requests made while the root's holder was away.
    private func signWaitingRequests() async {
        guard let ca, ca.holdsRootKey, ca.root == clusterRoot else { return }
        guard let (kvs, _) = try? await etcd.range(ClusterKeys.trustRequests, prefix: true) else { return }
        for kv in kvs { await trustChanged(key: kv.key, text: kv.string) }
    }

    /// A request to sign (on the root's holder) or this node's signed intermediate.
    private func trustChanged(key: String, text: String) async {
        guard let ca, let clusterRoot else { return }
        if key == ClusterKeys.trustNextRoot || key == ClusterKeys.trustPreviousRoot {
            guard let root = try? Certificate(pemEncoded: text) else {
                logger.error("a root in etcd does not parse", metadata: ["key": "\(key)"])
                return
            }
            if rollRoots[key] != root {
                rollRoots[key] = root
                await pushRoots()
            }
        } else if key == ClusterKeys.trustRoot {
            // A roll moved the cluster to a new root: trust it, and move this node's
            // intermediate to it (the holder moved itself already).
            guard let root = try? Certificate(pemEncoded: text), root != clusterRoot else { return }
            self.clusterRoot = root
            logger.info("the cluster's root changed", metadata: ["root": "\(CertificateAuthority.fingerprint(root))"])
            await pushRoots()
            guard !(ca.holdsRootKey && ca.root == root) else { return }
            do { try await requestIntermediate() } catch {
                logger.error("cannot ask for an intermediate of the new root", metadata: ["error": "\(error.message)"])
            }
        } else if key.hasPrefix(ClusterKeys.trustRequests) {
            let requester = String(key.dropFirst(ClusterKeys.trustRequests.count))
            guard requester != node.nodeName, ca.holdsRootKey, ca.root == clusterRoot else { return }
            // Only registered nodes: whoever can write etcd is trusted as much as a node.
            guard etcdNodes[requester] != nil else {
                logger.warning("not signing an intermediate for a node that is not registered", metadata: ["requester": "\(requester)"])
                return
            }
            do throws(MeshError) {
                let signed = try ca.signIntermediate(requestPEM: text, node: requester)
                _ = try await etcd.txn([.value(key, Array(text.utf8))],
                                       success: [.put(ClusterKeys.trustIntermediates + requester, Array(signed.utf8), lease: 0), .delete(key)])
                logger.info("signed a node's intermediate with the cluster root", metadata: ["requester": "\(requester)"])
            } catch {
                logger.error("cannot sign a node's intermediate", metadata: ["requester": "\(requester)", "error": "\(error.message)"])
            }
        } else if key == ClusterKeys.trustIntermediates + node.nodeName, let pending = pendingIntermediateKey {
            do throws(MeshError) {
                try ca.adopt(root: clusterRoot, intermediatePEM: text, key: pending)
                pendingIntermediateKey = nil
                logger.info("this node's intermediate is now signed by the cluster root; re-issuing workload certificates")
                await workloads?.sync()
                await pushRoots()
            } catch {
                logger.error("the intermediate offered does not fit this node", metadata: ["error": "\(error.message)"])
            }
        }
    }

    // MARK: rolling the cluster's root

    /// The roots a roll has this node trust besides the cluster's: etcd key → root.
    private var rollRoots: [String: Certificate] = [:]
    private var lastAck: TrustAck?
    private var roll: TrustRollView?

    /// What a node reports of its trust after each change, as `trust/acks/<node>`.
    struct TrustAck: Codable, Equatable {
        /// Fingerprints of the roots its bundle holds.
        var bundle: [String]
        /// The root its intermediate (and so its workload certificates) chains to.
        var root: String
    }

    /// Trusts the cluster's root and a roll's roots besides the node's own, then tells the
    /// others (once the bundle is written and the proxy told of it).
    private func pushRoots() async {
        guard let ca, let workloads, let clusterRoot else { return }
        var roots = [clusterRoot]
        for key in [ClusterKeys.trustNextRoot, ClusterKeys.trustPreviousRoot] { if let r = rollRoots[key] { roots.append(r) } }
        let bundle = await workloads.setExtraRoots(roots)
        let ack = TrustAck(bundle: bundle.map(CertificateAuthority.fingerprint), root: CertificateAuthority.fingerprint(ca.root))
        guard ack != lastAck, let data = try? JSONEncoder().encode(ack) else { return }
        do {
            _ = try await etcd.put(ClusterKeys.trustAcks + node.nodeName, Array(data), lease: 0)
            lastAck = ack
        } catch {
            logger.warning("cannot report this node's trust bundle", metadata: ["error": "\(error.message)"])
        }
    }

    public func trustStatus() async -> TrustRollView? { roll }

    /// Starts rolling the cluster's root to a new one (on the node that holds the root's
    /// key). Returns at once; `trustStatus()` follows it. The steps, each waiting for every
    /// node's report before the next: the new root joins every bundle; this node moves to
    /// it and the others' intermediates are signed by it, every workload certificate
    /// re-issued; both stay trusted for `overlap` seconds; the old root leaves every bundle.
    /// No step leaves a pair of nodes that cannot verify each other.
    public func startRootRoll(overlap: TimeInterval) throws(MeshError) -> TrustRollView {
        guard let ca, let clusterRoot else {
            throw MeshError(.unavailable, "this node has not joined the cluster's trust yet", hint: "try again once meshctl status shows etcd connected")
        }
        guard ca.settings.rootCertFile == nil else {
            throw MeshError(.invalidArgument, "the root is the operator's (--trust-root-cert): SwiftMesh does not hold its key",
                            hint: "roll it by starting the nodes with the new root's files")
        }
        guard ca.holdsRootKey, ca.root == clusterRoot else {
            throw MeshError(.invalidArgument, "this node does not hold the cluster root's key",
                            hint: "run it on the node whose `meshctl trust status` says it holds the root's key")
        }
        guard overlap.isFinite, (0...86400).contains(overlap) else {
            throw MeshError.invalid("overlap \(overlap) must be 0 to 86400 seconds")
        }
        if let roll, !roll.finished { throw MeshError(.alreadyExists, "a root roll is already under way (\(roll.phase.rawValue))") }
        let started = TrustRollView(phase: .adding, startedAt: Date(), oldRoot: CertificateAuthority.fingerprint(clusterRoot),
                                    overlapSeconds: overlap)
        roll = started
        Task { await self.runRootRoll(ca: ca, old: clusterRoot, overlap: overlap) }
        return started
    }

    private func rollStep(_ phase: TrustRollView.Phase, _ done: String) {
        roll?.steps.append("\(Date().formatted(.iso8601)) \(done)")
        roll?.phase = phase
        logger.info("root roll", metadata: ["phase": "\(phase.rawValue)", "step": "\(done)"])
    }

    private func runRootRoll(ca: CertificateAuthority, old: Certificate, overlap: TimeInterval) async {
        let oldPEM: String, oldFP = CertificateAuthority.fingerprint(old)
        var switched = false
        do throws(MeshError) {
            oldPEM = try CertificateAuthority.pem(old)
            let next = try CertificateAuthority.makeRoot()
            let newPEM = try CertificateAuthority.pem(next.certificate), newFP = CertificateAuthority.fingerprint(next.certificate)
            roll?.newRoot = newFP
            _ = try await etcd.put(ClusterKeys.trustNextRoot, Array(newPEM.utf8))
            try await waitForEveryNode("trust the new root", timeout: 30) { $0.bundle.contains(newFP) }
            // Each proxy reads its bundle again at its next handshake; give the last told a moment.
            try? await Task.sleep(for: .seconds(1))
            rollStep(.switching, "every node trusts the new root \(newFP)")

            try ca.switchRoot(to: next)
            switched = true
            clusterRoot = next.certificate
            rollRoots[ClusterKeys.trustPreviousRoot] = old
            rollRoots[ClusterKeys.trustNextRoot] = nil
            _ = try await etcd.txn([], success: [.put(ClusterKeys.trustRoot, Array(newPEM.utf8), lease: 0),
                                                 .put(ClusterKeys.trustPreviousRoot, Array(oldPEM.utf8), lease: 0),
                                                 .delete(ClusterKeys.trustNextRoot)])
            await workloads?.sync()
            await pushRoots()
            await signWaitingRequests()
            try await waitForEveryNode("move to the new root", timeout: 60) { $0.root == newFP }
            rollStep(.overlap, "every node's certificates chain to the new root; the old one stays trusted for \(Int(overlap)) s")

            try? await Task.sleep(for: .seconds(overlap))
            rollStep(.dropping, "overlap over: dropping the old root \(oldFP)")
            rollRoots[ClusterKeys.trustPreviousRoot] = nil
            _ = try await etcd.delete(ClusterKeys.trustPreviousRoot)
            await pushRoots()
            try await waitForEveryNode("drop the old root", timeout: 30) { !$0.bundle.contains(oldFP) }
            rollStep(.done, "the cluster trusts only the new root \(newFP)")
            roll?.finishedAt = Date()
        } catch {
            if !switched {
                // Nothing moved yet: take the new root back out of the bundles.
                rollRoots[ClusterKeys.trustNextRoot] = nil
                _ = try? await etcd.delete(ClusterKeys.trustNextRoot)
                await pushRoots()
            }
            roll?.error = error.message
            rollStep(.failed, "stopped: \(error.message)")
            roll?.finishedAt = Date()
        }
    }

    /// Waits until every registered node's report satisfies `done`.
    private func waitForEveryNode(_ what: String, timeout: TimeInterval, _ done: (TrustAck) -> Bool) async throws(MeshError) {
        let deadline = Date().addingTimeInterval(timeout)
        var behind: [String] = []
        while Date() < deadline {
            let (kvs, _) = try await etcd.range(ClusterKeys.trustAcks, prefix: true)
            var acks: [String: TrustAck] = [:]
            for kv in kvs {
                if let a = try? JSONDecoder().decode(TrustAck.self, from: Data(kv.string.utf8)) {
                    acks[String(kv.key.dropFirst(ClusterKeys.trustAcks.count))] = a
                }
            }
            behind = Set(etcdNodes.keys).union([node.nodeName]).filter { acks[$0].map(done) != true }.sorted()
            if behind.isEmpty { return }
            try? await Task.sleep(for: .milliseconds(200))
        }
        throw MeshError(.unavailable, "nodes \(behind.joined(separator: ", ")) did not \(what) within \(Int(timeout)) s")
    }

    // MARK: documents

    /// Namespaces first, then services, routes and policies: each may refer to the ones before.
    static func documentOrder(_ key: String) -> (Int, String) {
        let kind = key.dropFirst(ClusterKeys.docs.count).split(separator: "/").first.map(String.init) ?? ""
        return (["Namespace": 0, "Service": 1, "HTTPRoute": 2, "Gateway": 2, "TLSRoute": 2][kind] ?? 3, key)
    }

    private func applyDocument(key: String, text: String) async {
        guard let policy, let services else { return }
        documents[key] = text
        do {
            let result = try await ServiceRoutes.apply(PolicyApplyRequest(yaml: text, source: "cluster \(key)", dryRun: false),
                                                       policy: policy, services: services)
            logger.info("applied a document from the cluster", metadata: ["document": "\(key)", "changes": "\(result.changes)"])
        } catch {
            logger.error("a document from the cluster does not apply on this node", metadata: ["document": "\(key)", "error": "\(error)"])
        }
    }

    private func deleteDocument(key: String) async {
        guard let policy, let services else { return }
        documents[key] = nil
        let parts = key.dropFirst(ClusterKeys.docs.count).split(separator: "/", maxSplits: 1).map(String.init)
        guard parts.count == 2 else { return }
        do {
            switch parts[0] {
            case "Service": _ = try await services.deleteService(parts[1])
            case "HTTPRoute": _ = try await services.deleteRoute(parts[1])
            case "Gateway", "TLSRoute": _ = try await services.deleteGatewayDocument(kind: parts[0], parts[1])
            case "Namespace": _ = try await services.deleteNamespace(parts[1])
            default: _ = try await policy.delete(parts[1])
            }
            logger.info("deleted a document the cluster deleted", metadata: ["document": "\(key)"])
        } catch let error where error.code == .notFound {
            // Deleted here first: nothing to do.
        } catch {
            logger.error("cannot delete a document the cluster deleted", metadata: ["document": "\(key)", "error": "\(error.message)"])
        }
    }

    /// Refuses a change of desired state while etcd is away: the cluster's state is etcd's,
    /// and a change only this node knew would be undone by the next resync.
    public nonisolated func requireStore(_ what: String) throws(MeshError) {
        guard health.withLockedValue({ $0.connected }) else {
            throw MeshError(.unavailable, "cannot \(what): the cluster's store (etcd) is unreachable",
                            hint: "the node keeps enforcing what it knows; try again once `meshctl status` shows etcd connected")
        }
    }

    /// After a local apply: the documents become the cluster's (one transaction), each as
    /// its own YAML; a Service carries the cluster IP this node chose, so every node
    /// serves it at the same address.
    public func documentsApplied(yaml: String, clusterIPs: [String: String]) async throws(MeshError) {
        let trees = try YAMLTree.documents(yaml, source: "apply").filter { $0 != .null }
        var ops: [EtcdClient.Op] = []
        for var tree in trees {
            guard let kind = tree["kind"].flatMap({ if case .string(let s) = $0 { s } else { nil } }) else { continue }
            let name = tree["metadata"]?["name"].flatMap { if case .string(let s) = $0 { s } else { nil } } ?? ""
            let ns = tree["metadata"]?["namespace"].flatMap { if case .string(let s) = $0 { s } else { nil } } ?? "default"
            let key = kind == "Namespace" ? name : "\(ns)/\(name)"
            if kind == "Service", let ip = clusterIPs[key] { tree = Self.withClusterIP(tree, ip) }
            let text = YAMLTree.text(tree)
            // Policies of every kind share one name space (namespace/name), as on a node.
            let etcdKey = ClusterKeys.doc(kind: ["Namespace", "Service", "HTTPRoute", "Gateway", "TLSRoute"].contains(kind) ? kind : "policy", key: key)
            documents[etcdKey] = text
            ops.append(.put(etcdKey, Array(text.utf8), lease: 0))
        }
        guard !ops.isEmpty else { return }
        _ = try await etcd.txn([], success: ops)
    }

    public func documentDeleted(kind: String, key: String) async throws(MeshError) {
        let etcdKey = ClusterKeys.doc(kind: kind, key: key)
        documents[etcdKey] = nil
        try await etcd.delete(etcdKey)
    }

    static func withClusterIP(_ tree: PolicyTree, _ ip: String) -> PolicyTree {
        guard case .map(var pairs) = tree, let i = pairs.firstIndex(where: { $0.0 == "spec" }), case .map(var spec) = pairs[i].1 else { return tree }
        if let j = spec.firstIndex(where: { $0.0 == "clusterIP" }) { spec[j].1 = .string(ip) } else { spec.append(("clusterIP", .string(ip))) }
        pairs[i].1 = .map(spec)
        return .map(pairs)
    }

    // MARK: this node's endpoints

    /// Called after any change of this node's endpoints or their readiness.
    public func localEndpointsChanged() async {
        localDirty = true
        await publishLocal()
    }

    /// Writes this node's endpoints as they are now (changed records only; vanished ones
    /// deleted). While etcd is away the work waits for the next contact.
    private func publishLocal() async {
        guard !publishing, let policy, let services else { return }
        publishing = true
        defer { publishing = false }
        while localDirty {
            localDirty = false
            do throws(MeshError) {
                let identities = try await policy.localIdentities()
                let readiness = try await services.readiness()
                let tunnelled = await policy.tunnelledEndpoints()
                var desired: [String: EndpointRecord] = [:]
                for ep in try store.endpoints() {
                    guard let (labels, identity) = identities[ep.name] else { continue }
                    let spiffeID = ProxyTunnelConfig.workloadSPIFFEID(trustDomain: node.trust.trustDomain, namespace: ep.labels.namespace,
                                                                      serviceAccount: ep.serviceAccount)
                    desired[ep.name] = EndpointRecord(name: ep.name, node: node.nodeName, ip: ep.ipv4, labels: labels, identity: identity,
                                                      ports: ep.ports, ready: readiness[ep.name] ?? true, spiffeID: spiffeID,
                                                      nodeIP: settings.nodeIP, tunnel: tunnelled.contains(ep.name))
                }
                let lease = leaseID.withLockedValue { $0 }
                var ops: [EtcdClient.Op] = []
                for (name, r) in desired where written[name] != r {
                    ops.append(.put(ClusterKeys.endpoint(node: node.nodeName, name: name), Self.encode(r), lease: lease))
                }
                for name in written.keys where desired[name] == nil {
                    ops.append(.delete(ClusterKeys.endpoint(node: node.nodeName, name: name)))
                }
                // etcd takes at most 128 operations a transaction by default.
                for chunk in stride(from: 0, to: ops.count, by: 100) {
                    _ = try await etcd.txn([], success: Array(ops[chunk..<min(chunk + 100, ops.count)]))
                }
                written = desired
                if !ops.isEmpty { logger.debug("endpoints written to the cluster", metadata: ["operations": "\(ops.count)"]) }
            } catch {
                localDirty = true
                setHealth(error: error.message)
                return
            }
        }
    }

    // MARK: views

    public nonisolated var healthNow: Health { health.withLockedValue { $0 } }

    public nonisolated var status: ClusterStatus {
        let h = healthNow
        return ClusterStatus(etcd: settings.etcd, connected: h.connected, lastError: h.lastError, lastContact: h.lastContact,
                             nodeIP: settings.nodeIP.description, nodes: h.nodes.count, remoteEndpoints: h.remoteEndpoints,
                             leaseTTL: settings.leaseTTL, etcdRevision: h.etcdRevision, appliedRevision: h.appliedRevision,
                             resyncs: h.resyncs, leasesLost: h.leasesLost)
    }

    /// The nodes as this node last read them, with the endpoints each holds.
    public func nodeViews() -> [NodeView] {
        let counts = endpointCounts()
        return nodes.values.sorted { $0.name < $1.name }.map {
            NodeView(name: $0.name, ip: $0.ip.description, podCIDR: $0.podCIDR.description, endpoints: counts[$0.name] ?? 0,
                     heartbeat: $0.heartbeat, version: $0.version, local: $0.name == node.nodeName)
        }
    }

    public func endpointCounts() -> [String: Int] {
        var out: [String: Int] = [:]
        for r in remote.values { out[r.node, default: 0] += 1 }
        out[node.nodeName] = written.count
        return out
    }

    // MARK: helpers

    private func markContact() {
        if !health.withLockedValue({ $0.connected }), health.withLockedValue({ $0.lastError != nil }) {
            // Back after an outage: the nodes' leases may all have lapsed; give them a
            // lease's time (and a margin for their next renewal) to register again.
            quietUntil = Date().addingTimeInterval(Double(settings.leaseTTL) + 2)
        }
        health.withLockedValue {
            if !$0.connected { logger.info("etcd connected", metadata: ["etcd": "\(settings.etcd.joined(separator: ","))"]) }
            $0.connected = true
            $0.lastError = nil
            $0.lastContact = Date()
        }
    }

    private func setHealth(error: String) {
        health.withLockedValue {
            if $0.connected { logger.warning("etcd unreachable; enforcing what the node last knew", metadata: ["error": "\(error)"]) }
            $0.connected = false
            $0.lastError = error
        }
    }

    enum KeyKind {
        case node(String)
        case endpoint(owner: String, name: String)
        case document
        case trust
        case other
    }

    static func classify(_ key: String) -> KeyKind {
        if key.hasPrefix(ClusterKeys.nodes) { return .node(String(key.dropFirst(ClusterKeys.nodes.count))) }
        if key.hasPrefix(ClusterKeys.endpoints) {
            let parts = key.dropFirst(ClusterKeys.endpoints.count).split(separator: "/", maxSplits: 1)
            if parts.count == 2 { return .endpoint(owner: String(parts[0]), name: String(parts[1])) }
        }
        if key.hasPrefix(ClusterKeys.docs) { return .document }
        if key.hasPrefix(ClusterKeys.trust) { return .trust }
        return .other
    }

    static func encode<T: Encodable>(_ value: T) -> [UInt8] { Array((try? JSONEncoder.cluster.encode(value)) ?? Data()) }

    private func decode<T: Decodable>(_ kv: EtcdClient.KeyValue) -> T? {
        do { return try JSONDecoder.cluster.decode(T.self, from: Data(kv.value)) } catch {
            logger.warning("ignoring a cluster record that does not decode", metadata: ["key": "\(kv.key)", "error": "\(error)"])
            return nil
        }
    }
}
