import BPFObjects
import CBPF
import Glibc

/// Socket-level service load balancing (bpf/lb.bpf.c): four cgroup programs on the node's
/// cgroup, and the frontend, slot and backend maps meshd writes for them.
///
/// Like sock_ops, each program hangs on a BPF link pinned under the node's folder, so a
/// restarted meshd swaps programs in atomically and a dead one leaves services working.
/// `sync` writes a backend set so that a connect() running at the same time always finds
/// a live backend in every slot it may pick (the order is in mesh_abi.h).
public final class ServiceLB: @unchecked Sendable {
    /// One port of a service: what a client connects to.
    public struct Frontend: Hashable, Sendable {
        public var id: UInt32
        /// Host order.
        public var vip: UInt32
        public var port: UInt16
        public var proto: UInt8
        /// Seconds of ClientIP session affinity; nil: none.
        public var affinityTimeout: UInt32?
        /// An HTTPRoute binds it: connect() keeps the VIP and the L7 proxy picks a backend
        /// per request (MESH_LB_ROUTED); the backends stay for UDP and for the table.
        public var routed: Bool
        public init(id: UInt32, vip: UInt32, port: UInt16, proto: UInt8, affinityTimeout: UInt32?, routed: Bool = false) {
            self.id = id
            self.vip = vip
            self.port = port
            self.proto = proto
            self.affinityTimeout = affinityTimeout
            self.routed = routed
        }
    }

    /// Where a frontend's connections may go: an endpoint's address and target port.
    public struct Backend: Hashable, Sendable {
        /// The endpoint id.
        public var id: UInt32
        /// Host order.
        public var address: UInt32
        public var port: UInt16
        public var weight: UInt16
        public init(id: UInt32, address: UInt32, port: UInt16, weight: UInt16 = 1) {
            self.id = id
            self.address = address
            self.port = port
            self.weight = weight
        }
    }

    /// A frontend as the kernel holds it: its backends in slot order.
    public struct Entry: Sendable {
        public var frontend: Frontend
        public var backends: [Backend]
        /// The frontend's count as the kernel holds it: more than `backends` when a slot
        /// below it names no backend (a sync that failed part-way).
        public var count = 0
    }

    public struct Stat: Sendable {
        public var frontendID: UInt32
        /// 0: refusals (no backend).
        public var backendID: UInt32
        public var connects: UInt64
        public var sends: UInt64
    }

    public struct SyncStats: Sendable {
        public var written = 0
        public var deleted = 0
    }

    let object: LoadedBPFObject
    public var replacedMaps: [String] { object.replacedMaps }
    public let programs: [(program: BPFProgram, type: bpf_attach_type)]
    let frontends: BPFMap
    let slots: BPFMap
    let backends: BPFMap
    let affinity: BPFMap
    let revnat: BPFMap
    let stats: BPFMap
    public let cgroup: String
    let pinDir: String
    /// What the kernel holds, by frontend id: read back at load, kept by every sync, and
    /// read back again (with orphans removed) when a sync fails part-way.
    private var mirror: [UInt32: Entry] = [:]
    private let lock = NSLockShim()
    /// For an id that moves to another (VIP, port, protocol): a connect() that read the
    /// old frontend must be done before the id's slots are written for the new one.
    private let gracePeriod: GracePeriod

    public init(pinDir: String, cgroup: String, nodeID: UInt32, sizes: MapSizes = MapSizes()) throws {
        self.pinDir = pinDir
        self.cgroup = cgroup
        let spec = try BPFObjectSpec(bytes: EmbeddedBPF.lb.bytes, name: "lb", pinRoot: pinDir)
        try spec.setConstant("cfg_node_id", nodeID)
        try sizes.apply(to: spec)
        object = try spec.load()
        programs = [(try object.program("mesh_lb_connect4"), BPF_CGROUP_INET4_CONNECT),
                    (try object.program("mesh_lb_sendmsg4"), BPF_CGROUP_UDP4_SENDMSG),
                    (try object.program("mesh_lb_recvmsg4"), BPF_CGROUP_UDP4_RECVMSG),
                    (try object.program("mesh_lb_getpeername4"), BPF_CGROUP_INET4_GETPEERNAME)]
        frontends = try object.map(MESH_MAP_LB_SERVICES)
        slots = try object.map(MESH_MAP_LB_SLOTS)
        backends = try object.map(MESH_MAP_LB_BACKENDS)
        affinity = try object.map(MESH_MAP_LB_AFFINITY)
        revnat = try object.map(MESH_MAP_LB_REVNAT)
        stats = try object.map(MESH_MAP_LB_STATS)
        for (p, _) in programs { try p.pin(at: "\(pinDir)/\(p.name)") }
        gracePeriod = try GracePeriod()
        try resyncFromKernel()
    }

    private func linkPath(_ p: BPFProgram) -> String { "\(pinDir)/\(p.name)_link" }

    /// Attaches (or swaps in) the four programs on the node's cgroup.
    public func attach() throws {
        for (p, type) in programs {
            try ProgramAttachment.attachLink(p, cgroup: cgroup, type: type, pinnedAt: linkPath(p))
        }
    }

    /// Programs and whether their pinned link runs them now.
    public var attachments: [(name: String, id: UInt32, attached: Bool)] {
        programs.map { p, _ in (p.name, p.id, ProgramAttachment.linkedProgramID(pinnedAt: linkPath(p)) == p.id) }
    }

    public func mapStats() -> [MeshDatapath.MapStats] {
        [frontends, slots, backends, affinity, revnat, stats].map { MeshDatapath.MapStats($0) }
    }

    // MARK: Keys

    static func frontendKey(_ f: Frontend) -> mesh_lb_frontend_key {
        var k = mesh_lb_frontend_key()
        k.vip = f.vip.bigEndian
        k.port = f.port.bigEndian
        k.proto = f.proto
        return k
    }

    static func frontendValue(_ f: Frontend, count: Int) -> mesh_lb_frontend {
        var v = mesh_lb_frontend()
        v.frontend_id = f.id
        v.count = UInt16(count)
        if let t = f.affinityTimeout {
            v.flags = UInt8(MESH_LB_AFFINITY_CLIENT.rawValue)
            v.affinity_timeout_s = t
        }
        if f.routed { v.flags |= UInt8(MESH_LB_ROUTED.rawValue) }
        return v
    }

    static func slotKey(_ frontend: UInt32, _ slot: Int) -> mesh_lb_slot_key {
        mesh_lb_slot_key(frontend_id: frontend, slot: UInt32(slot))
    }

    static func backendKey(_ frontend: UInt32, _ backend: UInt32) -> mesh_lb_backend_key {
        mesh_lb_backend_key(frontend_id: frontend, backend_id: backend)
    }

    static func backendValue(_ b: Backend) -> mesh_lb_backend {
        mesh_lb_backend(addr: b.address.bigEndian, port: b.port.bigEndian, weight: b.weight)
    }

    /// The most backends one frontend may have (slots are numbered in 16 bits).
    public static let maxBackendsPerFrontend = Int(UInt16.max)
    public static let frontendCapacity = Int(MESH_LB_FRONTENDS)
    public static let backendCapacity = Int(MESH_LB_BACKEND_ENTRIES)

    // MARK: Writing

    /// Makes the kernel hold exactly `desired` (backends in any order), writing only what
    /// differs from what it holds. A backend that stays keeps its slot.
    @discardableResult
    public func sync(_ desired: [Frontend: [Backend]]) throws -> SyncStats {
        try lock.withLock { () throws -> SyncStats in
            var st = SyncStats()
            let wanted = Dictionary(desired.map { ($0.key.id, ($0.key, $0.value)) }, uniquingKeysWith: { a, _ in a })
            do {
                // Frontends that go, or whose key changes: first, so a key is free before reuse.
                var moved = false
                for (id, old) in mirror {
                    if let (f, _) = wanted[id] {
                        if (f.vip, f.port, f.proto) == (old.frontend.vip, old.frontend.port, old.frontend.proto) { continue }
                        moved = true
                    }
                    try remove(old, &st)
                    mirror[id] = nil
                }
                if moved { try gracePeriod.wait() }
                for (id, (f, list)) in wanted.sorted(by: { $0.key < $1.key }) {
                    try write(f, list, old: mirror[id], &st)
                }
            } catch {
                // Some writes happened: learn what the kernel holds now, so the next sync
                // starts from the truth, and drop entries no frontend's slots name.
                try? resyncFromKernel()
                throw error
            }
            return st
        }
    }

    /// Reads the frontends back into the mirror and deletes what no frontend uses: slots
    /// past a frontend's count, backends no slot names (which affinity could otherwise
    /// still pick), entries of frontends that are gone.
    private func resyncFromKernel() throws {
        let entries = try kernelEntries()
        for e in entries where e.count != e.backends.count {
            // Holes below the count: close them now, so no connect() meets one.
            for (i, b) in e.backends.enumerated() { try slots.update(Self.slotKey(e.frontend.id, i + 1), b.id) }
            try frontends.update(Self.frontendKey(e.frontend), Self.frontendValue(e.frontend, count: e.backends.count))
        }
        mirror = Dictionary(entries.map { ($0.frontend.id, $0) }, uniquingKeysWith: { a, _ in a })
        let live = Dictionary(entries.map { ($0.frontend.id, Set($0.backends.map(\.id))) }, uniquingKeysWith: { a, _ in a })
        for k in try slots.keys(as: mesh_lb_slot_key.self) where Int(k.slot) > (live[k.frontend_id]?.count ?? 0) {
            _ = try? slots.delete(k)
        }
        for k in try backends.keys(as: mesh_lb_backend_key.self) where live[k.frontend_id]?.contains(k.backend_id) != true {
            _ = try? backends.delete(k)
        }
    }

    private func remove(_ e: Entry, _ st: inout SyncStats) throws {
        let id = e.frontend.id
        if try frontends.delete(Self.frontendKey(e.frontend)) { st.deleted += 1 }
        for i in e.backends.indices { if try slots.delete(Self.slotKey(id, i + 1)) { st.deleted += 1 } }
        for b in e.backends {
            if try backends.delete(Self.backendKey(id, b.id)) { st.deleted += 1 }
            _ = try? stats.delete(mesh_lb_stat_key(frontend_id: id, backend_id: b.id))
        }
        _ = try? stats.delete(mesh_lb_stat_key(frontend_id: id, backend_id: 0))
    }

    private func write(_ f: Frontend, _ list: [Backend], old: Entry?, _ st: inout SyncStats) throws {
        guard list.count <= Self.maxBackendsPerFrontend else {
            throw DatapathError("frontend \(f.id) has \(list.count) backends; at most \(Self.maxBackendsPerFrontend)", errno: E2BIG)
        }
        let byID = Dictionary(list.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        let oldBackends = old?.backends ?? []
        let order = Self.slotOrder(old: oldBackends.map(\.id), new: Set(byID.keys))
        let oldByID = Dictionary(oldBackends.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        // 1. backends that are new or changed
        for id in order where oldByID[id] != byID[id] {
            try backends.update(Self.backendKey(f.id, id), Self.backendValue(byID[id]!))
            st.written += 1
        }
        // 2. slots below the new count that name another backend than before
        for (i, id) in order.enumerated() where i >= oldBackends.count || oldBackends[i].id != id {
            try slots.update(Self.slotKey(f.id, i + 1), id)
            st.written += 1
        }
        // 3. the frontend: its count (and flags) now match the slots
        if old == nil || old!.frontend != f || oldBackends.count != order.count {
            try frontends.update(Self.frontendKey(f), Self.frontendValue(f, count: order.count))
            st.written += 1
        }
        // 4. slots past the count, and backends that left
        if oldBackends.count > order.count {
            for i in order.count..<oldBackends.count { if try slots.delete(Self.slotKey(f.id, i + 1)) { st.deleted += 1 } }
        }
        for b in oldBackends where byID[b.id] == nil {
            if try backends.delete(Self.backendKey(f.id, b.id)) { st.deleted += 1 }
            _ = try? stats.delete(mesh_lb_stat_key(frontend_id: f.id, backend_id: b.id))
        }
        mirror[f.id] = Entry(frontend: f, backends: order.map { byID[$0]! }, count: order.count)
    }

    /// The new slot order: a backend that stays keeps its slot, newcomers (by id) take the
    /// slots of those that left and then the end, and when fewer come than leave, the last
    /// slots move into the holes. Only the slots that change are written.
    static func slotOrder(old: [UInt32], new: Set<UInt32>) -> [UInt32] {
        var slots: [UInt32?] = old.map { new.contains($0) ? $0 : nil }
        var newcomers = new.subtracting(old).sorted()[...]
        for i in slots.indices where slots[i] == nil {
            guard let n = newcomers.popFirst() else { break }
            slots[i] = n
        }
        slots += newcomers.map { Optional($0) }
        while let hole = slots.firstIndex(where: { $0 == nil }) {
            while slots.last == .some(nil) { slots.removeLast() }
            guard hole < slots.count else { break }
            slots[hole] = slots.removeLast()
        }
        return slots.compactMap { $0 }
    }

    // MARK: Reading

    /// What the kernel holds (not meshd's mirror), frontends by id.
    public func kernelEntries() throws -> [Entry] {
        var slotOf: [UInt32: [Int: UInt32]] = [:]
        for (k, v) in try slots.entriesRaw() {
            let key = k.withUnsafeBytes { $0.loadUnaligned(as: mesh_lb_slot_key.self) }
            slotOf[key.frontend_id, default: [:]][Int(key.slot)] = v.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
        }
        var backendOf: [UInt32: [UInt32: mesh_lb_backend]] = [:]
        for (k, v) in try backends.entriesRaw() {
            let key = k.withUnsafeBytes { $0.loadUnaligned(as: mesh_lb_backend_key.self) }
            backendOf[key.frontend_id, default: [:]][key.backend_id] = v.withUnsafeBytes { $0.loadUnaligned(as: mesh_lb_backend.self) }
        }
        return try frontends.entriesRaw().map { k, v in
            let key = k.withUnsafeBytes { $0.loadUnaligned(as: mesh_lb_frontend_key.self) }
            let fe = v.withUnsafeBytes { $0.loadUnaligned(as: mesh_lb_frontend.self) }
            let f = Frontend(id: fe.frontend_id, vip: UInt32(bigEndian: key.vip), port: UInt16(bigEndian: key.port), proto: key.proto,
                             affinityTimeout: fe.flags & UInt8(MESH_LB_AFFINITY_CLIENT.rawValue) != 0 ? fe.affinity_timeout_s : nil,
                             routed: fe.flags & UInt8(MESH_LB_ROUTED.rawValue) != 0)
            let list: [Backend] = fe.count == 0 ? [] : (1...Int(fe.count)).compactMap { slot in
                guard let id = slotOf[fe.frontend_id]?[slot], let b = backendOf[fe.frontend_id]?[id] else { return nil }
                return Backend(id: id, address: UInt32(bigEndian: b.addr), port: UInt16(bigEndian: b.port), weight: b.weight)
            }
            return Entry(frontend: f, backends: list, count: Int(fe.count))
        }.sorted { $0.frontend.id < $1.frontend.id }
    }

    /// Decisions per frontend and backend, summed over CPUs.
    public func counters() throws -> [Stat] {
        try stats.keys(as: mesh_lb_stat_key.self).compactMap { k in
            guard let per = try stats.lookupPerCPU(k, as: mesh_lb_counter.self) else { return nil }
            return Stat(frontendID: k.frontend_id, backendID: k.backend_id,
                        connects: per.reduce(0) { $0 &+ $1.connects }, sends: per.reduce(0) { $0 &+ $1.sends })
        }
    }
}
