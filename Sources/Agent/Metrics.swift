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

    private struct SeriesKey: Hashable {
        var endpointID: Int
        var direction: MeshDatapath.Direction
    }

    private struct Series {
        var endpoint: String
        var packets: Counter
        var bytes: Counter
        var last = MeshDatapath.Counters()
    }

    private var series: [SeriesKey: Series] = [:]
    private let endpointsGauge: Gauge
    private var mapGauges: [String: (entries: Gauge, capacity: Gauge, pressure: Gauge)] = [:]
    private var eventCounters: [String: Counter] = [:]
    private let cpu: Counter
    private var lastCPU = 0.0
    private let rss, vsize, fds, start: Gauge

    static let packetsHelp = "Packets forwarded through an endpoint's veth, counted by the tc programs, by direction as seen by the endpoint."
    static let bytesHelp = "Bytes (L2 frame length) forwarded through an endpoint's veth, by direction as seen by the endpoint."

    public init(datapath: MeshDatapath, manager: EndpointManager, nodeName: String) {
        self.datapath = datapath
        self.manager = manager
        registry.makeGauge(name: "mesh_build_info", labels: [("version", MeshVersion.string), ("node", nodeName)],
                           help: "Always 1; labels carry the meshd version and node name.").set(to: 1.0)
        endpointsGauge = registry.makeGauge(name: "mesh_endpoints", help: "Endpoints on this node.")
        cpu = registry.makeCounter(name: "process_cpu_seconds_total", help: "User and system CPU time spent by meshd, in seconds.")
        rss = registry.makeGauge(name: "process_resident_memory_bytes", help: "Resident memory of meshd in bytes.")
        vsize = registry.makeGauge(name: "process_virtual_memory_bytes", help: "Virtual memory size of meshd in bytes.")
        fds = registry.makeGauge(name: "process_open_fds", help: "Open file descriptors of meshd.")
        start = registry.makeGauge(name: "process_start_time_seconds", help: "Start time of meshd since the Unix epoch, in seconds.")
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
    public func scrape() async throws -> [UInt8] {
        let endpoints = try await manager.list()
        var readings: [(SeriesKey, String, MeshDatapath.Counters)] = []
        for ep in endpoints {
            for d in MeshDatapath.Direction.allCases {
                let c = try datapath.counters(endpointID: UInt32(ep.id), direction: d)
                readings.append((SeriesKey(endpointID: ep.id, direction: d), ep.name, c))
            }
        }
        let maps = datapath.mapStats()
        let process = ProcessStats.read()
        return lock.withLock {
            endpointsGauge.set(Double(endpoints.count))
            var seen = Set<SeriesKey>()
            for (key, name, now) in readings {
                seen.insert(key)
                var s = series[key] ?? Series(
                    endpoint: name,
                    packets: registry.makeCounter(name: "mesh_endpoint_forwarded_packets_total",
                                                  labels: [("endpoint", name), ("direction", key.direction.rawValue)], help: Self.packetsHelp),
                    bytes: registry.makeCounter(name: "mesh_endpoint_forwarded_bytes_total",
                                                labels: [("endpoint", name), ("direction", key.direction.rawValue)], help: Self.bytesHelp))
                // A kernel total below the last read means the entry was re-created: count it afresh.
                let dp = now.packets >= s.last.packets ? now.packets - s.last.packets : now.packets
                let db = now.bytes >= s.last.bytes ? now.bytes - s.last.bytes : now.bytes
                s.packets.increment(by: Int64(clamping: dp))
                s.bytes.increment(by: Int64(clamping: db))
                s.last = now
                series[key] = s
            }
            for (key, s) in series where !seen.contains(key) {
                registry.unregisterCounter(s.packets)
                registry.unregisterCounter(s.bytes)
                series[key] = nil
            }
            for m in maps {
                let g = mapGauges[m.name] ?? (
                    registry.makeGauge(name: "mesh_bpf_map_entries", labels: [("map", m.name)], help: "Entries in a BPF map (ring buffers report 0)."),
                    registry.makeGauge(name: "mesh_bpf_map_capacity", labels: [("map", m.name)], help: "Maximum entries of a BPF map (bytes for ring buffers)."),
                    registry.makeGauge(name: "mesh_bpf_map_pressure_ratio", labels: [("map", m.name)], help: "Entries divided by capacity of a BPF map, 0 to 1."))
                mapGauges[m.name] = g
                g.entries.set(Double(m.entries))
                g.capacity.set(Double(m.capacity))
                g.pressure.set(m.capacity > 0 ? Double(m.entries) / Double(m.capacity) : 0)
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
