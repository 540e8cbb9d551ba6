import Datapath
import Foundation
import Logging
import MeshModel

/// The socket-redirect switch: flag or config file at start, `meshctl config set` at run
/// time (persisted, so it survives restarts). Switching off makes existing accelerated
/// connections fall back to the stack; switching on takes new connections.
final class RedirectControl: @unchecked Sendable {
    /// Writes above this go through the stack for the rest of the connection: the
    /// kernel's redirect loses to the stack's GSO path on bulk (see README, Socket redirection).
    static let maxMessageBytes: UInt32 = 16384

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
        let enabled = try store.setting(RuntimeConfig.socketRedirect).flatMap(RuntimeConfig.parseSwitch) ?? true
        try apply(enabled)
    }

    private func apply(_ enabled: Bool) throws(MeshError) {
        do { try redirect.configure(.init(enabled: enabled, maxMessageBytes: Self.maxMessageBytes)) } catch {
            throw MeshError(.datapath, "cannot switch socket redirection \(enabled ? "on" : "off"): \(error)")
        }
        logger.info("socket redirection \(enabled ? "on" : "off")")
    }

    func get() throws(MeshError) -> [String: String] {
        let c: SocketRedirect.Config
        do { c = try redirect.currentConfig() } catch { throw MeshError(.datapath, "cannot read the redirect switch: \(error)") }
        return [RuntimeConfig.socketRedirect: c.enabled ? "on" : "off"]
    }

    func set(_ key: String, _ value: String) throws(MeshError) -> [String: String] {
        guard key == RuntimeConfig.socketRedirect else {
            throw MeshError.invalid("unknown setting \"\(key)\"", hint: "settings: \(RuntimeConfig.keys.joined(separator: ", "))")
        }
        guard let on = RuntimeConfig.parseSwitch(value) else { throw MeshError.invalid("\(key) must be on or off, not \"\(value)\"") }
        lock.lock()
        defer { lock.unlock() }
        try store.setSetting(key, on ? "on" : "off")
        try apply(on)
        return try get()
    }
}
