import Foundation
import MeshModel

/// Turns a finished exchange into its metrics and its L7 event.
struct ExchangeReporter: Sendable {
    let metrics: ProxyMetrics
    let events: EventStream
    let policy: PolicyStore

    /// Events carry at most this much of the request target.
    static let maxEventPath = 256

    func report(_ record: ExchangeRecord, memo: inout ProxyMetrics.SeriesMemo) {
        let index = policy.index
        let source = index.endpoint(record.source.ip)
        let destination = index.endpoint(record.destination.ip)
        let destinationName = record.route?.backend.flatMap { destination == nil ? Self.workload($0) : nil }
            ?? Self.workload(record.destination.ip, destination, index)
        metrics.request(record, source: Self.workload(record.source.ip, source, index), destination: destinationName, memo: &memo)
        guard events.isStreaming else { return }
        let now = Date().timeIntervalSince1970
        events.publish(L7Event(
            timestamp: UInt64(now * 1_000_000_000), source: record.source.description,
            sourceEndpoint: source.map { "\($0.namespace)/\($0.name)" }, sourceIdentity: index.identity(of: record.source.ip),
            destination: record.destination.description,
            destinationEndpoint: destination.map { "\($0.namespace)/\($0.name)" } ?? record.route?.backend?.name,
            method: record.method, path: String(decoding: record.target.utf8.prefix(Self.maxEventPath), as: UTF8.self),
            host: record.host, status: record.status, verdict: record.verdict,
            latencySeconds: record.duration.seconds,
            ruleID: record.ruleID, rule: record.rule, error: record.error,
            service: record.route?.service, routeRule: record.route?.rule, backend: record.route?.backend?.name,
            attempts: record.route?.attempts))
    }

    /// A backend that is not on this node, by the `namespace/name` meshd gave it.
    static func workload(_ backend: ProxyBackendEndpoint) -> WorkloadName {
        guard let slash = backend.name.firstIndex(of: "/") else { return WorkloadName(namespace: "", workload: backend.name) }
        return WorkloadName(namespace: String(backend.name[..<slash]),
                            workload: String(backend.name[backend.name.index(after: slash)...]))
    }

    static func workload(_ ip: IPv4Address, _ endpoint: ProxyEndpoint?, _ index: L7PolicyIndex) -> WorkloadName {
        if let endpoint { return WorkloadName(namespace: endpoint.namespace, workload: endpoint.name) }
        let host = index.identity(of: ip) == PolicyCompiler.hostIdentity
        return WorkloadName(namespace: "", workload: host ? "host" : "world")
    }
}
