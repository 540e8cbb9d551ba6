import Foundation
import MeshModel

/// Turns a finished exchange into its metrics and its L7 event.
struct ExchangeReporter: Sendable {
    let metrics: ProxyMetrics
    let events: EventStream
    let policy: PolicyStore

    /// Events carry at most this much of the request target.
    static let maxEventPath = 256

    func report(_ record: ExchangeRecord) {
        let index = policy.index
        let source = index.endpoint(record.source.ip)
        let destination = index.endpoint(record.destination.ip)
        metrics.request(record, source: Self.workload(record.source.ip, source, index),
                        destination: Self.workload(record.destination.ip, destination, index))
        guard events.isStreaming else { return }
        let now = Date().timeIntervalSince1970
        events.publish(L7Event(
            timestamp: UInt64(now * 1_000_000_000), source: record.source.description,
            sourceEndpoint: source.map { "\($0.namespace)/\($0.name)" }, sourceIdentity: index.identity(of: record.source.ip),
            destination: record.destination.description,
            destinationEndpoint: destination.map { "\($0.namespace)/\($0.name)" },
            method: record.method, path: String(decoding: record.target.utf8.prefix(Self.maxEventPath), as: UTF8.self),
            host: record.host, status: record.status, verdict: record.verdict,
            latencySeconds: record.duration.seconds,
            ruleID: record.ruleID, rule: record.rule, error: record.error))
    }

    static func workload(_ ip: IPv4Address, _ endpoint: ProxyEndpoint?, _ index: L7PolicyIndex) -> WorkloadName {
        if let endpoint { return WorkloadName(namespace: endpoint.namespace, workload: endpoint.name) }
        let host = index.identity(of: ip) == PolicyCompiler.hostIdentity
        return WorkloadName(namespace: "", workload: host ? "host" : "world")
    }
}
