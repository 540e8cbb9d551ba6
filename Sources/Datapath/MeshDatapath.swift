import BPFObjects
import CBPF
import Foundation
import Glibc

/// SwiftMesh's own programs and maps (bpf/endpoint.bpf.c) behind a Swift API that speaks
/// in plain ids and addresses, so nothing above this module touches the C ABI.
///
/// `load` always loads the embedded object afresh, re-using the maps pinned under the
/// node's folder (so counters carry over a restart), and attaching replaces atomically,
/// so a restart or an upgrade never leaves an interface without its program.
public final class MeshDatapath: @unchecked Sendable {
    /// Direction as seen by the endpoint (the workload).
    public enum Direction: String, Sendable, CaseIterable {
        case ingress, egress

        var abi: mesh_direction { self == .ingress ? MESH_DIR_INGRESS : MESH_DIR_EGRESS }

        /// A direction byte of a map key or event (MESH_DIR_INGRESS or MESH_DIR_EGRESS).
        init(abi: UInt8) { self = UInt32(abi) == MESH_DIR_INGRESS.rawValue ? .ingress : .egress }
    }

    public struct Counters: Sendable, Equatable {
        public var packets: UInt64 = 0
        public var bytes: UInt64 = 0
        public init(packets: UInt64 = 0, bytes: UInt64 = 0) {
            self.packets = packets
            self.bytes = bytes
        }
    }

    public struct MapStats: Sendable {
        public var name: String
        public var type: String
        public var entries: Int
        public var capacity: Int
    }

    /// A decoded ring-buffer event.
    public enum Event: Sendable, Equatable {
        case unknownInterface(ifindex: UInt32, direction: Direction, nodeID: UInt32)
        case unrecognised(type: UInt16)
        case policy(PolicyEvent)
        case loadBalancing(LBEvent)
    }

    /// A connect() or sendmsg() to a service VIP: translated, or refused (backendID 0).
    public struct LBEvent: Sendable, Equatable {
        public var cgroupID: UInt64
        /// Host order.
        public var vip: UInt32
        public var vport: UInt16
        public var backendAddress: UInt32
        public var backendPort: UInt16
        public var frontendID: UInt32
        public var backendID: UInt32
        public var proto: UInt8
        public var connect: Bool
        public var affinity: Bool
        public var timestampNanoseconds: UInt64
    }

    /// A drop, or a new flow allowed on an enforced endpoint.
    public struct PolicyEvent: Sendable, Equatable {
        public var dropped: Bool
        public var endpointID: UInt32
        public var peerIdentity: UInt32
        /// Host-order addresses and ports of the packet.
        public var source: UInt32
        public var destination: UInt32
        public var sourcePort: UInt16
        public var destinationPort: UInt16
        public var proto: UInt8
        public var direction: Direction
        public var reason: DropReason
        public var ruleID: UInt32
        public var revision: UInt32
        public var timestampNanoseconds: UInt64
        /// The flow goes through the L7 proxy.
        public var proxied: Bool = false
    }

    public static let maxEndpoints = Int(MESH_MAX_ENDPOINTS)

    public let pinDir: String
    let object: LoadedBPFObject
    /// Pinned maps this start replaced because their layout had changed (see
    /// `BPFObjectSpec.load`), one "name: what differs" line each.
    public var replacedMaps: [String] { object.replacedMaps }
    public let fromEndpoint: BPFProgram
    public let toEndpoint: BPFProgram
    let endpoints: BPFMap
    let localEndpoints: BPFMap
    let traffic: BPFMap
    let events: BPFMap
    let ipcache: BPFMap
    let policy: BPFMap
    let policyEP: BPFMap
    let revisionMap: BPFMap
    /// mesh_revision's one word, mapped into this process (munmapped at deinit).
    let revisionWord: UnsafeMutablePointer<UInt32>
    let conntrack: BPFMap
    let drops: BPFMap
    let verdicts: BPFMap
    let monitor: BPFMap
    let monitorLock = NSLockShim()
    let frags: BPFMap
    let conntrackStats: BPFMap
    /// Serialises meshd's own additions to MESH_CT_STAT_COLLECTED.
    let collectedLock = NSLockShim()
    /// What each revision slot holds, mirrored in memory so a new revision writes only
    /// what differs from the slot's previous contents.
    var slots = [SlotContents(), SlotContents()]
    /// The revision each slot's contents are, where known (nil: the slot is one change
    /// or more behind, or was read back after a failure): a publish of changes writes
    /// only them into a slot that holds the revision they are from.
    var slotRevision: [UInt32?] = [nil, nil]
    let publishLock = NSLockShim()
    /// Brings a retired revision slot up to date after each flip (see `publish`); a serial
    /// queue of its own, not Swift's cooperative pool: it waits for a grace period.
    let catchUpQueue = DispatchQueue(label: "swiftmesh.slot-catch-up")
    /// Entries of the revision maps by name, from the slot mirror (see `mapStats`), behind
    /// a lock of their own so that readers never wait for a publish.
    let countsLock = NSLockShim()
    var mirroredCounts: [String: Int] = [:]
    let gracePeriod: GracePeriod

    /// Loads and pins the node's datapath under `pinDir` (created if missing).
    /// `proxyPort`: the L7 proxy's transparent listener (0: none; flows that need it drop).
    /// `mtlsStrict`: endpoints accept other nodes' endpoints only through the mTLS tunnel.
    public init(pinDir: String, nodeID: UInt32, sizes: MapSizes = MapSizes(), proxyPort: UInt16 = 0,
                mtlsStrict: Bool = false) throws {
        self.pinDir = pinDir
        try BPFFS.ensureMounted()
        try BPFFS.makeDirectory(pinDir)
        let spec = try BPFObjectSpec(bytes: EmbeddedBPF.endpoint.bytes, name: "endpoint", pinRoot: pinDir)
        try spec.setConstant("cfg_node_id", nodeID)
        try spec.setConstant("cfg_proxy_port", proxyPort)
        try spec.setConstant("cfg_mtls_strict", UInt8(mtlsStrict ? 1 : 0))
        try sizes.apply(to: spec)
        object = try spec.load()
        fromEndpoint = try object.program("mesh_from_endpoint")
        toEndpoint = try object.program("mesh_to_endpoint")
        endpoints = try object.map(MESH_MAP_ENDPOINTS)
        localEndpoints = try object.map(MESH_MAP_LOCAL)
        traffic = try object.map(MESH_MAP_TRAFFIC)
        events = try object.map(MESH_MAP_EVENTS)
        ipcache = try object.map(MESH_MAP_IPCACHE)
        policy = try object.map(MESH_MAP_POLICY)
        policyEP = try object.map(MESH_MAP_POLICY_EP)
        revisionMap = try object.map(MESH_MAP_REVISION)
        revisionWord = try Self.mapWord(revisionMap)
        conntrack = try object.map(MESH_MAP_CT)
        drops = try object.map(MESH_MAP_DROPS)
        verdicts = try object.map(MESH_MAP_VERDICTS)
        monitor = try object.map(MESH_MAP_MONITOR)
        frags = try object.map(MESH_MAP_FRAGS)
        conntrackStats = try object.map(MESH_MAP_CT_STATS)
        gracePeriod = try GracePeriod()
        for p in [fromEndpoint, toEndpoint] { try p.pin(at: "\(pinDir)/\(p.name)") }
        try adoptEarlierRevision()
        try loadSlots()
    }

    deinit { munmap(revisionWord, Int(getpagesize())) }

    /// The first word of an mmapable array map, mapped shared into this process.
    static func mapWord(_ map: BPFMap) throws -> UnsafeMutablePointer<UInt32> {
        let p = mmap(nil, Int(getpagesize()), PROT_READ | PROT_WRITE, MAP_SHARED, map.fd, 0)
        guard let p, p != MAP_FAILED else { throw DatapathError("mmap map \(map.name)", errno: Glibc.errno) }
        return p.bindMemory(to: UInt32.self, capacity: 1)
    }

    /// An earlier meshd kept the revision in mesh_pol_state. Carried over before anything
    /// is attached, the programs go on with the revision (and slot) that was in force.
    private func adoptEarlierRevision() throws {
        let path = "\(pinDir)/\(MESH_MAP_POLICY_STATE_V1)"
        guard FileManager.default.fileExists(atPath: path) else { return }
        let old = try BPFMap(pinnedAt: path)
        if cbpf_load_u32(revisionWord) == 0, let st = try? old.lookup(UInt32(0), as: mesh_policy_state.self) {
            cbpf_store_u32(revisionWord, st.revision)
        }
        unlink(path)
    }

    private func hooks(_ ifindex: Int32) -> [(TCHook, BPFProgram)] {
        [(TCHook(ifindex: ifindex, direction: .ingress), fromEndpoint),
         (TCHook(ifindex: ifindex, direction: .egress), toEndpoint)]
    }

    /// Registers an endpoint's veth in the maps, then attaches both programs to it: the
    /// entries exist before the first packet can be seen. `mac` is the endpoint's eth0,
    /// `gatewayMAC` the host-side veth's: local delivery writes them (mesh_local_ep).
    public func install(endpointID: UInt32, ipv4NetworkOrder: UInt32, ifindex: Int32, mac: [UInt8], gatewayMAC: [UInt8]) throws {
        guard mac.count == 6, gatewayMAC.count == 6 else { throw DatapathError("a MAC address has 6 bytes", errno: EINVAL) }
        var info = mesh_endpoint_info()
        info.endpoint_id = endpointID
        info.ipv4 = ipv4NetworkOrder
        try endpoints.update(mesh_endpoint_key(ifindex: UInt32(ifindex)), info)
        for (hook, prog) in hooks(ifindex) { try hook.attach(prog) }
        var local = mesh_local_endpoint()
        local.ifindex = UInt32(ifindex)
        local.endpoint_id = endpointID
        withUnsafeMutableBytes(of: &local.mac) { $0.copyBytes(from: mac) }
        withUnsafeMutableBytes(of: &local.gateway_mac) { $0.copyBytes(from: gatewayMAC) }
        // Last: other endpoints deliver to this one directly only once its programs are on.
        try localEndpoints.update(ipv4NetworkOrder, local)
    }

    /// Forgets an endpoint: stops local delivery to it, detaches, removes its map entries
    /// and its counters.
    public func uninstall(endpointID: UInt32, ipv4NetworkOrder: UInt32, ifindex: Int32?) {
        _ = try? localEndpoints.delete(ipv4NetworkOrder)
        if let ifindex, ifindex > 0 {
            for (hook, _) in hooks(ifindex) { _ = try? hook.detach() }
            _ = try? endpoints.delete(mesh_endpoint_key(ifindex: UInt32(ifindex)))
        }
        for d in Direction.allCases { _ = try? traffic.delete(trafficKey(endpointID, d)) }
    }

    /// Drops entries that belong to no live endpoint (left by a crash mid-change).
    public func prune(keepIfindexes: Set<UInt32>, keepEndpointIDs: Set<UInt32>) {
        for k in (try? endpoints.keys(as: mesh_endpoint_key.self)) ?? [] where !keepIfindexes.contains(k.ifindex) {
            _ = try? endpoints.delete(k)
        }
        for a in (try? localEndpoints.keys(as: UInt32.self)) ?? [] {
            if let v = try? localEndpoints.lookup(a, as: mesh_local_endpoint.self),
               keepIfindexes.contains(v.ifindex) && keepEndpointIDs.contains(v.endpoint_id) { continue }
            _ = try? localEndpoints.delete(a)
        }
        for k in (try? traffic.keys(as: mesh_traffic_key.self)) ?? [] where !keepEndpointIDs.contains(k.endpoint_id) {
            _ = try? traffic.delete(k)
        }
    }

    private func trafficKey(_ id: UInt32, _ d: Direction) -> mesh_traffic_key {
        var k = mesh_traffic_key()
        k.endpoint_id = id
        k.direction = UInt8(d.abi.rawValue)
        return k
    }

    /// An endpoint's counters in one direction, summed over CPUs.
    public func counters(endpointID: UInt32, direction: Direction) throws -> Counters {
        guard let perCPU = try traffic.lookupPerCPU(trafficKey(endpointID, direction), as: mesh_traffic_value.self) else {
            return Counters()
        }
        return perCPU.reduce(into: Counters()) { c, v in
            c.packets &+= v.packets
            c.bytes &+= v.bytes
        }
    }

    /// Hook directions of `ifindex` where this datapath's program is attached right now.
    public func attachedDirections(ifindex: Int32) -> [TCHook.Direction] {
        guard ifindex > 0 else { return [] }
        return hooks(ifindex).compactMap { hook, prog in hook.attachedProgramID() == prog.id ? hook.direction : nil }
    }

    /// What each map holds. The revision maps (LPM tries, which the kernel can only count
    /// by walking them key by key: tens of thousands of system calls, started over whenever
    /// a publish changes the trie) are counted from meshd's mirror of their slots, which
    /// every publish and every read-back keeps equal to the kernel's contents.
    public func mapStats() -> [MapStats] {
        let mirrored = countsLock.withLock { mirroredCounts }
        return [endpoints, localEndpoints, traffic, events, ipcache, policy, policyEP, revisionMap, conntrack, frags, drops, verdicts].map { m in
            if let n = mirrored[m.name] { return MapStats(name: m.name, type: m.typeName, entries: n, capacity: m.maxEntries) }
            return MapStats(m)
        }
    }

    /// Turns the optional events on or off (nil: leave as they are): verdicts per new flow,
    /// load-balancing decisions per connect.
    public func setOptionalEvents(verdicts: Bool?, loadBalancing: Bool?) throws {
        try monitorLock.withLock {
            var c = try monitor.lookup(UInt32(0), as: mesh_monitor_config.self) ?? mesh_monitor_config()
            if let verdicts { c.verdict_events = verdicts ? 1 : 0 }
            if let loadBalancing { c.lb_events = loadBalancing ? 1 : 0 }
            try monitor.update(UInt32(0), c)
        }
    }

    /// A reader of the node's event ring buffer; one task should own it.
    public func eventReader() throws -> RingBufferReader { try RingBufferReader(map: events) }

    public static func decode(event bytes: [UInt8]) -> Event? {
        guard bytes.count >= MemoryLayout<mesh_event_header>.size else { return nil }
        let hdr = bytes.withUnsafeBytes { $0.loadUnaligned(as: mesh_event_header.self) }
        switch UInt32(hdr.type) {
        case MESH_EVENT_UNKNOWN_INTERFACE.rawValue:
            guard bytes.count >= MemoryLayout<mesh_event_unknown_interface>.size else { return nil }
            let ev = bytes.withUnsafeBytes { $0.loadUnaligned(as: mesh_event_unknown_interface.self) }
            return .unknownInterface(ifindex: ev.ifindex, direction: Direction(abi: ev.direction),
                                     nodeID: hdr.node_id)
        case MESH_EVENT_DROP.rawValue, MESH_EVENT_VERDICT.rawValue:
            guard bytes.count >= MemoryLayout<mesh_event_policy>.size else { return nil }
            let ev = bytes.withUnsafeBytes { $0.loadUnaligned(as: mesh_event_policy.self) }
            return .policy(PolicyEvent(
                dropped: UInt32(hdr.type) == MESH_EVENT_DROP.rawValue, endpointID: ev.endpoint_id,
                peerIdentity: ev.peer_identity, source: UInt32(bigEndian: ev.saddr), destination: UInt32(bigEndian: ev.daddr),
                sourcePort: ev.sport, destinationPort: ev.dport, proto: ev.proto,
                direction: Direction(abi: ev.direction),
                reason: DropReason(abi: ev.reason) ?? .none, ruleID: ev.rule_id, revision: ev.revision,
                timestampNanoseconds: hdr.timestamp, proxied: ev.flags & MESH_EVENT_F_PROXY.rawValue != 0))
        case MESH_EVENT_LB.rawValue:
            guard bytes.count >= MemoryLayout<mesh_event_lb>.size else { return nil }
            let ev = bytes.withUnsafeBytes { $0.loadUnaligned(as: mesh_event_lb.self) }
            return .loadBalancing(LBEvent(
                cgroupID: ev.cgroup_id, vip: UInt32(bigEndian: ev.vip), vport: ev.vport,
                backendAddress: UInt32(bigEndian: ev.backend_addr), backendPort: ev.backend_port,
                frontendID: ev.frontend_id, backendID: ev.backend_id, proto: ev.proto,
                connect: UInt32(ev.hook) == MESH_LB_HOOK_CONNECT.rawValue, affinity: ev.affinity != 0,
                timestampNanoseconds: hdr.timestamp))
        default:
            return .unrecognised(type: hdr.type)
        }
    }
}

/// Sizes of the maps a node may choose, set before load. Every object that declares a map
/// must load it with the same size, or the second load would find the pinned map
/// incompatible and replace it: both MeshDatapath and SocketRedirect take these.
public struct MapSizes: Sendable, Equatable {
    /// Entries of the connection-tracking table (conntrack-max).
    public var conntrack: UInt32

    public init(conntrack: UInt32 = UInt32(MESH_CT_ENTRIES)) { self.conntrack = conntrack }

    func apply(to spec: BPFObjectSpec) throws {
        try spec.setMaxEntries(MESH_MAP_CT, conntrack)
    }
}

extension MeshDatapath.MapStats {
    /// What a map holds now (outside the struct, so its memberwise init stays).
    init(_ m: BPFMap) {
        self.init(name: m.name, type: m.typeName, entries: (try? m.count()) ?? 0, capacity: m.maxEntries)
    }
}
