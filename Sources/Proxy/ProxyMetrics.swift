import MeshModel
import NIOConcurrencyHelpers
import Prometheus

/// The proxy's Prometheus metrics. Every label takes its value from a small fixed set or
/// from the node's endpoint names, never from a path, an id or anything a client chooses.
final class ProxyMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()

    /// The reasons hostile input is counted under.
    enum HostileReason: String, Sendable {
        case badRequest = "bad_request"
        case headerTooLarge = "header_too_large"
        case headerTimeout = "header_timeout"
        case ambiguousLength = "ambiguous_length"
        case tooManyConnections = "too_many_connections"
    }

    /// The reasons an upstream connection fails.
    enum UpstreamErrorReason: String, Sendable {
        case connectRefused = "connect_refused"
        case reset
        case timeout
        case other
    }

    static let knownMethods: Set<String> = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"]

    /// From 0.5 ms to 10 s, about three buckets per decade.
    static let durationBuckets: [Duration] = [
        .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
        .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
        .seconds(1), .seconds(2.5), .seconds(5), .seconds(10),
    ]

    private let connectionsTotal: Counter
    private let connectionsActive: Gauge
    private let configGeneration: Gauge
    private let eventsDropped: Counter

    init() {
        connectionsTotal = registry.makeCounter(descriptor: Self.name("mesh_proxy_connections_total",
                                                                        "Downstream connections accepted."))
        connectionsActive = registry.makeGauge(descriptor: Self.name("mesh_proxy_connections_active",
                                                                       "Downstream connections open now."))
        configGeneration = registry.makeGauge(descriptor: Self.name("mesh_proxy_config_generation",
                                                                      "Generation of the configuration in force."))
        eventsDropped = registry.makeCounter(descriptor: Self.name("mesh_proxy_events_dropped_total",
                                                                     "L7 events dropped because the control connection was not writable."))
    }

    private static func name(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    func connectionOpened() {
        connectionsTotal.increment()
        connectionsActive.increment()
    }

    func connectionClosed() { connectionsActive.decrement() }

    func configApplied(generation: UInt64) { configGeneration.set(Double(generation)) }

    func eventDropped() { eventsDropped.increment() }

    func hostile(_ reason: HostileReason) {
        registry.makeCounter(descriptor: Self.name("mesh_proxy_hostile_requests_total", "Requests refused as hostile input."),
                             labels: [("reason", reason.rawValue)]).increment()
    }

    func upstreamError(_ reason: UpstreamErrorReason) {
        registry.makeCounter(descriptor: Self.name("mesh_proxy_upstream_errors_total", "Upstream connections that failed."),
                             labels: [("reason", reason.rawValue)]).increment()
    }

    /// Why a routed request or attempt ran out of time.
    enum TimeoutKind: String, Sendable {
        /// The rule's `timeouts.request`, retries included.
        case request
        /// One attempt's limit: `timeouts.backendRequest`, else the upstream timeout.
        case backendRequest = "backend_request"
    }

    /// What happens to routed requests, counted per frontend Service.
    enum RoutedEvent: Sendable {
        case retry
        case retryBudgetExhausted
        case timeout(TimeoutKind)
        case ejection
        case pendingLimit
    }

    private struct RoutedKey: Hashable {
        var service: String
        var event: String
    }

    private let routedCounters = NIOLockedValueBox<[RoutedKey: Counter]>([:])

    /// Series made once and kept, by name and labels: the registry validates both on every
    /// make, which has no place on a connection's data path.
    private let keptCounters = NIOLockedValueBox<[String: Counter]>([:])

    func keptCounter(_ name: String, _ help: String, labels: [(String, String)]) -> Counter {
        let key = ([name] + labels.map { "\($0.0)=\($0.1)" }).joined(separator: ",")
        return keptCounters.withLockedValue { table in
            if let counter = table[key] { return counter }
            let made = registry.makeCounter(descriptor: Self.name(name, help), labels: labels)
            table[key] = made
            return made
        }
    }

    /// Counts `event` for the frontend Service `service` (`namespace/name`, from the
    /// configuration, so the series are as many as the routed Services).
    func routed(_ event: RoutedEvent, service: String) {
        let (name, help, kind): (String, String, TimeoutKind?) = switch event {
        case .retry: ("mesh_proxy_retries_total", "Retries of routed requests.", nil)
        case .retryBudgetExhausted: ("mesh_proxy_retry_budget_exhausted_total",
                                     "Failed routed attempts not retried because the retry budget was spent.", nil)
        case .timeout(let kind): ("mesh_proxy_timeouts_total", "Routed requests or attempts that ran out of time.", kind)
        case .ejection: ("mesh_proxy_ejections_total", "Backend endpoints ejected after failures in a row.", nil)
        case .pendingLimit: ("mesh_proxy_pending_limit_total",
                             "Routed requests answered 503 because every endpoint was at its pending limit.", nil)
        }
        let key = RoutedKey(service: service, event: name + (kind.map { "/" + $0.rawValue } ?? ""))
        let counter = routedCounters.withLockedValue { table in
            if let counter = table[key] { return counter }
            var labels = [("destination_service", service)]
            if let kind { labels.append(("kind", kind.rawValue)) }
            let made = registry.makeCounter(descriptor: Self.name(name, help), labels: labels)
            table[key] = made
            return made
        }
        counter.increment()
    }

    /// The series of one (source, destination, method, code, verdict), made once: the
    /// registry validates names and labels on every make, which per request cost more than
    /// the policy decision (perf, tools/bench-proxy).
    fileprivate struct SeriesKey: Hashable {
        var source: WorkloadName
        var destination: WorkloadName
        var service: String?
        var method: String
        var status: Int
        var verdict: L7Event.Verdict
    }

    fileprivate struct Series {
        var requests: Counter
        var duration: DurationHistogram
        var requestBytes: Counter
        var responseBytes: Counter

        func count(_ record: ExchangeRecord) {
            requests.increment()
            duration.record(record.duration)
            requestBytes.increment(by: Int64(record.requestBodyBytes))
            responseBytes.increment(by: Int64(record.responseBodyBytes))
        }
    }

    private let series = NIOLockedValueBox<[SeriesKey: Series]>([:])

    /// The series of a connection's last request. A connection's requests mostly share one,
    /// which is then found without the table's lock and hash (series are never removed, so
    /// a remembered one stays registered).
    struct SeriesMemo {
        fileprivate var last: (key: SeriesKey, series: Series)?
        init() {}
    }

    /// Counts one finished request. A routed request's series also carry
    /// `destination_service` (the frontend's Service; `destination_workload` is then the
    /// backend endpoint that answered); other requests' series leave it out, which PromQL
    /// reads as the empty value, so the family stays one.
    func request(_ record: ExchangeRecord, source: WorkloadName, destination: WorkloadName, memo: inout SeriesMemo) {
        let method = Self.knownMethods.contains(record.method) ? record.method : "other"
        let key = SeriesKey(source: source, destination: destination, service: record.route?.service, method: method,
                            status: record.status, verdict: record.verdict)
        if let last = memo.last, last.key == key {
            last.series.count(record)
            return
        }
        let s = series.withLockedValue { table -> Series in
            if let s = table[key] { return s }
            let service = key.service.map { [("destination_service", $0)] } ?? []
            let pair = [("source_workload", source.workload), ("destination_workload", destination.workload)] + service
            let made = Series(
                requests: registry.makeCounter(
                    descriptor: Self.name("mesh_proxy_http_requests_total", "HTTP requests the proxy handled."),
                    labels: [("source_namespace", source.namespace), ("source_workload", source.workload),
                             ("destination_namespace", destination.namespace), ("destination_workload", destination.workload)]
                        + service + [("method", method), ("code", String(record.status)), ("verdict", record.verdict.rawValue)]),
                duration: registry.makeDurationHistogram(
                    descriptor: Self.name("mesh_proxy_http_request_duration_seconds", "Time from request head to response end."),
                    labels: pair, buckets: Self.durationBuckets),
                requestBytes: registry.makeCounter(descriptor: Self.name("mesh_proxy_http_request_bytes_total", "Request body bytes forwarded."),
                                                   labels: pair),
                responseBytes: registry.makeCounter(descriptor: Self.name("mesh_proxy_http_response_bytes_total",
                                                                          "Response body bytes sent to clients."), labels: pair))
            table[key] = made
            return made
        }
        memo.last = (key, s)
        s.count(record)
    }

    /// The Prometheus text exposition of every metric.
    func text() -> String { registry.emitToString() }
}

/// How metrics name a peer: an endpoint by its name, the node as `host`, anything else as
/// `world`, so that the number of label values stays that of the node's endpoints.
struct WorkloadName: Sendable, Hashable {
    var namespace: String
    var workload: String
}
