import CBPF
import Foundation
import Glibc

/// Policy in the kernel: identities in the ipcache, verdicts in the policy map, each in
/// two revision slots flipped atomically (see mesh_abi.h).
extension MeshDatapath {
    /// A policy entry's action (enum mesh_policy_action).
    public enum Action: String, Sendable, Codable {
        case allow, deny

        var abi: UInt8 { UInt8(self == .allow ? MESH_ACTION_ALLOW.rawValue : MESH_ACTION_DENY.rawValue) }

        init?(abi: UInt8) {
            switch UInt32(abi) {
            case MESH_ACTION_ALLOW.rawValue: self = .allow
            case MESH_ACTION_DENY.rawValue: self = .deny
            default: return nil
            }
        }
    }

    /// Why a packet was dropped (enum mesh_drop_reason); `label` is each one's name in
    /// metrics and in the monitor.
    public enum DropReason: String, Sendable, CaseIterable {
        case none, policyDeny, policyDefaultDeny, unsupportedL3, malformedIPv4, spoofedSource, proxyUnavailable, authRequired

        public var label: String {
            switch self {
            case .none: "none"
            case .policyDeny: "policy_deny"
            case .policyDefaultDeny: "policy_default_deny"
            case .unsupportedL3: "unsupported_l3"
            case .malformedIPv4: "malformed_ipv4"
            case .spoofedSource: "spoofed_source"
            case .proxyUnavailable: "proxy_unavailable"
            case .authRequired: "auth_required"
            }
        }

        var abi: mesh_drop_reason {
            switch self {
            case .none: MESH_DROP_NONE
            case .policyDeny: MESH_DROP_POLICY_DENY
            case .policyDefaultDeny: MESH_DROP_POLICY_DEFAULT_DENY
            case .unsupportedL3: MESH_DROP_UNSUPPORTED_L3
            case .malformedIPv4: MESH_DROP_MALFORMED_IPV4
            case .spoofedSource: MESH_DROP_SPOOFED_SOURCE
            case .proxyUnavailable: MESH_DROP_PROXY_UNAVAILABLE
            case .authRequired: MESH_DROP_AUTH_REQUIRED
            }
        }

        /// nil for a value this meshd does not know.
        init?(abi: UInt8) {
            guard let r = Self.allCases.first(where: { $0.abi.rawValue == UInt32(abi) }) else { return nil }
            self = r
        }

        /// Every value the header defines (below MESH_DROP_MAX); DatapathTests checks that
        /// each has a case here.
        static var headerValues: Range<UInt32> { 0..<MESH_DROP_MAX.rawValue }
    }

    /// Entries one revision may use in each map: the maps hold two slots.
    public static let policyCapacityPerSlot = UInt32(MESH_POLICY_ENTRIES / 2)
    public static let ipcacheCapacityPerSlot = UInt32(MESH_IPCACHE_ENTRIES / 2)

    public static let anyIdentity = UInt32(MESH_ID_ANY.rawValue)
    public static let hostIdentity = UInt32(MESH_ID_HOST.rawValue)
    public static let worldIdentity = UInt32(MESH_ID_WORLD.rawValue)

    /// Address prefix → identity of the peer.
    public struct IPCacheEntry: Sendable, Hashable {
        public var address: UInt32 // host order
        public var prefixLength: Int
        public var identity: UInt32
        public var endpointID: UInt32
        /// Another node's endpoint reached only through an mTLS tunnel (MESH_IPCACHE_TUNNEL).
        public var tunnel: Bool
        public init(address: UInt32, prefixLength: Int, identity: UInt32, endpointID: UInt32 = 0, tunnel: Bool = false) {
            self.address = address
            self.prefixLength = prefixLength
            self.identity = identity
            self.endpointID = endpointID
            self.tunnel = tunnel
        }
    }

    /// One policy map entry: for `endpointID` in `direction`, peer `identity` (0: any),
    /// protocol `proto` (0: any protocol, every port) and the port block
    /// `portPrefix/portPrefixLength` (16: one port, 0: every port).
    public struct PolicyEntry: Sendable, Hashable {
        public var endpointID: UInt32
        public var direction: Direction
        public var identity: UInt32
        public var proto: UInt8
        public var portPrefix: UInt16
        public var portPrefixLength: Int
        public var action: Action
        public var ruleID: UInt32
        public var policyID: UInt32
        /// Allowed through the L7 proxy (MESH_POLICY_L7).
        public var l7: Bool
        /// Allowed for a proven peer only (MESH_POLICY_AUTH).
        public var auth: Bool
        public init(endpointID: UInt32, direction: Direction, identity: UInt32, proto: UInt8, portPrefix: UInt16,
                    portPrefixLength: Int, action: Action, ruleID: UInt32, policyID: UInt32, l7: Bool = false,
                    auth: Bool = false) {
            self.l7 = l7
            self.auth = auth
            self.endpointID = endpointID
            self.direction = direction
            self.identity = identity
            self.proto = proto
            self.portPrefix = portPrefix
            self.portPrefixLength = portPrefixLength
            self.action = action
            self.ruleID = ruleID
            self.policyID = policyID
        }
    }

    /// Whether an endpoint is default-deny per direction, and the rule id that explains it.
    public struct Enforcement: Sendable, Hashable {
        public var endpointID: UInt32
        public var ingress: Bool
        public var egress: Bool
        public var ingressDefaultRule: UInt32
        public var egressDefaultRule: UInt32
        public init(endpointID: UInt32, ingress: Bool, egress: Bool, ingressDefaultRule: UInt32, egressDefaultRule: UInt32) {
            self.endpointID = endpointID
            self.ingress = ingress
            self.egress = egress
            self.ingressDefaultRule = ingressDefaultRule
            self.egressDefaultRule = egressDefaultRule
        }
    }

    /// The contents of one revision slot as raw key → value bytes, per map, the keys with
    /// their slot byte zero: one revision's contents serve either slot, and `write` puts
    /// the slot in as it writes.
    struct SlotContents {
        var ipcache: [RawEntry: RawEntry] = [:]
        var policy: [RawEntry: RawEntry] = [:]
        var enforcement: [RawEntry: RawEntry] = [:]
    }

    /// A revision map's key or value (at most 24 bytes, zero-padded) as three words: a
    /// publish diffs tens of thousands of them, and hashing these costs a fraction of
    /// hashing byte arrays, with no allocation each.
    struct RawEntry: Hashable {
        var w0: UInt64 = 0, w1: UInt64 = 0, w2: UInt64 = 0

        init<T>(of value: T) {
            precondition(MemoryLayout<T>.size <= 24, "a revision map's key or value outgrew RawEntry")
            withUnsafeBytes(of: value) { src in
                withUnsafeMutableBytes(of: &self) { $0.copyMemory(from: src) }
            }
        }

        init(bytes: [UInt8]) {
            precondition(bytes.count <= 24, "a revision map's key or value outgrew RawEntry")
            bytes.withUnsafeBytes { src in
                withUnsafeMutableBytes(of: &self) { $0.copyMemory(from: src) }
            }
        }

        func bytes(count: Int) -> [UInt8] {
            withUnsafeBytes(of: self) { Array($0.prefix(count)) }
        }

        /// One word into the hasher, not three: the words mixed by odd multipliers first.
        func hash(into hasher: inout Hasher) {
            hasher.combine(w0 &* 0x9E37_79B9_7F4A_7C15 ^ w1 &* 0xC2B2_AE3D_27D4_EB4F ^ w2)
        }
    }

    public struct PolicyState: Sendable, Equatable {
        public var activeSlot: Int
        public var revision: UInt32
    }

    /// The slot a revision lives in (mesh_abi.h, MESH_SLOT_OF).
    public static func slot(of revision: UInt32) -> Int { Int(cbpf_slot_of(revision)) }

    /// The revision that follows `r`: one more, stepping over the one number no publish
    /// makes (odd, like the 1 it becomes, so the slots still alternate).
    public static func revision(after r: UInt32) -> UInt32 {
        let next = r &+ 1
        return next == uncheckedRevision ? 1 : next
    }

    /// A revision no publish makes: the programs read it as "not checked yet".
    public static let uncheckedRevision: UInt32 = MESH_REVISION_UNCHECKED

    public func policyState() throws -> PolicyState {
        let revision = cbpf_load_u32(revisionWord)
        return PolicyState(activeSlot: Self.slot(of: revision), revision: revision)
    }

    /// What a publish wrote, for logs and metrics.
    public struct PublishStats: Sendable {
        public var slot: Int
        public var revision: UInt32
        public var written: Int
        public var deleted: Int
        /// How long the publish waited for the grace period after the previous flip.
        public var graceWait: Duration
    }

    /// Writes a whole new policy revision into the inactive slot (only what differs from
    /// that slot's previous revision), then makes it active with one 32-bit store.
    /// Packets see the old revision or the new one, never a mix:
    /// - `revision` must be the one in force plus one: it lives in the other slot.
    /// - Before the slot is touched, an RCU grace period after the last flip: a program
    ///   that read the slot's old revision has finished by then. The wait starts at the
    ///   flip, in the background, so only a publish that follows the last one within a
    ///   grace period (about 15 ms here) waits for it.
    /// - The slot's leaving entries are deleted before the new ones are written, so the
    ///   maps never hold more than the active revision and the new one.
    /// - A failure part-way leaves the active revision in force; the slot is read back from
    ///   the kernel, so the next publish starts from what the kernel really holds.
    /// - After the flip, once its grace period has passed, the slot just retired is brought
    ///   up to the new revision in the background (`catchUp`): so the next publish finds it
    ///   one change behind, and writes only the entries that change (a relabel, one
    ///   endpoint), not those of the last two changes.
    public func publish(revision: UInt32, ipcache newIPCache: [IPCacheEntry], policy newPolicy: [PolicyEntry],
                        enforcement newEnforcement: [Enforcement]) throws -> PublishStats {
        try publishLock.withLock {
            try publishLocked(revision: revision, next: { _ in contents(ipcache: newIPCache, policy: newPolicy, enforcement: newEnforcement) })
        }
    }

    /// Must hold the publish lock. Writes `next(state in force)` into the inactive slot and
    /// flips to it (see `publish`); with `changes` from the revision in force, a slot that
    /// holds that revision is given only them, now and when the other one catches up.
    private func publishLocked(revision: UInt32, changes: RawChanges? = nil, next: (PolicyState) -> SlotContents) throws -> PublishStats {
        let state = try policyState()
        let target = Self.slot(of: revision)
        guard revision == Self.revision(after: state.revision), target != state.activeSlot else {
            throw DatapathError("publish policy revision \(revision): revision \(state.revision) is in force, and the next one must be \(Self.revision(after: state.revision)) (it lives in the other slot)", errno: EINVAL)
        }
        let contents = next(state)
        // The slot was active until the last flip: wait until no program still reads it.
        let waitStart = ContinuousClock.now
        gracePeriod.waitForLastFlip()
        let graceWait = ContinuousClock.now - waitStart
        let (written, deleted) = if let changes, slotRevision[target] == state.revision {
            try write(changes, contents, into: target, revision: revision, inForce: state.revision)
        } else {
            try write(contents, into: target, revision: revision, inForce: state.revision)
        }
        // The flip: one atomic 32-bit store into the map's memory.
        cbpf_store_u32(revisionWord, revision)
        gracePeriod.flipped()
        let from = state.revision
        catchUpQueue.async { [self] in catchUp(slot: 1 - target, to: contents, revision: revision, changes: changes.map { (from, $0) }) }
        return PublishStats(slot: target, revision: revision, written: written, deleted: deleted, graceWait: graceWait)
    }

    /// A revision given as what changes from the one in force: entries new or changed,
    /// and entries that go (only their keys count). What a policy engine that keeps the
    /// revision in force passes, so that a relabel among ten thousand entries costs a
    /// few writes and no pass over the rest.
    public struct PolicyChanges: Sendable {
        public var ipcache: [IPCacheEntry] = []
        public var ipcacheGone: [IPCacheEntry] = []
        public var policy: [PolicyEntry] = []
        public var policyGone: [PolicyEntry] = []
        public var enforcement: [Enforcement] = []
        public var enforcementGone: [Enforcement] = []
        public init() {}

        public var isEmpty: Bool {
            ipcache.isEmpty && ipcacheGone.isEmpty && policy.isEmpty && policyGone.isEmpty && enforcement.isEmpty && enforcementGone.isEmpty
        }
    }

    /// Changes as raw keys and values per map (nil: the key goes), keyed for slot 0.
    struct RawChanges {
        var ipcache: [(RawEntry, RawEntry?)] = []
        var policy: [(RawEntry, RawEntry?)] = []
        var enforcement: [(RawEntry, RawEntry?)] = []

        func apply(to c: inout SlotContents) {
            for (k, v) in ipcache { c.ipcache[k] = v }
            for (k, v) in policy { c.policy[k] = v }
            for (k, v) in enforcement { c.enforcement[k] = v }
        }
    }

    func raw(_ changes: PolicyChanges) -> RawChanges {
        var r = RawChanges()
        r.ipcache = changes.ipcacheGone.map { (rawIPCache($0).key, nil) } + changes.ipcache.map { let e = rawIPCache($0); return (e.key, e.value) }
        r.policy = changes.policyGone.map { (rawPolicy($0).key, nil) } + changes.policy.map { let e = rawPolicy($0); return (e.key, e.value) }
        r.enforcement = changes.enforcementGone.map { (rawEnforcement($0).key, nil) }
            + changes.enforcement.map { let e = rawEnforcement($0); return (e.key, e.value) }
        return r
    }

    /// Publishes the revision in force with `changes` as the next one, with the guarantees
    /// of the full `publish`. `from` must be the revision in force (the one the changes
    /// were computed against). Into a slot that holds `from` (the retired slot once it
    /// has caught up), only the changes are written; otherwise the slot is diffed whole.
    public func publish(revision: UInt32, from: UInt32, changes: PolicyChanges) throws -> PublishStats {
        try publishLock.withLock {
            let inForce = try policyState().revision
            guard from == inForce else {
                throw DatapathError("publish policy revision \(revision) as changes from revision \(from): revision \(inForce) is in force", errno: EINVAL)
            }
            let rawChanges = raw(changes)
            return try publishLocked(revision: revision, changes: rawChanges) { state in
                var next = slots[state.activeSlot]
                rawChanges.apply(to: &next)
                return next
            }
        }
    }

    /// Brings the retired `slot` up to `revision`'s entries, once no program reads it any
    /// more, unless another publish came first (it wrote the slot itself). With the
    /// changes that made `revision` and the revision they are from, a slot that holds it
    /// is given only them.
    func catchUp(slot: Int, to contents: SlotContents, revision: UInt32, changes: (from: UInt32, RawChanges)? = nil) {
        gracePeriod.waitForLastFlip()
        publishLock.withLock {
            guard (try? policyState().revision) == revision else { return }
            // On failure write() has re-read the slots; the next publish diffs against the kernel.
            if let changes, slotRevision[slot] == changes.from {
                _ = try? write(changes.1, contents, into: slot, revision: revision, inForce: revision)
            } else {
                _ = try? write(contents, into: slot, revision: revision, inForce: revision)
            }
        }
    }

    /// Waits until the retired slot has caught up with the revision in force (tests, and
    /// anyone who counts what the next publish will write).
    public func settle() {
        catchUpQueue.sync {}
    }

    /// A revision's raw entries, keyed for slot 0 (see SlotContents).
    func contents(ipcache newIPCache: [IPCacheEntry], policy newPolicy: [PolicyEntry],
                  enforcement newEnforcement: [Enforcement]) -> SlotContents {
        var next = SlotContents()
        next.ipcache.reserveCapacity(newIPCache.count)
        next.policy.reserveCapacity(newPolicy.count)
        next.enforcement.reserveCapacity(newEnforcement.count)
        for e in newIPCache {
            let (k, v) = rawIPCache(e)
            next.ipcache[k] = v
        }
        for e in newPolicy {
            let (k, v) = rawPolicy(e)
            next.policy[k] = v
        }
        for e in newEnforcement {
            let (k, v) = rawEnforcement(e)
            next.enforcement[k] = v
        }
        return next
    }

    func rawIPCache(_ e: IPCacheEntry) -> (key: RawEntry, value: RawEntry) {
        (RawEntry(of: ipcacheKey(e, slot: 0)),
         RawEntry(of: mesh_ipcache_value(identity: e.identity, endpoint_id: e.endpointID, flags: e.tunnel ? MESH_IPCACHE_TUNNEL.rawValue : 0)))
    }

    func rawPolicy(_ e: PolicyEntry) -> (key: RawEntry, value: RawEntry) {
        var v = mesh_policy_value()
        v.action = e.action.abi
        v.rule_id = e.ruleID
        v.policy_id = e.policyID
        v.flags = (e.l7 ? UInt8(MESH_POLICY_L7.rawValue) : 0) | (e.auth ? UInt8(MESH_POLICY_AUTH.rawValue) : 0)
        return (RawEntry(of: policyKey(e, slot: 0)), RawEntry(of: v))
    }

    func rawEnforcement(_ e: Enforcement) -> (key: RawEntry, value: RawEntry) {
        var k = mesh_policy_ep_key()
        k.endpoint_id = e.endpointID
        var v = mesh_policy_ep_value()
        withUnsafeMutableBytes(of: &v.enforce) { raw in
            raw[Int(MESH_DIR_INGRESS.rawValue)] = e.ingress ? 1 : 0
            raw[Int(MESH_DIR_EGRESS.rawValue)] = e.egress ? 1 : 0
        }
        withUnsafeMutableBytes(of: &v.default_rule_id) { raw in
            raw.storeBytes(of: e.ingressDefaultRule, toByteOffset: 4 * Int(MESH_DIR_INGRESS.rawValue), as: UInt32.self)
            raw.storeBytes(of: e.egressDefaultRule, toByteOffset: 4 * Int(MESH_DIR_EGRESS.rawValue), as: UInt32.self)
        }
        return (RawEntry(of: k), RawEntry(of: v))
    }

    /// Makes `slot` hold `next`: deletes what leaves, then writes what is new or changed.
    /// Called under the publish lock, with no program reading the slot.
    func write(_ next: SlotContents, into slot: Int, revision: UInt32, inForce: UInt32) throws -> (written: Int, deleted: Int) {
        let old = slots[slot]
        var changes = RawChanges()
        for (k, _) in old.ipcache where next.ipcache[k] == nil { changes.ipcache.append((k, nil)) }
        for (k, _) in old.policy where next.policy[k] == nil { changes.policy.append((k, nil)) }
        for (k, _) in old.enforcement where next.enforcement[k] == nil { changes.enforcement.append((k, nil)) }
        for (k, v) in next.ipcache where old.ipcache[k] != v { changes.ipcache.append((k, v)) }
        for (k, v) in next.policy where old.policy[k] != v { changes.policy.append((k, v)) }
        for (k, v) in next.enforcement where old.enforcement[k] != v { changes.enforcement.append((k, v)) }
        return try write(changes, next, into: slot, revision: revision, inForce: inForce)
    }

    /// Writes `changes` into `slot`, which then holds `next`: deletes first, then what is
    /// new or changed. Called under the publish lock, with no program reading the slot.
    func write(_ changes: RawChanges, _ next: SlotContents, into slot: Int, revision: UInt32, inForce: UInt32) throws -> (written: Int, deleted: Int) {
        var written = 0, deleted = 0
        let maps = [(ipcache, changes.ipcache), (policy, changes.policy), (policyEP, changes.enforcement)]
        do {
            for (map, list) in maps {
                for (k, v) in list where v == nil {
                    try map.deleteRaw(Self.key(k.bytes(count: map.keySize), inSlot: slot))
                    deleted += 1
                }
            }
            for (map, list) in maps {
                for case let (k, v?) in list {
                    do {
                        try map.updateRaw(Self.key(k.bytes(count: map.keySize), inSlot: slot), v.bytes(count: map.valueSize))
                    } catch let e as DatapathError where e.errno == ENOSPC || e.errno == E2BIG {
                        throw DatapathError("policy revision \(revision) does not fit: map \(map.name) is full at its capacity of \(map.maxEntries) entries (\(map.maxEntries / 2) per revision slot); revision \(inForce) stays in force", errno: e.errno)
                    }
                    written += 1
                }
            }
        } catch {
            // Part of the change is in the kernel: mirror what is really there.
            try? loadSlots()
            throw error
        }
        slots[slot] = next
        slotRevision[slot] = revision
        publishMirrorCounts()
        return (written, deleted)
    }

    /// Reads both slots back from the pinned maps (after a restart).
    func loadSlots() throws {
        var loaded = [SlotContents(), SlotContents()]
        for (k, v) in try ipcache.entriesRaw() {
            let key = k.withUnsafeBytes { $0.loadUnaligned(as: mesh_ipcache_key.self) }
            loaded[Int(key.slot & 1)].ipcache[RawEntry(bytes: Self.key(k, inSlot: 0))] = RawEntry(bytes: v)
        }
        for (k, v) in try policy.entriesRaw() {
            let key = k.withUnsafeBytes { $0.loadUnaligned(as: mesh_policy_key.self) }
            loaded[Int(key.slot & 1)].policy[RawEntry(bytes: Self.key(k, inSlot: 0))] = RawEntry(bytes: v)
        }
        for (k, v) in try policyEP.entriesRaw() {
            let key = k.withUnsafeBytes { $0.loadUnaligned(as: mesh_policy_ep_key.self) }
            loaded[Int(key.slot & 1)].enforcement[RawEntry(bytes: Self.key(k, inSlot: 0))] = RawEntry(bytes: v)
        }
        slots = loaded
        // The active slot is the revision in force; the other one's is not known.
        slotRevision = [nil, nil]
        if let state = try? policyState() { slotRevision[state.activeSlot] = state.revision }
        publishMirrorCounts()
    }

    /// Called wherever `slots` changes (under the publish lock).
    func publishMirrorCounts() {
        let counts = [ipcache.name: slots[0].ipcache.count + slots[1].ipcache.count,
                      policy.name: slots[0].policy.count + slots[1].policy.count,
                      policyEP.name: slots[0].enforcement.count + slots[1].enforcement.count]
        countsLock.withLock { mirroredCounts = counts }
    }

    /// Where every revision map's key holds its slot byte: the same offset in all three
    /// (mesh_abi.h), which one key encoding per revision relies on.
    static let slotOffset: Int = {
        let offsets = [MemoryLayout<mesh_ipcache_key>.offset(of: \.slot), MemoryLayout<mesh_policy_key>.offset(of: \.slot),
                       MemoryLayout<mesh_policy_ep_key>.offset(of: \.slot)]
        guard let first = offsets[0], offsets.allSatisfy({ $0 == first }) else {
            preconditionFailure("the revision maps' keys hold their slot byte at different offsets: \(offsets)")
        }
        return first
    }()

    /// `key` (raw, of any revision map) with its slot byte set to `slot`.
    static func key(_ key: [UInt8], inSlot slot: Int) -> [UInt8] {
        var k = key
        k[slotOffset] = UInt8(slot)
        return k
    }

    func ipcacheKey(_ e: IPCacheEntry, slot: Int) -> mesh_ipcache_key {
        var k = mesh_ipcache_key()
        k.prefixlen = UInt32(8 + e.prefixLength)
        k.slot = UInt8(slot)
        let be = e.address.bigEndian
        withUnsafeBytes(of: be) { src in withUnsafeMutableBytes(of: &k.addr) { $0.copyMemory(from: src) } }
        return k
    }

    func policyKey(_ e: PolicyEntry, slot: Int) -> mesh_policy_key {
        var k = mesh_policy_key()
        k.slot = UInt8(slot)
        k.direction = UInt8(e.direction.abi.rawValue)
        k.endpoint_id = e.endpointID
        k.identity = e.identity
        if e.proto == 0 {
            k.prefixlen = UInt32(MESH_POLICY_FIXED_BITS)
        } else {
            k.proto = e.proto
            k.prefixlen = UInt32(MESH_POLICY_FIXED_BITS) + 16 + UInt32(e.portPrefixLength)
            let mask: UInt16 = e.portPrefixLength == 0 ? 0 : ~UInt16(0) << (16 - e.portPrefixLength)
            k.dport = (e.portPrefix & mask).bigEndian
        }
        return k
    }

    /// The active slot's ipcache as the kernel holds it, as (prefix, length, identity,
    /// endpoint id).
    public func ipcacheEntries() throws -> [IPCacheEntry] {
        let active = try policyState().activeSlot
        return try ipcache.entriesRaw().compactMap { k, v in
            let key = k.withUnsafeBytes { $0.loadUnaligned(as: mesh_ipcache_key.self) }
            guard Int(key.slot) == active else { return nil }
            let val = v.withUnsafeBytes { $0.loadUnaligned(as: mesh_ipcache_value.self) }
            let addr = withUnsafeBytes(of: key.addr) { UInt32(bigEndian: $0.loadUnaligned(as: UInt32.self)) }
            return IPCacheEntry(address: addr, prefixLength: Int(key.prefixlen) - 8, identity: val.identity, endpointID: val.endpoint_id,
                                tunnel: val.flags & MESH_IPCACHE_TUNNEL.rawValue != 0)
        }.sorted { ($0.address, $0.prefixLength) < ($1.address, $1.prefixLength) }
    }

    /// The active slot's policy entries as the kernel holds them.
    public func policyEntries() throws -> [PolicyEntry] {
        let active = try policyState().activeSlot
        return try policy.entriesRaw().compactMap { k, v in
            let key = k.withUnsafeBytes { $0.loadUnaligned(as: mesh_policy_key.self) }
            guard Int(key.slot) == active else { return nil }
            let val = v.withUnsafeBytes { $0.loadUnaligned(as: mesh_policy_value.self) }
            let portBits = max(0, Int(key.prefixlen) - Int(MESH_POLICY_FIXED_BITS) - 16)
            return PolicyEntry(endpointID: key.endpoint_id, direction: Direction(abi: key.direction),
                               identity: key.identity, proto: key.proto, portPrefix: UInt16(bigEndian: key.dport),
                               portPrefixLength: portBits, action: Action(abi: val.action) ?? .deny,
                               ruleID: val.rule_id, policyID: val.policy_id,
                               l7: val.flags & UInt8(MESH_POLICY_L7.rawValue) != 0,
                               auth: val.flags & UInt8(MESH_POLICY_AUTH.rawValue) != 0)
        }.sorted { ($0.endpointID, $0.direction.rawValue, $0.identity, $0.proto, $0.portPrefix) < ($1.endpointID, $1.direction.rawValue, $1.identity, $1.proto, $1.portPrefix) }
    }

    /// Drops by reason and direction, summed over CPUs.
    public func dropCounters() throws -> [(reason: DropReason, direction: Direction, counters: Counters)] {
        try drops.keys(as: mesh_drop_key.self).compactMap { k in
            guard let reason = DropReason(abi: k.reason), let per = try drops.lookupPerCPU(k, as: mesh_counter.self) else { return nil }
            return (reason, Direction(abi: k.direction), Self.sum(per))
        }
    }

    /// New-flow verdicts by policy id (0: default deny), direction and action.
    public func verdictCounters() throws -> [(policyID: UInt32, direction: Direction, action: Action, counters: Counters)] {
        try verdicts.keys(as: mesh_verdict_key.self).compactMap { k in
            guard let action = Action(abi: k.action), let per = try verdicts.lookupPerCPU(k, as: mesh_counter.self) else { return nil }
            return (k.policy_id, Direction(abi: k.direction), action, Self.sum(per))
        }
    }

    static func sum(_ per: [mesh_counter]) -> Counters {
        per.reduce(into: Counters()) { c, v in
            c.packets &+= v.packets
            c.bytes &+= v.bytes
        }
    }
}

/// A lock usable from a non-Sendable-aware class (Foundation's NSLock, named for intent).
final class NSLockShim: @unchecked Sendable {
    private let lock = NSLock()
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }
}
