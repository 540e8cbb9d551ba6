import CBPF
import Glibc

extension MeshDatapath {
    public struct TraceResult: Sendable, Equatable {
        public var action: Action
        public var reason: DropReason
        public var ruleID: UInt32
        public var peerIdentity: UInt32
        public var enforced: Bool
        /// Allowed through the L7 proxy, whose HTTP rules then judge each request.
        public var l7: Bool = false
        /// Allowed for a proven peer only: from another node, only through the mTLS tunnel.
        public var auth: Bool = false
    }

    public enum TraceProtocol: Sendable {
        case icmp, tcp, udp

        /// The IP protocol number, from the system's netinet/in.h.
        public var number: UInt8 {
            switch self {
            case .icmp: UInt8(IPPROTO_ICMP)
            case .tcp: UInt8(IPPROTO_TCP)
            case .udp: UInt8(IPPROTO_UDP)
            }
        }
    }

    /// Runs the attached program of `direction` on a synthetic first packet of a flow, with
    /// BPF_PROG_TEST_RUN and the trace mark: the kernel's own code and maps decide, with no
    /// side effects (no conntrack entry, counter or event).
    public func trace(ifindex: Int32, direction: Direction, source: UInt32, destination: UInt32,
                      proto: TraceProtocol, destinationPort: UInt16) throws -> TraceResult {
        let program = direction == .egress ? fromEndpoint : toEndpoint
        var packet = Self.packet(source: source, destination: destination, proto: proto, destinationPort: destinationPort)
        var ctxIn = __sk_buff()
        ctxIn.ifindex = UInt32(ifindex)
        ctxIn.mark = UInt32(MESH_TRACE_MARK)
        var ctxOut = __sk_buff()
        var retval: UInt32 = 0
        let rc = cbpf_test_run_skb(program.fd, &packet, UInt32(packet.count), &ctxIn, &ctxOut, &retval)
        try check("trace run of \(program.name) on ifindex \(ifindex)", rc)
        let cb = ctxOut.cb
        guard cb.4 & MESH_TRACE_EVALUATED.rawValue != 0 else {
            throw DatapathError("trace: \(program.name) did not evaluate policy (is ifindex \(ifindex) an endpoint?)", errno: EINVAL)
        }
        return TraceResult(action: Action(abi: UInt8(truncatingIfNeeded: cb.0)) ?? .deny,
                           reason: DropReason(abi: UInt8(truncatingIfNeeded: cb.1)) ?? .none,
                           ruleID: cb.2, peerIdentity: cb.3, enforced: cb.4 & MESH_TRACE_ENFORCED.rawValue != 0,
                           l7: cb.4 & MESH_TRACE_L7.rawValue != 0, auth: cb.4 & MESH_TRACE_AUTH.rawValue != 0)
    }

    /// Ethernet + IPv4 + a TCP SYN, a UDP header or an ICMP message of type
    /// `destinationPort` (an echo's layout): enough for the program to parse.
    static func packet(source: UInt32, destination: UInt32, proto: TraceProtocol, destinationPort: UInt16) -> [UInt8] {
        var p: [UInt8] = [0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00]
        let l4: [UInt8]
        let sport: UInt16 = 40000
        switch proto {
        case .tcp:
            l4 = [UInt8(sport >> 8), UInt8(sport & 0xff), UInt8(destinationPort >> 8), UInt8(destinationPort & 0xff),
                  0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]
        case .udp:
            l4 = [UInt8(sport >> 8), UInt8(sport & 0xff), UInt8(destinationPort >> 8), UInt8(destinationPort & 0xff), 0, 8, 0, 0]
        case .icmp:
            l4 = [UInt8(truncatingIfNeeded: destinationPort), 0, 0, 0, 0, 1, 0, 1]
        }
        let total = UInt16(20 + l4.count)
        p += [0x45, 0, UInt8(total >> 8), UInt8(total & 0xff), 0, 1, 0x40, 0, 64, proto.number, 0, 0]
        for a in [source, destination] { p += [UInt8(a >> 24), UInt8(a >> 16 & 0xff), UInt8(a >> 8 & 0xff), UInt8(a & 0xff)] }
        return p + l4
    }
}

extension MeshDatapath {
    public struct ConntrackEntry: Sendable {
        public var endpointID: UInt32
        public var source: UInt32
        public var destination: UInt32
        public var sourcePort: UInt16
        public var destinationPort: UInt16
        public var proto: UInt8
        public var direction: Direction
        public var revision: UInt32
        public var ruleID: UInt32
        public var peerIdentity: UInt32
        public var closing: Bool
        /// A packet of the other direction was seen (for TCP: established).
        public var seenReply: Bool
        public var ageSeconds: Double
        public var idleSeconds: Double
    }

    static func monotonicNanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// The programs' idle lifetime of an entry (mesh_abi.h, the same function), in nanoseconds.
    static func lifetime(proto: UInt8, _ v: mesh_ct_value) -> UInt64 {
        UInt64(mesh_ct_lifetime_s(proto, v.closing, v.seen_reply)) * 1_000_000_000
    }

    public func conntrackEntries() throws -> [ConntrackEntry] {
        let now = Self.monotonicNanoseconds()
        return try conntrack.entriesRaw().map { k, v in
            let key = k.withUnsafeBytes { $0.loadUnaligned(as: mesh_ct_key.self) }
            let val = v.withUnsafeBytes { $0.loadUnaligned(as: mesh_ct_value.self) }
            return ConntrackEntry(endpointID: key.endpoint_id, source: UInt32(bigEndian: key.saddr), destination: UInt32(bigEndian: key.daddr),
                                  sourcePort: key.sport, destinationPort: key.dport, proto: key.proto,
                                  direction: Direction(abi: key.direction),
                                  revision: val.revision, ruleID: val.rule_id, peerIdentity: val.peer_identity, closing: val.closing != 0,
                                  seenReply: val.seen_reply != 0,
                                  ageSeconds: Double(now &- val.created) / 1e9, idleSeconds: Double(now &- val.last_seen) / 1e9)
        }
    }

    /// Deletes entries idle longer than their lifetime (the same lifetimes the programs
    /// use to ignore them). Returns how many went.
    @discardableResult
    public func conntrackCollect() throws -> Int {
        let now = Self.monotonicNanoseconds()
        var n = 0
        for (k, v) in try conntrack.entriesRaw() {
            let key = k.withUnsafeBytes { $0.loadUnaligned(as: mesh_ct_key.self) }
            let val = v.withUnsafeBytes { $0.loadUnaligned(as: mesh_ct_value.self) }
            if now &- val.last_seen > Self.lifetime(proto: key.proto, val), try conntrack.deleteRaw(k) {
                n += 1
            }
        }
        try addCollected(n)
        return n
    }

    /// Forgets conntrack entries of an endpoint (when it is deleted).
    public func conntrackForget(endpointID: UInt32) {
        var n = 0
        for (k, _) in (try? conntrack.entriesRaw()) ?? [] {
            let key = k.withUnsafeBytes { $0.loadUnaligned(as: mesh_ct_key.self) }
            if key.endpoint_id == endpointID, (try? conntrack.deleteRaw(k)) == true { n += 1 }
        }
        try? addCollected(n)
    }

    /// Counts entries meshd deleted, in the kernel's stats (so a restart keeps the total).
    /// Only meshd writes this index; the programs write the others.
    private func addCollected(_ n: Int) throws {
        guard n > 0 else { return }
        try collectedLock.withLock {
            let key = MESH_CT_STAT_COLLECTED.rawValue
            var values = try conntrackStats.lookupPerCPU(key, as: UInt64.self) ?? []
            guard !values.isEmpty else { return }
            values[0] &+= UInt64(n)
            try conntrackStats.updatePerCPU(key, values)
        }
    }

    /// What became of conntrack entries, summed over CPUs.
    public struct ConntrackStats: Sendable {
        public var created: UInt64
        public var removed: UInt64
        public var collected: UInt64

        /// Entries the LRU evicted to make room, given how many are in the table now: every
        /// entry created is still there, was deleted by a program or by meshd, or was evicted.
        public func evicted(entries: Int) -> UInt64 {
            let gone = Int64(clamping: created) - Int64(clamping: removed) - Int64(clamping: collected) - Int64(entries)
            return UInt64(max(0, gone))
        }
    }

    /// The conntrack counters. The table's entry count is MapStats' (mapStats()): counting
    /// a large table costs a walk, so a caller that has one reuses it.
    public func conntrackStatistics() throws -> ConntrackStats {
        ConntrackStats(created: try conntrackStats.sumPerCPU(MESH_CT_STAT_CREATED.rawValue),
                       removed: try conntrackStats.sumPerCPU(MESH_CT_STAT_REMOVED.rawValue),
                       collected: try conntrackStats.sumPerCPU(MESH_CT_STAT_COLLECTED.rawValue))
    }

    /// The name of the conntrack map, as mapStats() reports it.
    public static let conntrackMapName = MESH_MAP_CT
}
