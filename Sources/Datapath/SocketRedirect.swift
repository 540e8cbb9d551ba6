import BPFObjects
import CBPF
import Glibc

/// Socket redirection (bpf/sockops.bpf.c): the sock_ops program on the node's cgroup, the
/// sk_msg program on the sockhash, their switch and their counters.
///
/// The sock_ops attachment is a BPF link pinned under the node's folder: a restarted meshd
/// swaps the program inside the link atomically, and a dead one leaves it working.
public final class SocketRedirect: @unchecked Sendable {
    /// The programs' counters (enum mesh_redirect_counter, the index in mesh_redir_stats).
    public enum Counter: CaseIterable, Sendable {
        case messages, bytes, socketsAdded, fallbackNotLocal, fallbackDisabled, fallbackNoPeer,
             fallbackLargeWrite, fallbackRedirectFailed, deniedMessages, fallbackReaderBehind, fallbackPeer,
             socketsLeft, fallbackUnsupported, localCCApplied, localCCOwn, localCCFailed, fallbackProxied

        var abi: mesh_redirect_counter {
            switch self {
            case .messages: MESH_REDIR_MESSAGES
            case .bytes: MESH_REDIR_BYTES
            case .socketsAdded: MESH_REDIR_SOCKETS_ADDED
            case .fallbackNotLocal: MESH_REDIR_FB_NOT_LOCAL
            case .fallbackDisabled: MESH_REDIR_FB_DISABLED
            case .fallbackNoPeer: MESH_REDIR_FB_NO_PEER
            case .fallbackLargeWrite: MESH_REDIR_FB_LARGE_WRITE
            case .fallbackRedirectFailed: MESH_REDIR_FB_REDIRECT_FAILED
            case .deniedMessages: MESH_REDIR_DENIED_MESSAGES
            case .fallbackReaderBehind: MESH_REDIR_FB_READER_BEHIND
            case .fallbackPeer: MESH_REDIR_FB_PEER
            case .socketsLeft: MESH_REDIR_SOCKETS_LEFT
            case .fallbackUnsupported: MESH_REDIR_FB_UNSUPPORTED
            case .localCCApplied: MESH_REDIR_CC_APPLIED
            case .localCCOwn: MESH_REDIR_CC_OWN
            case .localCCFailed: MESH_REDIR_CC_FAILED
            case .fallbackProxied: MESH_REDIR_FB_PROXIED
            }
        }

        /// nil for an index this meshd does not know.
        init?(abi: UInt32) {
            guard let c = Self.allCases.first(where: { $0.abi.rawValue == abi }) else { return nil }
            self = c
        }

        /// Every index the header defines (below MESH_REDIR_MAX); DatapathTests checks that
        /// each has a case here.
        static var headerValues: Range<UInt32> { 0..<MESH_REDIR_MAX.rawValue }
    }

    public struct SocketEntry: Sendable {
        public var localIP: UInt32 // host order
        public var remoteIP: UInt32
        public var localPort: UInt16
        public var remotePort: UInt16
        public var clientEndpoint: UInt32
        public var serverEndpoint: UInt32
        public var mode: String
        public var fallback: String
        public var revision: UInt32
        public var ageSeconds: Double
    }

    let object: LoadedBPFObject
    /// Pinned maps this start replaced because their layout had changed (see
    /// `BPFObjectSpec.load`), one "name: what differs" line each.
    public var replacedMaps: [String] { object.replacedMaps }
    public let sockops: BPFProgram
    public let skmsg: BPFProgram
    let sockhash: BPFMap
    let state: BPFMap
    let config: BPFMap
    let stats: BPFMap
    public let cgroup: String
    let linkPath: String

    /// Loads and pins the programs, re-using the node's pinned maps. Nothing runs them
    /// until `attach()`, so that a caller can `configure` first: a config map that an
    /// upgrade replaced starts out all zeros, which would switch redirection off (and make
    /// accelerated connections fall back) for as long as it stayed unwritten.
    public init(pinDir: String, cgroup: String, nodeID: UInt32, sizes: MapSizes = MapSizes()) throws {
        self.cgroup = cgroup
        linkPath = "\(pinDir)/mesh_sockops_link"
        let spec = try BPFObjectSpec(bytes: EmbeddedBPF.sockops.bytes, name: "sockops", pinRoot: pinDir)
        try spec.setConstant("cfg_node_id", nodeID)
        try sizes.apply(to: spec)
        object = try spec.load()
        sockops = try object.program("mesh_sockops")
        skmsg = try object.program("mesh_skmsg")
        sockhash = try object.map(MESH_MAP_SOCKHASH)
        state = try object.map(MESH_MAP_SOCK_STATE)
        config = try object.map(MESH_MAP_REDIRECT_CFG)
        stats = try object.map(MESH_MAP_REDIRECT_STATS)
        for p in [sockops, skmsg] { try p.pin(at: "\(pinDir)/\(p.name)") }
    }

    /// Attaches sk_msg to the sockhash and sock_ops to the cgroup, replacing what an
    /// earlier meshd attached (the programs it replaces keep running until then).
    public func attach() throws {
        // One sk_msg program per sockhash: attaching replaces the previous one.
        try ProgramAttachment.attach(skmsg, map: sockhash, type: BPF_SK_MSG_VERDICT)
        try attachSockops()
    }

    private func attachSockops() throws {
        try ProgramAttachment.attachLink(sockops, cgroup: cgroup, type: BPF_CGROUP_SOCK_OPS, pinnedAt: linkPath)
    }

    /// True when the pinned link holds this meshd's sock_ops program.
    public var isAttached: Bool { ProgramAttachment.linkedProgramID(pinnedAt: linkPath) == sockops.id }

    public struct Config: Sendable, Equatable {
        public var enabled: Bool
        public var maxMessageBytes: UInt32
        public var maxQueuedBytes: UInt32
        /// Congestion control for connections between two local endpoints; "" leaves
        /// them theirs. At most 15 bytes (MESH_CC_NAME_MAX with its NUL).
        public var localCongestionControl: String
        public init(enabled: Bool, maxMessageBytes: UInt32, maxQueuedBytes: UInt32, localCongestionControl: String = "") {
            self.enabled = enabled
            self.maxMessageBytes = maxMessageBytes
            self.maxQueuedBytes = maxQueuedBytes
            self.localCongestionControl = localCongestionControl
        }
    }

    public func configure(_ c: Config) throws {
        var v = mesh_redirect_config()
        v.enabled = c.enabled ? 1 : 0
        v.max_message_bytes = c.maxMessageBytes
        v.max_queued_bytes = c.maxQueuedBytes
        let name = Array(c.localCongestionControl.utf8)
        guard name.count < Int(MESH_CC_NAME_MAX) else {
            throw DatapathError("congestion control name \"\(c.localCongestionControl)\" (at most \(MESH_CC_NAME_MAX - 1) bytes)", errno: ENAMETOOLONG)
        }
        withUnsafeMutableBytes(of: &v.local_cc) { $0.copyBytes(from: name) } // the rest stays NUL
        try config.update(UInt32(0), v)
    }

    public func currentConfig() throws -> Config {
        var v = try config.lookup(UInt32(0), as: mesh_redirect_config.self) ?? mesh_redirect_config()
        let cc = withUnsafeBytes(of: &v.local_cc) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        return Config(enabled: v.enabled != 0, maxMessageBytes: v.max_message_bytes, maxQueuedBytes: v.max_queued_bytes,
                      localCongestionControl: cc)
    }

    /// Counters summed over CPUs.
    public func counters() throws -> [Counter: UInt64] {
        var out: [Counter: UInt64] = [:]
        for c in Counter.allCases {
            out[c] = try stats.sumPerCPU(c.abi.rawValue)
        }
        return out
    }

    /// Sockets in the sockhash now (two per accelerated connection).
    public func socketCount() throws -> Int { try sockhash.count() }

    /// The sockhash and the per-socket state, for status and mesh_bpf_map_entries.
    public func mapStats() -> [MeshDatapath.MapStats] { [sockhash, state].map { MeshDatapath.MapStats($0) } }

    public func sockets() throws -> [SocketEntry] {
        let now = MeshDatapath.monotonicNanoseconds()
        return try state.entriesRaw().map { k, v in
            let key = k.withUnsafeBytes { $0.loadUnaligned(as: mesh_sock_key.self) }
            let s = v.withUnsafeBytes { $0.loadUnaligned(as: mesh_sock_state.self) }
            let mode = switch UInt32(s.mode) {
            case _ where s.left != 0: "stack" // out of the sockhash: plain TCP
            case MESH_SOCK_ACCELERATED.rawValue: "accelerated"
            case MESH_SOCK_PASSTHROUGH.rawValue: "passthrough"
            case MESH_SOCK_DENIED.rawValue: "denied"
            default: "undecided"
            }
            let fallback = Counter(abi: UInt32(s.fallback)).map(Self.fallbackName) ?? ""
            return SocketEntry(localIP: UInt32(bigEndian: key.local_ip), remoteIP: UInt32(bigEndian: key.remote_ip),
                               localPort: key.local_port, remotePort: key.remote_port, clientEndpoint: s.client_endpoint,
                               serverEndpoint: s.server_endpoint, mode: mode, fallback: fallback, revision: s.revision,
                               ageSeconds: Double(now &- s.created) / 1e9)
        }
    }

    /// The `reason` label of a fallback counter; "" for the others.
    public static func fallbackName(_ counter: Counter) -> String {
        switch counter {
        case .fallbackNotLocal: "not_local"
        case .fallbackDisabled: "disabled"
        case .fallbackNoPeer: "no_peer"
        case .fallbackLargeWrite: "large_write"
        case .fallbackRedirectFailed: "redirect_failed"
        case .fallbackReaderBehind: "reader_behind"
        case .fallbackPeer: "peer"
        case .fallbackUnsupported: "unsupported"
        case .fallbackProxied: "proxied"
        default: "" // not a fallback: mesh_sock_state.fallback is 0 (MESH_REDIR_MESSAGES) until one happens
        }
    }
}
