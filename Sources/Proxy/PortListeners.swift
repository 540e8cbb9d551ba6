import NIOConcurrencyHelpers
import NIOCore

/// Listening sockets by port, kept to the set of ports the configuration in force wants:
/// one no longer wanted is closed (the connections it took go on), one newly wanted is
/// bound. A bind that fails is forgotten, so that the next configuration tries again; one
/// that completes after its port was dropped is closed at once. The mTLS tunnel's port and
/// the ingress gateway's ports are both kept this way.
final class PortListeners: Sendable {
    private let bound = NIOLockedValueBox<[UInt16: (any Channel)?]>([:])

    /// Closes the listeners of ports not in `wanted` (`down` names each) and binds the
    /// missing ones with `bind`; `up` or `failed` reports how each bind ended.
    func update(_ wanted: Set<UInt16>, bind: (UInt16) -> EventLoopFuture<any Channel>,
                down: (UInt16) -> Void = { _ in },
                up: @escaping @Sendable (UInt16) -> Void, failed: @escaping @Sendable (UInt16, any Error) -> Void) {
        let (stale, start) = bound.withLockedValue { current -> ([(UInt16, any Channel)], [UInt16]) in
            var stale: [(UInt16, any Channel)] = []
            for (port, channel) in current where !wanted.contains(port) {
                if let channel { stale.append((port, channel)) }
                current[port] = nil
            }
            let start = wanted.filter { current[$0] == nil }.sorted()
            for port in start { current[port] = .some(nil) }
            return (stale, start)
        }
        for (port, channel) in stale {
            down(port)
            channel.close(promise: nil)
        }
        for port in start {
            bind(port).whenComplete { [bound] result in
                switch result {
                case .success(let channel):
                    let kept = bound.withLockedValue { current -> Bool in
                        guard let slot = current[port], slot == nil else { return false }
                        current[port] = channel
                        return true
                    }
                    if kept { up(port) } else { channel.close(promise: nil) }
                case .failure(let error):
                    failed(port, error)
                    bound.withLockedValue { current in
                        if let slot = current[port], slot == nil { current[port] = nil }
                    }
                }
            }
        }
    }

    func closeAll() {
        let all = bound.withLockedValue { current -> [any Channel] in
            defer { current = [:] }
            return current.values.compactMap { $0 }
        }
        for c in all { c.close(promise: nil) }
    }
}
