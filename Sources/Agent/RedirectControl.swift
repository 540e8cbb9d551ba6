import Datapath
import Foundation
import Logging
import MeshModel

/// The socket-redirect switch: flag or config file at start, `meshctl config set` at run
/// time (persisted, so it survives restarts). Switching off makes existing accelerated
/// connections fall back to the stack; switching on takes new connections.
final class RedirectControl: @unchecked Sendable {
    /// Default for `socket-redirect-max-write`: no limit. Measured on this project's
    /// kernel (6.18), redirecting bulk is 3-4x faster than the stack, while a direction
    /// that has fallen back still pays the redirect-aware send path (tools/bench-sockmap).
    static let defaultMaxWrite: UInt32 = 0
    /// A direction that redirects this much without hearing back takes the stack, whose
    /// flow control holds a writer back when its reader stalls; the kernel's redirect does
    /// not (mesh_abi.h, mesh_sock_state.unanswered). Request/response never gets near it.
    static let maxUnanswered: UInt32 = 1 << 20

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
        return .init(enabled: enabled, maxMessageBytes: maxWrite, maxUnansweredBytes: Self.maxUnanswered)
    }

    private func apply(_ c: SocketRedirect.Config) throws(MeshError) {
        do { try redirect.configure(c) } catch {
            throw MeshError(.datapath, "cannot configure socket redirection: \(error)")
        }
        logger.info("socket redirection \(c.enabled ? "on" : "off")", metadata: ["max_write": "\(c.maxMessageBytes)"])
    }

    func get() throws(MeshError) -> [String: String] {
        let c: SocketRedirect.Config
        do { c = try redirect.currentConfig() } catch { throw MeshError(.datapath, "cannot read the redirect switch: \(error)") }
        return [RuntimeConfig.socketRedirect: c.enabled ? "on" : "off", RuntimeConfig.socketRedirectMaxWrite: String(c.maxMessageBytes)]
    }

    func set(_ key: String, _ value: String) throws(MeshError) -> [String: String] {
        let normalised: String
        switch key {
        case RuntimeConfig.socketRedirect:
            guard let on = RuntimeConfig.parseSwitch(value) else { throw MeshError.invalid("\(key) must be on or off, not \"\(value)\"") }
            normalised = on ? "on" : "off"
        case RuntimeConfig.socketRedirectMaxWrite:
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
