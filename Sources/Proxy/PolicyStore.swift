import MeshModel
import NIOConcurrencyHelpers

/// The L7 policy and the routes in force, replaced whole and atomically when meshd sends a
/// configuration: a request is judged and routed entirely by the old configuration or
/// entirely by the new one.
final class PolicyStore: Sendable {
    /// One configuration, compiled.
    struct InForce: Sendable {
        var index: L7PolicyIndex
        var routes: RoutedFrontends
        var gateways: GatewayPorts
    }

    enum Outcome: Equatable {
        case applied(UInt64)
        /// Older than the configuration in force, which stays; carries the current generation.
        case stale(UInt64)
        case rejected(ProxyConfigRejection)
    }

    private let current: NIOLockedValueBox<InForce>

    init() {
        // The empty configuration has no rule to compile, so it cannot fail.
        current = NIOLockedValueBox(InForce(index: try! L7PolicyIndex(.empty), routes: .empty, gateways: .empty))
    }

    var index: L7PolicyIndex { current.withLockedValue { $0.index } }

    var inForce: InForce { current.withLockedValue { $0 } }

    /// Compiles `config` (slow for big ones: call it off the event loops) and swaps it in
    /// unless a newer one is already in force.
    func apply(_ config: ProxyConfig) -> Outcome {
        let compiled: InForce
        do {
            compiled = InForce(index: try L7PolicyIndex(config), routes: try RoutedFrontends(config), gateways: try GatewayPorts(config))
        } catch {
            return .rejected(ProxyConfigRejection(generation: config.generation, reason: error.description))
        }
        return current.withLockedValue { inForce in
            // Compared under the lock so that two configs applied at once cannot both win.
            guard config.generation >= inForce.index.generation else { return .stale(inForce.index.generation) }
            inForce = compiled
            return .applied(config.generation)
        }
    }
}
