import Datapath
import Foundation
import MeshModel
import NIOCore

/// Fans datapath policy events out to `meshctl monitor` streams. A subscriber that cannot
/// keep up loses the oldest events, never blocks the reader of the ring buffer.
final class EventHub: @unchecked Sendable {
    private let lock = NSLock()
    private var subscribers: [UUID: AsyncStream<MeshDatapath.PolicyEvent>.Continuation] = [:]
    private var verdictWatchers = Set<UUID>()
    /// Told when the first subscriber that wants verdicts arrives and when the last leaves:
    /// the kernel writes verdict events only while someone reads them.
    private let onVerdictInterest: @Sendable (Bool) -> Void

    init(onVerdictInterest: @escaping @Sendable (Bool) -> Void = { _ in }) {
        self.onVerdictInterest = onVerdictInterest
    }

    func publish(_ event: MeshDatapath.PolicyEvent) {
        let subs = lock.withLock { Array(subscribers.values) }
        for s in subs { s.yield(event) }
    }

    func subscribe(wantsVerdicts: Bool) -> AsyncStream<MeshDatapath.PolicyEvent> {
        let id = UUID()
        let (stream, continuation) = AsyncStream<MeshDatapath.PolicyEvent>.makeStream(bufferingPolicy: .bufferingNewest(4096))
        continuation.onTermination = { [weak self] _ in self?.unsubscribe(id) }
        let first = lock.withLock { () -> Bool in
            subscribers[id] = continuation
            guard wantsVerdicts else { return false }
            verdictWatchers.insert(id)
            return verdictWatchers.count == 1
        }
        if first { onVerdictInterest(true) }
        return stream
    }

    private func unsubscribe(_ id: UUID) {
        let last = lock.withLock { () -> Bool in
            subscribers[id] = nil
            return verdictWatchers.remove(id) != nil && verdictWatchers.isEmpty
        }
        if last { onVerdictInterest(false) }
    }
}

/// Turns kernel events into MonitorEvents with endpoint, identity and rule names.
struct EventResolver: Sendable {
    let store: Store
    let policy: PolicyEngine

    func resolve(_ e: MeshDatapath.PolicyEvent, endpoints: [Int: String]) async -> MonitorEvent {
        let peerName = policy.describe(identity: e.peerIdentity)
        let rule = policy.describe(rule: e.ruleID, revision: e.revision)
        return MonitorEvent(
            time: Date(), type: e.dropped ? "drop" : "verdict", endpoint: endpoints[Int(e.endpointID)] ?? "endpoint \(e.endpointID)",
            direction: e.direction.rawValue, source: IPv4Address(e.source).description, destination: IPv4Address(e.destination).description,
            sourcePort: Int(e.sourcePort), destinationPort: Int(e.destinationPort), proto: ProtocolName.name(e.proto),
            peerIdentity: Int(e.peerIdentity), peer: peerName, verdict: e.dropped ? "denied" : "allowed",
            reason: e.reason.label, rule: rule, revision: Int(e.revision))
    }

    /// A stream of JSON lines for one `GET /v1/monitor` client.
    func stream(hub: EventHub, type: String) -> AsyncStream<ByteBuffer> {
        let events = hub.subscribe(wantsVerdicts: type != "drop")
        let (out, continuation) = AsyncStream<ByteBuffer>.makeStream(bufferingPolicy: .bufferingNewest(4096))
        let task = Task {
            let encoder = JSONEncoder()
            encoder.dateEncodingStrategy = .iso8601
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            // A first line tells the client the stream is live.
            continuation.yield(ByteBuffer(string: "{\"type\":\"hello\"}\n"))
            var names: [Int: String] = [:]
            for await e in events {
                if type == "drop" && !e.dropped || type == "verdict" && e.dropped { continue }
                if names[Int(e.endpointID)] == nil {
                    names = Dictionary(uniqueKeysWithValues: ((try? store.endpoints()) ?? []).map { ($0.id, $0.name) })
                }
                let m = await resolve(e, endpoints: names)
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
