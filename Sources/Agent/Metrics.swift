import Datapath
import Foundation
import MeshModel
import Prometheus

/// `/metrics`: one registry; kernel counters are read from the BPF maps at scrape time.
///
/// BPF counters are absolute totals kept by the kernel (and pinned, so they survive a
/// `meshd` restart); each scrape adds the growth since the last read to a Prometheus
/// counter, which therefore starts a new process at the kernel's total and never goes
/// backwards while the endpoint exists.
public final class MetricsCollector: @unchecked Sendable {
    public let registry = PrometheusCollectorRegistry()
    private let lock = NSLock()
    private let datapath: MeshDatapath
    private let manager: EndpointManager
    private let policy: PolicyEngine
    private let redirect: SocketRedirect
    private let lb: ServiceLB
    private let services: ServiceManager.Names
    private let redirectSockets: Gauge
    private var readinessGauges: [String: Gauge] = [:]
    private var backendGauges: [String: Gauge] = [:]

    private let kernelCounters: KernelCounters
    private let endpointsGauge: Gauge
    private let revisionGauge: Gauge
    private let policiesGauge: Gauge
    private let applyHistogram: DurationHistogram
    private var mapGauges: [String: (entries: Gauge, capacity: Gauge, pressure: Gauge)] = [:]
    private var eventCounters: [String: Counter] = [:]
    private let cpu: Counter
    private var lastCPU = 0.0
    /// The highest eviction count derived so far: the derivation reads several counters
    /// that move while it reads, and a counter must never go back.
    private var evictedHighWater: UInt64 = 0
    private let rss, vsize, fds, start: Gauge

    static let packetsHelp = "Packets forwarded through an endpoint's veth, counted by the tc programs, by direction as seen by the endpoint."
    static let bytesHelp = "Bytes (L2 frame length) forwarded through an endpoint's veth, by direction as seen by the endpoint."
    static let dropsHelp = "Packets dropped by the datapath, by reason and direction as seen by the endpoint."
    static let dropBytesHelp = "Bytes of packets dropped by the datapath, by reason and direction."
    static let verdictsHelp = "New flows decided on enforced endpoints, by deciding policy, direction and verdict."

    public init(datapath: MeshDatapath, manager: EndpointManager, policy: PolicyEngine, redirect: SocketRedirect, lb: ServiceLB,
                services: ServiceManager.Names, nodeName: String) {
        self.datapath = datapath
        self.manager = manager
        self.policy = policy
        self.redirect = redirect
        self.lb = lb
        self.services = services
        redirectSockets = registry.makeGauge(name: "mesh_socket_redirect_sockets",
                                             help: "Sockets in the sockhash now; an accelerated connection has two.")
        kernelCounters = KernelCounters(registry: registry)
        registry.makeGauge(name: "mesh_build_info", labels: [("version", MeshVersion.string), ("node", nodeName)],
                           help: "Always 1; labels carry the meshd version and node name.").set(to: 1.0)
        endpointsGauge = registry.makeGauge(name: "mesh_endpoints", help: "Endpoints on this node.")
        revisionGauge = registry.makeGauge(name: "mesh_policy_revision", help: "The policy revision the datapath enforces now.")
        policiesGauge = registry.makeGauge(name: "mesh_policies", help: "Policy documents applied on this node.")
        applyHistogram = registry.makeDurationHistogram(
            name: "mesh_policy_apply_to_enforced_seconds",
            buckets: [.milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
                      .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(5)],
            help: "Time from a policy change reaching meshd to the datapath enforcing it.")
        cpu = registry.makeCounter(name: "process_cpu_seconds_total", help: "User and system CPU time spent by meshd, in seconds.")
        rss = registry.makeGauge(name: "process_resident_memory_bytes", help: "Resident memory of meshd in bytes.")
        vsize = registry.makeGauge(name: "process_virtual_memory_bytes", help: "Virtual memory size of meshd in bytes.")
        fds = registry.makeGauge(name: "process_open_fds", help: "Open file descriptors of meshd.")
        start = registry.makeGauge(name: "process_start_time_seconds", help: "Start time of meshd since the Unix epoch, in seconds.")
    }

    /// Records one apply-to-enforced time.
    public func observeEnforced(_ d: Duration) { applyHistogram.record(d) }

    private var proxyGauges: (up: Gauge, restarts: Gauge, generation: Gauge)?

    private var trustExpiry: [String: Gauge] = [:]
    private var trustCounters: (rotations: Counter, failures: Counter, seen: (Int, Int))?

    /// When each certificate the node holds expires (an alert fires well before), and how
    /// many workload certificates were rotated or could not be issued.
    func observeTrust(_ expiries: [(kind: String, endpoint: String, notAfter: Date)], counters: (rotations: Int, failures: Int)) {
        lock.withLock {
            var live = Set<String>()
            for e in expiries {
                let key = "\(e.kind)/\(e.endpoint)"
                live.insert(key)
                let g = trustExpiry[key] ?? registry.makeGauge(
                    name: "mesh_trust_certificate_expiry_timestamp_seconds", labels: [("kind", e.kind), ("endpoint", e.endpoint)],
                    help: "When a certificate the node holds expires (Unix seconds): kind root, intermediate or svid (one per endpoint).")
                trustExpiry[key] = g
                g.set(to: e.notAfter.timeIntervalSince1970)
            }
            for (key, g) in trustExpiry where !live.contains(key) {
                registry.unregisterGauge(g)
                trustExpiry[key] = nil
            }
            var t = trustCounters ?? (registry.makeCounter(name: "mesh_trust_svid_rotations_total", help: "Workload certificates replaced at half their life."),
                                      registry.makeCounter(name: "mesh_trust_svid_issue_failures_total", help: "Workload certificates that could not be issued (retried at the next check)."),
                                      (0, 0))
            if counters.rotations > t.seen.0 { t.rotations.increment(by: Double(counters.rotations - t.seen.0)) }
            if counters.failures > t.seen.1 { t.failures.increment(by: Double(counters.failures - t.seen.1)) }
            t.seen = (max(t.seen.0, counters.rotations), max(t.seen.1, counters.failures))
            trustCounters = t
        }
    }

    private struct ClusterMetrics {
        var up, nodes, remote, lag, contactAge: Gauge
        var requests, failures, resyncs, leasesLost: Counter
        var seen: (requests: Int64, failures: Int64, resyncs: Int, leasesLost: Int) = (0, 0, 0, 0)
    }
    private var clusterMetrics: ClusterMetrics?

    /// The cluster connection: etcd reachable, nodes and remote endpoints known, how far the
    /// watch trails etcd, and the etcd client's request counts.
    func observeCluster(_ h: ClusterAgent.Health, requests: (requests: Int64, failures: Int64)) {
        lock.withLock {
            var m = clusterMetrics ?? ClusterMetrics(
                up: registry.makeGauge(name: "mesh_cluster_etcd_up", help: "1 while etcd answers this node, else 0 (the node then enforces what it last knew)."),
                nodes: registry.makeGauge(name: "mesh_cluster_nodes", help: "Nodes of the cluster this node knows, itself included."),
                remote: registry.makeGauge(name: "mesh_cluster_remote_endpoints", help: "Endpoints of other nodes this node enforces policy and balances services with."),
                lag: registry.makeGauge(name: "mesh_cluster_watch_lag_revisions", help: "etcd revisions this node has seen but not yet applied."),
                contactAge: registry.makeGauge(name: "mesh_cluster_etcd_last_contact_age_seconds", help: "Seconds since etcd last answered this node."),
                requests: registry.makeCounter(name: "mesh_cluster_etcd_requests_total", help: "Requests this node sent to etcd (watches included)."),
                failures: registry.makeCounter(name: "mesh_cluster_etcd_request_failures_total", help: "Requests to etcd that failed: member unreachable, timeout or error answer."),
                resyncs: registry.makeCounter(name: "mesh_cluster_resyncs_total", help: "Full reads of the cluster state after a broken watch."),
                leasesLost: registry.makeCounter(name: "mesh_cluster_leases_lost_total", help: "Times the node's lease lapsed (etcd away longer than its TTL) and the node registered again."))
            m.up.set(to: h.connected ? 1.0 : 0.0)
            m.nodes.set(to: Double(h.nodes.count))
            m.remote.set(to: Double(h.remoteEndpoints))
            m.lag.set(to: Double(max(0, h.etcdRevision - h.appliedRevision)))
            m.contactAge.set(to: h.lastContact.map { Date().timeIntervalSince($0) } ?? -1)
            if requests.requests > m.seen.requests { m.requests.increment(by: Double(requests.requests - m.seen.requests)) }
            if requests.failures > m.seen.failures { m.failures.increment(by: Double(requests.failures - m.seen.failures)) }
            if h.resyncs > m.seen.resyncs { m.resyncs.increment(by: Double(h.resyncs - m.seen.resyncs)) }
            if h.leasesLost > m.seen.leasesLost { m.leasesLost.increment(by: Double(h.leasesLost - m.seen.leasesLost)) }
            m.seen = (max(m.seen.requests, requests.requests), max(m.seen.failures, requests.failures),
                      max(m.seen.resyncs, h.resyncs), max(m.seen.leasesLost, h.leasesLost))
            clusterMetrics = m
        }
    }

    /// The supervisor's view of the L7 proxy (the proxy's own figures come with the scrape).
    func observeProxy(_ s: ProxySupervisor.Status) {
        lock.withLock {
            if proxyGauges == nil {
                proxyGauges = (registry.makeGauge(name: "mesh_proxy_up", help: "1 while meshd is connected to the L7 proxy."),
                               registry.makeGauge(name: "mesh_proxy_restarts", help: "Times meshd started the L7 proxy again after it died."),
                               registry.makeGauge(name: "mesh_proxy_config_generation_applied",
                                                  help: "The configuration generation the L7 proxy last confirmed."))
            }
            proxyGauges!.up.set(s.connected ? 1.0 : 0.0)
            proxyGauges!.restarts.set(Double(s.restarts) as Double)
            proxyGauges!.generation.set(Double(s.generationApplied) as Double)
        }
    }

    /// Counts one ring-buffer event by type.
    public func countEvent(_ type: String) {
        lock.withLock {
            let c = eventCounters[type] ?? registry.makeCounter(
                name: "mesh_datapath_events_total", labels: [("type", type)],
                help: "Events the BPF programs reported through the ring buffer, by type.")
            eventCounters[type] = c
            c.increment()
        }
    }

    /// Reads the kernel and /proc, then renders the Prometheus text format.
    /// Map walks and /proc reads: the caller runs it on a thread pool, off Swift's
    /// cooperative one.
    public func scrape() throws -> [UInt8] {
        let endpoints = try manager.list()
        var readings: [KernelCounters.Reading] = []
        for ep in endpoints {
            for d in MeshDatapath.Direction.allCases {
                let c = try datapath.counters(endpointID: UInt32(ep.id), direction: d)
                let labels = [("endpoint", ep.name), ("direction", d.rawValue)]
                readings.append(.init(name: "mesh_endpoint_forwarded_packets_total", labels: labels, help: Self.packetsHelp, value: c.packets))
                readings.append(.init(name: "mesh_endpoint_forwarded_bytes_total", labels: labels, help: Self.bytesHelp, value: c.bytes))
            }
        }
        for d in try datapath.dropCounters() {
            let labels = [("reason", d.reason.label), ("direction", d.direction.rawValue)]
            readings.append(.init(name: "mesh_drops_total", labels: labels, help: Self.dropsHelp, value: d.counters.packets))
            readings.append(.init(name: "mesh_drop_bytes_total", labels: labels, help: Self.dropBytesHelp, value: d.counters.bytes))
        }
        for v in try datapath.verdictCounters() {
            let name = policy.policyName(id: v.policyID)
            readings.append(.init(name: "mesh_policy_verdicts_total",
                                  labels: [("policy", name), ("direction", v.direction.rawValue), ("verdict", v.action == .allow ? "allowed" : "denied")],
                                  help: Self.verdictsHelp, value: v.counters.packets))
        }
        let rc = try redirect.counters()
        readings.append(.init(name: "mesh_socket_redirect_messages_total", labels: [], help: "Messages handed from socket to socket by sk_msg, skipping the TCP/IP stack.", value: rc[.messages] ?? 0))
        readings.append(.init(name: "mesh_socket_redirect_bytes_total", labels: [], help: "Bytes handed from socket to socket by sk_msg.", value: rc[.bytes] ?? 0))
        readings.append(.init(name: "mesh_socket_redirect_connections_added_total", labels: [], help: "Sockets of local-endpoint connections put in the sockhash.", value: rc[.socketsAdded] ?? 0))
        readings.append(.init(name: "mesh_socket_redirect_denied_messages_total", labels: [], help: "Messages of accelerated connections dropped because a policy revision denies the flow.", value: rc[.deniedMessages] ?? 0))
        readings.append(.init(name: "mesh_socket_redirect_sockets_left_total", labels: [], help: "Sockets that left the sockhash after their connection fell back, to cost no more than plain TCP.", value: rc[.socketsLeft] ?? 0))
        for counter in [SocketRedirect.Counter.fallbackNotLocal, .fallbackDisabled, .fallbackNoPeer, .fallbackLargeWrite, .fallbackRedirectFailed,
                        .fallbackReaderBehind, .fallbackPeer, .fallbackUnsupported, .fallbackProxied] {
            readings.append(.init(name: "mesh_socket_redirect_fallbacks_total", labels: [("reason", SocketRedirect.fallbackName(counter))],
                                  help: "Connections or directions that went through the normal path instead, by reason.", value: rc[counter] ?? 0))
        }
        for (counter, outcome) in [(SocketRedirect.Counter.localCCApplied, "applied"), (.localCCOwn, "own_choice"), (.localCCFailed, "failed")] {
            readings.append(.init(name: "mesh_local_congestion_control_total", labels: [("outcome", outcome)],
                                  help: "Sockets of connections between two local endpoints, as they were established: running local-congestion-control (applied), keeping their application's or route's own (own_choice), or refused by the kernel (failed).",
                                  value: rc[counter] ?? 0))
        }
        // Per service port and backend: label values are names of services and endpoints
        // that exist, so the series are bounded by the node's own objects.
        for c in try lb.counters() {
            guard let f = services.frontend(c.frontendID) else { continue }
            if c.backendID == 0 {
                readings.append(.init(name: "mesh_service_refused_total", labels: [("service", f.service), ("port", f.port)],
                                      help: "connect() or sendmsg() calls to a service port with no ready backend, refused with ECONNREFUSED.",
                                      value: c.connects &+ c.sends))
                continue
            }
            let labels = [("service", f.service), ("port", f.port), ("backend", services.endpoint(c.backendID))]
            readings.append(.init(name: "mesh_service_connections_total", labels: labels,
                                  help: "Connections (TCP, and connected UDP sockets) the socket-level load balancer sent to a backend of a service port.",
                                  value: c.connects))
            readings.append(.init(name: "mesh_service_datagrams_total", labels: labels,
                                  help: "Unconnected UDP datagrams the socket-level load balancer sent to a backend of a service port.",
                                  value: c.sends))
        }
        let readiness = services.readinessByEndpoint
        let backends = services.backendsByService
        let ct = try datapath.conntrackStatistics()
        let maps = datapath.mapStats() + redirect.mapStats() + lb.mapStats()
        let ctEntries = maps.first { $0.name == MeshDatapath.conntrackMapName }?.entries ?? 0
        readings.append(.init(name: "mesh_conntrack_created_total", labels: [],
                              help: "Connection-tracking entries the programs created: new flows, per endpoint and direction.",
                              value: ct.created))
        let evicted = lock.withLock {
            evictedHighWater = max(evictedHighWater, ct.evicted(entries: ctEntries))
            return evictedHighWater
        }
        readings.append(.init(name: "mesh_conntrack_evictions_total", labels: [],
                              help: "Connection-tracking entries evicted because the table was full (conntrack-max): created, less those still there, deleted by a new revision or expired.",
                              value: evicted))
        let sockets = (try? redirect.socketCount()) ?? 0
        let revision = try datapath.policyState().revision
        let policies = policy.policyCount
        let process = ProcessStats.read()
        return lock.withLock {
            endpointsGauge.set(Double(endpoints.count))
            redirectSockets.set(Double(sockets))
            revisionGauge.set(Double(revision))
            policiesGauge.set(Double(policies))
            kernelCounters.update(readings)
            // Arrays are always full and ring buffers never: pressure means nothing for them.
            for m in maps where m.type != "array" && m.type != "ringbuf" {
                let g = mapGauges[m.name] ?? (
                    registry.makeGauge(name: "mesh_bpf_map_entries", labels: [("map", m.name)], help: "Entries in a BPF hash, LRU, LPM or socket map."),
                    registry.makeGauge(name: "mesh_bpf_map_capacity", labels: [("map", m.name)], help: "Maximum entries of a BPF map (bytes for ring buffers)."),
                    registry.makeGauge(name: "mesh_bpf_map_pressure_ratio", labels: [("map", m.name)], help: "Entries divided by capacity of a BPF map, 0 to 1."))
                mapGauges[m.name] = g
                g.entries.set(Double(m.entries))
                g.capacity.set(Double(m.capacity))
                g.pressure.set(m.capacity > 0 ? Double(m.entries) / Double(m.capacity) : 0)
            }
            Self.syncGauges(&readinessGauges, registry: registry, values: readiness.mapValues { $0 ? 1 : 0 }) { name in
                self.registry.makeGauge(name: "mesh_endpoint_ready", labels: [("endpoint", name)],
                                        help: "1 while an endpoint with a readiness probe passes it (is a backend of its services), else 0.")
            }
            var perService: [String: Double] = [:]
            for (svc, states) in backends {
                perService[svc + "|ready"] = Double(states.filter { $0 }.count)
                perService[svc + "|unready"] = Double(states.filter { !$0 }.count)
            }
            Self.syncGauges(&backendGauges, registry: registry, values: perService) { key in
                let parts = key.split(separator: "|")
                return self.registry.makeGauge(name: "mesh_service_backends", labels: [("service", String(parts[0])), ("state", String(parts[1]))],
                                               help: "Endpoints a service selects, by readiness: only ready ones get connections.")
            }
            if let p = process {
                if p.cpuSeconds > lastCPU { cpu.increment(by: p.cpuSeconds - lastCPU); lastCPU = p.cpuSeconds }
                rss.set(Double(p.residentBytes))
                vsize.set(Double(p.virtualBytes))
                fds.set(Double(p.openFDs))
                start.set(p.startTime)
            }
            var out: [UInt8] = []
            registry.emit(into: &out)
            return out
        }
    }
}

extension MetricsCollector {
    /// Sets one gauge per key, making new ones and unregistering those whose key went.
    static func syncGauges(_ gauges: inout [String: Gauge], registry: PrometheusCollectorRegistry, values: [String: Double],
                           make: (String) -> Gauge) {
        for (key, v) in values {
            let g = gauges[key] ?? make(key)
            gauges[key] = g
            g.set(v)
        }
        for (key, g) in gauges where values[key] == nil {
            registry.unregisterGauge(g)
            gauges[key] = nil
        }
    }
}

/// Prometheus counters fed from absolute totals the kernel keeps (and keeps pinned across
/// meshd restarts). Each scrape adds the growth since the last read, so a new meshd starts
/// at the kernel's total and a counter never goes backwards while its series exists; a
/// series whose source disappeared is unregistered.
final class KernelCounters {
    struct Reading {
        var name: String
        var labels: [(String, String)]
        var help: String
        var value: UInt64
    }

    private struct Series {
        var counter: Counter
        var last: UInt64
    }

    private let registry: PrometheusCollectorRegistry
    private var series: [String: Series] = [:]

    init(registry: PrometheusCollectorRegistry) { self.registry = registry }

    /// Not thread-safe: the collector calls it under its lock.
    func update(_ readings: [Reading]) {
        var seen = Set<String>()
        for r in readings {
            let key = r.name + "|" + r.labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",")
            seen.insert(key)
            var s = series[key] ?? Series(counter: registry.makeCounter(name: r.name, labels: r.labels, help: r.help), last: 0)
            // Below the last read means the kernel entry was re-created: count it afresh.
            let delta = r.value >= s.last ? r.value - s.last : r.value
            s.counter.increment(by: Int64(clamping: delta))
            s.last = r.value
            series[key] = s
        }
        for (key, s) in series where !seen.contains(key) {
            registry.unregisterCounter(s.counter)
            series[key] = nil
        }
    }
}

/// The process's own CPU and memory from /proc/self (what client libraries call
/// "process metrics"; swift-prometheus has none on Linux).
struct ProcessStats {
    var cpuSeconds: Double
    var residentBytes: Int
    var virtualBytes: Int
    var openFDs: Int
    var startTime: Double

    static func read() -> ProcessStats? {
        guard let stat = try? String(contentsOfFile: "/proc/self/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        // Fields after "(comm)": state is field 3; utime 14, stime 15, starttime 22, vsize 23, rss 24.
        let f = stat[stat.index(after: close)...].split(separator: " ").map(String.init)
        func field(_ n: Int) -> Double { Double(f[n - 3]) ?? 0 }
        guard f.count > 21 else { return nil }
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        let page = Double(sysconf(Int32(_SC_PAGESIZE)))
        let boot = ((try? String(contentsOfFile: "/proc/stat", encoding: .utf8)) ?? "")
            .split(separator: "\n").first { $0.hasPrefix("btime ") }
            .flatMap { Double($0.split(separator: " ")[1]) } ?? 0
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? 0
        return ProcessStats(cpuSeconds: (field(14) + field(15)) / ticks, residentBytes: Int(field(24) * page),
                            virtualBytes: Int(field(23)), openFDs: fds, startTime: boot + field(22) / ticks)
    }
}
