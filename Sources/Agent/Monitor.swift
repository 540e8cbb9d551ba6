import Datapath
import Foundation
import MeshModel
import NIOCore

/// Fans datapath events out to `meshctl monitor` streams. A subscriber that cannot keep
/// up loses the oldest events, never blocks the reader of the ring buffer.
final class EventHub: @unchecked Sendable {
    enum Event: Sendable {
        case policy(MeshDatapath.PolicyEvent)
        case loadBalancing(MeshDatapath.LBEvent)
        case l7(L7Event)
    }

    /// Optional events the kernel (or the proxy) writes only while someone reads them.
    enum Interest: Sendable { case verdicts, loadBalancing, l7 }

    private let lock = NSLock()
    private var subscribers: [UUID: AsyncStream<Event>.Continuation] = [:]
    private var watchers: [Interest: Set<UUID>] = [:]
    /// Told when the first subscriber with an interest arrives and when the last leaves.
    private let onInterest: @Sendable (Interest, Bool) -> Void

    init(onInterest: @escaping @Sendable (Interest, Bool) -> Void = { _, _ in }) {
        self.onInterest = onInterest
    }

    func publish(_ event: Event) {
        let subs = lock.withLock { Array(subscribers.values) }
        for s in subs { s.yield(event) }
    }

    func subscribe(interests: Set<Interest>) -> AsyncStream<Event> {
        let id = UUID()
        let (stream, continuation) = AsyncStream<Event>.makeStream(bufferingPolicy: .bufferingNewest(4096))
        continuation.onTermination = { [weak self] _ in self?.unsubscribe(id) }
        let firsts = lock.withLock { () -> [Interest] in
            subscribers[id] = continuation
            return interests.filter { watchers[$0, default: []].insert(id).inserted && watchers[$0]!.count == 1 }
        }
        for i in firsts { onInterest(i, true) }
        return stream
    }

    private func unsubscribe(_ id: UUID) {
        let lasts = lock.withLock { () -> [Interest] in
            subscribers[id] = nil
            return watchers.keys.filter { watchers[$0]!.remove(id) != nil && watchers[$0]!.isEmpty }
        }
        for i in lasts { onInterest(i, false) }
    }
}

/// Turns kernel events into MonitorEvents with endpoint, identity and rule names.
struct EventResolver: Sendable {
    let store: Store
    let policy: PolicyEngine
    let services: ServiceManager.Names

    func resolve(_ e: MeshDatapath.LBEvent) -> MonitorEvent {
        let f = services.frontend(e.frontendID)
        let client = services.endpoint(cgroup: e.cgroupID) ?? "cgroup \(e.cgroupID)"
        let refused = e.backendID == 0
        var m = MonitorEvent(
            time: Date(), type: "lb", endpoint: client, direction: "egress", source: "",
            destination: IPv4Address(e.vip).description, sourcePort: 0, destinationPort: Int(e.vport), proto: ProtocolName.name(e.proto),
            peerIdentity: 0, peer: "", verdict: refused ? "refused" : "translated",
            reason: refused ? "no ready backend" : e.affinity ? "session affinity" : e.connect ? "connect" : "sendmsg",
            rule: refused ? "" : "\(IPv4Address(e.backendAddress)):\(e.backendPort)", revision: 0)
        m.service = f.map { "\($0.service):\($0.port)" } ?? "frontend \(e.frontendID)"
        m.backend = refused ? "" : services.endpoint(e.backendID)
        return m
    }

    func resolve(_ e: L7Event) -> MonitorEvent {
        func split(_ s: String) -> (String, Int) {
            guard let i = s.lastIndex(of: ":") else { return (s, 0) }
            return (String(s[..<i]), Int(s[s.index(after: i)...]) ?? 0)
        }
        let (src, sport) = split(e.source), (dst, dport) = split(e.destination)
        // Endpoint names are unique on a node, as the other events show them.
        func name(_ qualified: String?) -> String? { qualified.map { String($0.split(separator: "/").last ?? Substring($0)) } }
        var m = MonitorEvent(
            time: Date(timeIntervalSince1970: Double(e.timestamp) / 1e9), type: "l7", endpoint: name(e.sourceEndpoint) ?? src,
            direction: "egress", source: src, destination: dst, sourcePort: sport, destinationPort: dport, proto: "HTTP",
            peerIdentity: Int(e.sourceIdentity), peer: policy.describe(identity: e.sourceIdentity),
            verdict: e.verdict.rawValue, reason: e.error ?? "", rule: e.rule, revision: 0)
        m.http = .init(method: e.method, path: e.path, host: e.host, status: e.status, latencySeconds: e.latencySeconds,
                       destinationEndpoint: name(e.destinationEndpoint))
        m.http?.service = e.service
        m.http?.routeRule = e.routeRule
        m.http?.attempts = e.attempts
        m.http?.tunnel = e.tunnel
        m.http?.peerSPIFFEID = e.peerIdentity
        if e.tunnel != nil { m.proto = "mTLS" }
        return m
    }

    func resolve(_ e: MeshDatapath.PolicyEvent, endpoints: [Int: String]) async -> MonitorEvent {
        let peerName = policy.describe(identity: e.peerIdentity)
        let rule = policy.describe(rule: e.ruleID, revision: e.revision)
        return MonitorEvent(
            time: Date(), type: e.dropped ? "drop" : "verdict", endpoint: endpoints[Int(e.endpointID)] ?? "endpoint \(e.endpointID)",
            direction: e.direction.rawValue, source: IPv4Address(e.source).description, destination: IPv4Address(e.destination).description,
            sourcePort: Int(e.sourcePort), destinationPort: Int(e.destinationPort), proto: ProtocolName.name(e.proto),
            peerIdentity: Int(e.peerIdentity), peer: peerName, verdict: e.dropped ? "denied" : e.proxied ? "to-proxy" : "allowed",
            reason: e.reason.label, rule: rule, revision: Int(e.revision))
    }

    /// A stream of JSON lines for one `GET /v1/monitor` client.
    func stream(hub: EventHub, type: String) -> AsyncStream<ByteBuffer> {
        var interests: Set<EventHub.Interest> = []
        if type == "all" || type == "verdict" { interests.insert(.verdicts) }
        if type == "all" || type == "lb" { interests.insert(.loadBalancing) }
        if type == "all" || type == "l7" { interests.insert(.l7) }
        let events = hub.subscribe(interests: interests)
        let (out, continuation) = AsyncStream<ByteBuffer>.makeStream(bufferingPolicy: .bufferingNewest(4096))
        let task = Task {
            let encoder = JSONEncoder()
            encoder.dateEncodingStrategy = .iso8601
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            // A first line tells the client the stream is live.
            continuation.yield(ByteBuffer(string: "{\"type\":\"hello\"}\n"))
            var names: [Int: String] = [:]
            for await event in events {
                let m: MonitorEvent
                switch event {
                case .loadBalancing(let e):
                    guard type == "all" || type == "lb" else { continue }
                    m = resolve(e)
                case .l7(let e):
                    guard type == "all" || type == "l7" else { continue }
                    m = resolve(e)
                case .policy(let e):
                    if type == "lb" || type == "l7" || type == "drop" && !e.dropped || type == "verdict" && e.dropped { continue }
                    if names[Int(e.endpointID)] == nil {
                        names = Dictionary(uniqueKeysWithValues: ((try? store.endpoints()) ?? []).map { ($0.id, $0.name) })
                    }
                    m = await resolve(e, endpoints: names)
                }
                guard var data = try? encoder.encode(m) else { continue }
                data.append(0x0a)
                continuation.yield(ByteBuffer(bytes: data))
            }
            continuation.finish()
        }
        continuation.onTermination = { _ in task.cancel() }
        return out
    }
}
