import Datapath
import Foundation
import Logging
import MeshModel

/// The socket-redirect switch: flag or config file at start, `meshctl config set` at run
/// time (persisted, so it survives restarts). Switching off makes existing accelerated
/// connections fall back to the stack; switching on takes new connections.
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
        try apply(stored())
    }

    private func stored() throws(MeshError) -> SocketRedirect.Config {
        let enabled = try store.setting(RuntimeConfig.socketRedirect).flatMap(RuntimeConfig.parseSwitch) ?? true
        let maxWrite = try store.setting(RuntimeConfig.socketRedirectMaxWrite).flatMap { UInt32($0) } ?? Self.defaultMaxWrite
        let maxQueued = try store.setting(RuntimeConfig.socketRedirectMaxQueued).flatMap { UInt32($0) } ?? Self.defaultMaxQueued
        return .init(enabled: enabled, maxMessageBytes: maxWrite, maxQueuedBytes: maxQueued)
    }

    private func apply(_ c: SocketRedirect.Config) throws(MeshError) {
        do { try redirect.configure(c) } catch {
            throw MeshError(.datapath, "cannot configure socket redirection: \(error)")
        }
        logger.info("socket redirection \(c.enabled ? "on" : "off")",
                    metadata: ["max_write": "\(c.maxMessageBytes)", "max_queued": "\(c.maxQueuedBytes)"])
    }

    func get() throws(MeshError) -> [String: String] {
        let c: SocketRedirect.Config
        do { c = try redirect.currentConfig() } catch { throw MeshError(.datapath, "cannot read the redirect switch: \(error)") }
        return [RuntimeConfig.socketRedirect: c.enabled ? "on" : "off", RuntimeConfig.socketRedirectMaxWrite: String(c.maxMessageBytes),
                RuntimeConfig.socketRedirectMaxQueued: String(c.maxQueuedBytes)]
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
