import MeshModel
import NIOConcurrencyHelpers

/// The L7 policy in force, replaced whole and atomically when meshd sends a configuration:
/// a request is judged entirely by the old index or entirely by the new one.
final class PolicyStore: Sendable {
    enum Outcome: Equatable {
        case applied(UInt64)
        /// Older than the configuration in force, which stays; carries the current generation.
        case stale(UInt64)
        case rejected(ProxyConfigRejection)
    }

    private let current: NIOLockedValueBox<L7PolicyIndex>

    init() {
        // The empty configuration has no rule to compile, so it cannot fail.
        current = NIOLockedValueBox(try! L7PolicyIndex(.empty))
    }

    var index: L7PolicyIndex { current.withLockedValue { $0 } }

    /// Compiles `config` (slow for big ones: call it off the event loops) and swaps it in
    /// unless a newer one is already in force.
    func apply(_ config: ProxyConfig) -> Outcome {
        let index: L7PolicyIndex
        do {
            index = try L7PolicyIndex(config)
        } catch {
            return .rejected(ProxyConfigRejection(generation: config.generation, reason: error.description))
        }
        return current.withLockedValue { inForce in
            // Compared under the lock so that two configs applied at once cannot both win.
            guard config.generation >= inForce.generation else { return .stale(inForce.generation) }
            inForce = index
            return .applied(config.generation)
        }
    }
}
