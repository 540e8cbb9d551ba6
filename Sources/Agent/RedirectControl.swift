import Datapath
import Foundation
import Logging
import MeshModel

/// The socket-redirect switch and the node-local congestion control: flag or config file
/// at start, `meshctl config set` at run time (persisted, so it survives restarts).
/// Switching redirection off makes existing accelerated connections fall back to the
/// stack; switching on takes new connections. A new congestion control applies to
/// connections established from then on.
final class RedirectControl: @unchecked Sendable {
    /// Default for `socket-redirect-max-write`: a write above 64 KiB sends its connection
    /// through the stack (and out of the sockhash). Such writes are bulk transfers, where
    /// the stack's segmentation offloads keep up with the redirect and its flow control
    /// paces the writer; a redirected bulk stream soon outruns its reader and falls back
    /// anyway, and on this project's kernel (6.18) the TCP connection that then takes over
    /// sometimes settles at half the plain throughput (measured with tools/bench-sockmap).
    /// Request/response messages up to 64 KiB stay accelerated.
    static let defaultMaxWrite: UInt32 = 64 << 10
    /// A reader that leaves this much unread in its redirect queue sends its writer's
    /// direction to the stack, whose flow control holds a writer back; the kernel's
    /// redirect does not (mesh_abi.h, mesh_redirect_config.max_queued_bytes). About what
    /// TCP itself would buffer between two sockets with default buffer sizes.
    static let defaultMaxQueued: UInt32 = 4 << 20
    /// Default for `local-congestion-control`. A connection between two sockets of one
    /// node has no bottleneck to model and a round trip of microseconds, so it wants an
    /// algorithm that does not pace: with BBR and no fq qdisc (this project's kernel), one
    /// stream's segments are sent from both CPUs and arrive out of order. CUBIC is the
    /// kernel's own default and built into the kernels SwiftMesh runs on. Measured with
    /// tools/bench-sockmap (README, "Node-local congestion control").
    static let defaultLocalCC = "cubic"
    /// Where the kernel lists the congestion controls it has (built in or loaded).
    static let availableCCPath = "/proc/sys/net/ipv4/tcp_available_congestion_control"

    let redirect: SocketRedirect
    let store: Store
    let logger: Logger
    private let lock = NSLock()

    init(redirect: SocketRedirect, store: Store, settings: NodeSettings, logger: Logger) throws(MeshError) {
        self.redirect = redirect
        self.store = store
        self.logger = logger
        if let forced = settings.socketRedirect {
            try store.setSetting(RuntimeConfig.socketRedirect, forced ? "on" : "off")
        }
        if let forced = settings.localCongestionControl {
            // Asked for on the command line or in the config file, and checked with
            // checkedCC by Daemon.run before anything changed: a name this kernel lacks
            // stopped the start there.
            try store.setSetting(RuntimeConfig.localCongestionControl, forced)
        }
        try apply(stored())
    }

    private func stored() throws(MeshError) -> SocketRedirect.Config {
        let enabled = try store.setting(RuntimeConfig.socketRedirect).flatMap(RuntimeConfig.parseSwitch) ?? true
        let maxWrite = try store.setting(RuntimeConfig.socketRedirectMaxWrite).flatMap { UInt32($0) } ?? Self.defaultMaxWrite
        let maxQueued = try store.setting(RuntimeConfig.socketRedirectMaxQueued).flatMap { UInt32($0) } ?? Self.defaultMaxQueued
        var cc = try store.setting(RuntimeConfig.localCongestionControl) ?? Self.defaultLocalCC
        if cc == RuntimeConfig.localCongestionControlKeep {
            cc = ""
        } else if let available = Self.availableCCs(), !available.contains(cc) {
            // Stored or default, but this kernel (perhaps a new one) lacks it: every local
            // connection would count a refusal. Keep their own until told otherwise.
            logger.warning("local congestion control \(cc) is not available in this kernel; local connections keep the node's",
                           metadata: ["available": "\(available.joined(separator: " "))"])
            cc = ""
        }
        return .init(enabled: enabled, maxMessageBytes: maxWrite, maxQueuedBytes: maxQueued, localCongestionControl: cc)
    }

    private func apply(_ c: SocketRedirect.Config) throws(MeshError) {
        do { try redirect.configure(c) } catch {
            throw MeshError(.datapath, "cannot configure socket redirection: \(error)")
        }
        logger.info("socket redirection \(c.enabled ? "on" : "off")",
                    metadata: ["max_write": "\(c.maxMessageBytes)", "max_queued": "\(c.maxQueuedBytes)",
                               "local_congestion_control": "\(c.localCongestionControl.isEmpty ? RuntimeConfig.localCongestionControlKeep : c.localCongestionControl)"])
    }

    /// The congestion controls this kernel has, or nil if it does not say.
    static func availableCCs() -> [String]? {
        guard let text = try? String(contentsOfFile: availableCCPath, encoding: .utf8) else { return nil }
        return text.split(whereSeparator: \.isWhitespace).map(String.init)
    }

    /// `value` if it is `keep` or a congestion control this kernel has; else a clear error.
    static func checkedCC(_ value: String) throws(MeshError) -> String {
        let key = RuntimeConfig.localCongestionControl
        guard RuntimeConfig.isCongestionControlName(value) else {
            throw MeshError.invalid("\(key) must be a congestion control name such as cubic or reno, or keep, not \"\(value)\"")
        }
        guard value != RuntimeConfig.localCongestionControlKeep else { return value }
        guard let available = availableCCs() else {
            throw MeshError(.datapath, "cannot read \(availableCCPath) to check \(key) \"\(value)\"")
        }
        guard available.contains(value) else {
            throw MeshError.invalid("\(key) \"\(value)\": this kernel has no such congestion control",
                                    hint: "available: \(available.joined(separator: ", ")), or keep; a module may need loading first (modprobe tcp_\(value))")
        }
        return value
    }

    func get() throws(MeshError) -> [String: String] {
        let c: SocketRedirect.Config
        do { c = try redirect.currentConfig() } catch { throw MeshError(.datapath, "cannot read the redirect switch: \(error)") }
        return [RuntimeConfig.socketRedirect: c.enabled ? "on" : "off", RuntimeConfig.socketRedirectMaxWrite: String(c.maxMessageBytes),
                RuntimeConfig.socketRedirectMaxQueued: String(c.maxQueuedBytes),
                RuntimeConfig.localCongestionControl: c.localCongestionControl.isEmpty ? RuntimeConfig.localCongestionControlKeep : c.localCongestionControl]
    }

    func set(_ key: String, _ value: String) throws(MeshError) -> [String: String] {
        let normalised: String
        switch key {
        case RuntimeConfig.socketRedirect:
            guard let on = RuntimeConfig.parseSwitch(value) else { throw MeshError.invalid("\(key) must be on or off, not \"\(value)\"") }
            normalised = on ? "on" : "off"
        case RuntimeConfig.socketRedirectMaxWrite, RuntimeConfig.socketRedirectMaxQueued:
            guard let n = UInt32(value) else {
                throw MeshError.invalid("\(key) must be a number of bytes (0: no limit), not \"\(value)\"")
            }
            normalised = String(n)
        case RuntimeConfig.localCongestionControl:
            normalised = try Self.checkedCC(value)
        default:
            throw MeshError.invalid("unknown setting \"\(key)\"", hint: "settings: \(RuntimeConfig.keys.joined(separator: ", "))")
        }
        lock.lock()
        defer { lock.unlock() }
        try store.setSetting(key, normalised)
        try apply(stored())
        return try get()
    }
}
