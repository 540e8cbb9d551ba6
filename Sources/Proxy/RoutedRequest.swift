import MeshModel
import NIOCore
import NIOHTTP1

/// A routed request's progress across its attempts.
struct RoutedRequest {
    /// The most request body kept to send again on a retry; a larger body makes the request
    /// non-retryable.
    static let maxKeptBodyBytes = 64 * 1024

    /// Why the last attempt failed: what the client gets when no retry follows.
    enum Failure {
        case noResponse(UpstreamFailure)
        /// A response with a retryable status, already discarded for a retry that then could
        /// not be sent.
        case status(Int)
    }

    let frontend: RoutedFrontend
    let rule: RoutedRule
    let resilience: ProxyResilience
    /// What every attempt sends: the client's head with the rule's filters applied.
    let head: HTTPRequestHead
    /// The client's request as L7 policy reads it.
    let policyRequest: L7Request
    /// Body parts received so far, to send again on a retry; nil when the rule has no retry
    /// or the body outgrew maxKeptBodyBytes.
    private(set) var kept: [HTTPClientRequestPart]?
    private var keptBytes = 0
    var attempts = 0
    var tried: Set<PeerAddress> = []
    /// The attempt in progress: its endpoint (whose in-flight slot it holds) and group.
    var current: (endpoint: ProxyBackendEndpoint, group: [ProxyBackendEndpoint])?
    /// When the attempt's request went out on a connected socket (connecting not counted:
    /// the latency estimate is the endpoint's, not the handshake's).
    var attemptStarted = NIODeadline.now()
    var lastFailure: Failure?
    var requestTimer: Scheduled<Void>?
    var backoff: Scheduled<Void>?

    init(frontend: RoutedFrontend, rule: RoutedRule, resilience: ProxyResilience, head: HTTPRequestHead,
         policyRequest: L7Request, matchedPrefix: Substring?) {
        self.frontend = frontend
        self.rule = rule
        self.resilience = resilience
        self.head = rule.filters.upstreamHead(head, matchedPrefix: matchedPrefix)
        self.policyRequest = policyRequest
        kept = rule.retry == nil ? nil : []
    }

    mutating func keep(_ part: HTTPClientRequestPart) {
        guard kept != nil else { return }
        if case .body(.byteBuffer(let chunk)) = part {
            keptBytes += chunk.readableBytes
            guard keptBytes <= Self.maxKeptBodyBytes else {
                kept = nil
                return
            }
        }
        kept?.append(part)
    }

    /// Whether the rule would allow another attempt (the budget is asked separately).
    var mayRetry: Bool {
        guard let retry = rule.retry, kept != nil else { return false }
        return attempts <= retry.attempts
    }

    func stopTimers() {
        requestTimer?.cancel()
        backoff?.cancel()
    }
}

/// Where a routed request goes next.
enum BackendPick {
    case chosen(ProxyBackendEndpoint, group: [ProxyBackendEndpoint])
    /// The rule has no backend with a weight (500).
    case noBackends
    /// Its backends have no ready endpoint (503).
    case noReadyEndpoint
    /// Every endpoint of the chosen group has its pending limit in flight (503).
    case allAtPendingLimit
}

extension RoutedRule {
    /// A weighted random backend group (weight 0 never), then an endpoint in it by power of
    /// two choices; the endpoint's in-flight count is taken.
    func choose<R: RandomNumberGenerator>(health: EndpointHealth, avoiding: Set<PeerAddress>,
                                          resilience: ProxyResilience, using random: inout R) -> BackendPick {
        let weighted = rule.backends.filter { $0.weight > 0 }
        guard !weighted.isEmpty else { return .noBackends }
        let ready = weighted.filter { !$0.endpoints.isEmpty }
        guard !ready.isEmpty else { return .noReadyEndpoint }
        var ticket = UInt64.random(in: 0..<ready.reduce(0) { $0 + UInt64($1.weight) }, using: &random)
        var group = ready[ready.count - 1]
        for candidate in ready {
            if ticket < UInt64(candidate.weight) {
                group = candidate
                break
            }
            ticket -= UInt64(candidate.weight)
        }
        switch health.choose(from: group.endpoints, avoiding: avoiding, maxPending: resilience.maxPendingPerEndpoint,
                             using: &random) {
        case .chosen(let endpoint): return .chosen(endpoint, group: group.endpoints)
        case .allAtPendingLimit: return .allAtPendingLimit
        }
    }
}
