import Foundation
import MeshModel
import NIOConcurrencyHelpers
import NIOCore

/// What the proxy knows about each backend endpoint, shared by every connection and event
/// loop: latency estimate, requests in flight, failures in a row, ejection.
///
/// One table behind one lock rather than one per event loop: the pending limit is a limit
/// per endpoint, not per loop, and an endpoint that refuses connections should be ejected
/// after N failures anywhere, not N on every loop. The lock is held for a few arithmetic
/// operations per choice and per outcome, well below what one request costs otherwise.
final class EndpointHealth: Sendable {
    /// Peak-EWMA as Linkerd (tower's PeakEwma) computes it: a latency above the estimate
    /// replaces it at once; one below pulls it down with weight 1 − e^(−Δt/τ); reading the
    /// estimate decays it toward zero the same way, so an endpoint left alone after a slow
    /// spell is tried again.
    struct Tuning: Sendable {
        /// τ, seconds (Linkerd: 10 s).
        var decaySeconds = 10.0
        /// What each request in flight costs on an endpoint with no response yet (tower's
        /// penalty; Linkerd's default RTT is 30 ms). Idle and unmeasured, it costs nothing,
        /// so a new endpoint is tried at once rather than left out behind measured ones.
        var unmeasuredPenaltySeconds = 0.030
    }

    enum Choice: Equatable {
        case chosen(ProxyBackendEndpoint)
        /// Every endpoint of the group has maxPendingPerEndpoint requests in flight.
        case allAtPendingLimit
    }

    /// An ejection that just began, to log and count outside the lock.
    struct Ejection: Sendable {
        var endpoint: PeerAddress
        var seconds: Double
        /// How many times in a row it has now been ejected.
        var count: Int
    }

    private struct State {
        var estimate: Double
        var sampled = false
        var updated: NIODeadline
        var inFlight = 0
        var failuresInARow = 0
        var ejectionsInARow = 0
        var ejectedUntil: NIODeadline?

        func isEjected(at now: NIODeadline) -> Bool { ejectedUntil.map { now < $0 } ?? false }
    }

    private let tuning: Tuning
    private let table = NIOLockedValueBox<[PeerAddress: State]>([:])

    init(tuning: Tuning = Tuning()) { self.tuning = tuning }

    /// Power of two choices among the group's usable endpoints (not ejected, below the
    /// pending limit; those not in `avoiding` when any such is left), by latency estimate
    /// × (in flight + 1). The chosen one's in-flight count goes up: give it back with
    /// `release`.
    func choose<R: RandomNumberGenerator>(from endpoints: [ProxyBackendEndpoint], avoiding: Set<PeerAddress>,
                                          maxPending: Int, using random: inout R, now: NIODeadline = .now()) -> Choice {
        precondition(!endpoints.isEmpty, "a group without endpoints has nothing to choose from")
        return table.withLockedValue { table in
            let fresh = State(estimate: 0, updated: now)
            let belowLimit = endpoints.filter { (table[PeerAddress($0)]?.inFlight ?? 0) < maxPending }
            guard !belowLimit.isEmpty else { return .allAtPendingLimit }
            var usable = belowLimit.filter { !(table[PeerAddress($0)]?.isEjected(at: now) ?? false) }
            // Ejection may never leave a group with nothing to send to.
            if usable.isEmpty { usable = belowLimit }
            let untried = usable.filter { !avoiding.contains(PeerAddress($0)) }
            if !untried.isEmpty { usable = untried }
            var pick = usable[0]
            if usable.count > 1 {
                let i = Int.random(in: 0..<usable.count, using: &random)
                var j = Int.random(in: 0..<(usable.count - 1), using: &random)
                if j >= i { j += 1 }
                let (a, b) = (usable[i], usable[j])
                let costA = cost(&table[PeerAddress(a), default: fresh], now: now)
                let costB = cost(&table[PeerAddress(b), default: fresh], now: now)
                pick = costB < costA ? b : a
            }
            table[PeerAddress(pick), default: fresh].inFlight += 1
            return .chosen(pick)
        }
    }

    private func cost(_ state: inout State, now: NIODeadline) -> Double {
        guard state.sampled else { return tuning.unmeasuredPenaltySeconds * Double(state.inFlight) }
        state.estimate *= weight(since: state.updated, now: now)
        state.updated = now
        return state.estimate * Double(state.inFlight + 1)
    }

    /// e^(−Δt/τ): how much of the old estimate survives Δt.
    private func weight(since then: NIODeadline, now: NIODeadline) -> Double {
        let elapsed = Double(max(0, (now - then).nanoseconds)) / 1e9
        return exp(-elapsed / tuning.decaySeconds)
    }

    /// A response head arrived after `latency`: its status counts as a success (below 500)
    /// or a failure of the endpoint.
    func responded(_ endpoint: PeerAddress, latency: TimeAmount, status: Int, group: [ProxyBackendEndpoint],
                   resilience: ProxyResilience, now: NIODeadline = .now()) -> Ejection? {
        table.withLockedValue { table in
            guard var state = table[endpoint] else { return nil }
            let sample = Double(max(0, latency.nanoseconds)) / 1e9
            if !state.sampled || sample > state.estimate {
                state.estimate = sample
            } else {
                let w = weight(since: state.updated, now: now)
                state.estimate = state.estimate * w + sample * (1 - w)
            }
            state.sampled = true
            state.updated = now
            table[endpoint] = state
            guard status >= 500 else {
                table[endpoint]?.failuresInARow = 0
                table[endpoint]?.ejectionsInARow = 0
                return nil
            }
            return failed(endpoint, group: group, resilience: resilience, now: now, table: &table)
        }
    }

    /// The attempt got no response: refused, reset, closed or timed out.
    func failed(_ endpoint: PeerAddress, group: [ProxyBackendEndpoint], resilience: ProxyResilience,
                now: NIODeadline = .now()) -> Ejection? {
        table.withLockedValue { failed(endpoint, group: group, resilience: resilience, now: now, table: &$0) }
    }

    private func failed(_ endpoint: PeerAddress, group: [ProxyBackendEndpoint], resilience: ProxyResilience,
                        now: NIODeadline, table: inout [PeerAddress: State]) -> Ejection? {
        guard var state = table[endpoint], !state.isEjected(at: now) else { return nil }
        state.failuresInARow += 1
        defer { table[endpoint] = state }
        guard state.failuresInARow >= resilience.consecutiveFailures else { return nil }
        // Envoy's max_ejection_percent, and at least one endpoint always left.
        let ejected = group.filter { PeerAddress($0) != endpoint && (table[PeerAddress($0)]?.isEjected(at: now) ?? false) }.count
        let allowed = min(Int((resilience.maxEjectedPercent / 100 * Double(group.count)).rounded(.down)), group.count - 1)
        guard ejected + 1 <= allowed else { return nil }
        state.ejectionsInARow += 1
        state.failuresInARow = 0
        let seconds = min(resilience.baseEjectionSeconds * pow(2, Double(min(state.ejectionsInARow - 1, 62))),
                          resilience.maxEjectionSeconds)
        state.ejectedUntil = now + .configured(seconds: seconds)
        return Ejection(endpoint: endpoint, seconds: seconds, count: state.ejectionsInARow)
    }

    /// The attempt chosen by `choose` is over (its response ended, or it was given up).
    func release(_ endpoint: PeerAddress) {
        table.withLockedValue { table in
            if let n = table[endpoint]?.inFlight, n > 0 { table[endpoint]?.inFlight = n - 1 }
        }
    }

    /// Forgets endpoints no configured route can send to any more, unless requests to them
    /// are still in flight, so the table stays the size of the configuration.
    func keep(only endpoints: Set<PeerAddress>) {
        table.withLockedValue { table in
            table = table.filter { endpoints.contains($0.key) || $0.value.inFlight > 0 }
        }
    }

    /// Requests in flight to `endpoint` now (tests, metrics).
    func inFlight(_ endpoint: PeerAddress) -> Int { table.withLockedValue { $0[endpoint]?.inFlight ?? 0 } }
}
