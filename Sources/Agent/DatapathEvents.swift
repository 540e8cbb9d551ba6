import Datapath
import Foundation
import Logging
import ServiceLifecycle

/// Drains the BPF event ring buffer: counts each event in /metrics and logs the ones an
/// operator must see. Polling blocks, so it runs on its own thread, not the async pool.
final class DatapathEventService: Service {
    private let datapath: MeshDatapath
    private let metrics: MetricsCollector
    private let logger: Logger
    private let hub: EventHub

    init(datapath: MeshDatapath, metrics: MetricsCollector, hub: EventHub, logger: Logger) {
        self.datapath = datapath
        self.metrics = metrics
        self.hub = hub
        self.logger = logger
    }

    private final class StopFlag: @unchecked Sendable {
        private let lock = NSLock()
        private var stopped = false
        func stop() { lock.withLock { stopped = true } }
        var isStopped: Bool { lock.withLock { stopped } }
    }

    func run() async throws {
        let reader = try datapath.eventReader()
        let flag = StopFlag()
        let (metrics, logger, hub, datapath) = (self.metrics, self.logger, self.hub, self.datapath)
        await withGracefulShutdownHandler {
            await withTaskCancellationHandler {
                await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                    let thread = Thread {
                        var lastWarned: [UInt32: Date] = [:]
                        var lastCollect = Date()
                        while !flag.isStopped {
                            // Expired conntrack entries go every 10 s (the programs already ignore them).
                            if Date().timeIntervalSince(lastCollect) > 10 {
                                lastCollect = Date()
                                if let n = try? datapath.conntrackCollect(), n > 0 {
                                    logger.debug("conntrack entries expired", metadata: ["count": "\(n)"])
                                }
                            }
                            guard let records = try? reader.poll(timeoutMilliseconds: 100) else { continue }
                            for r in records {
                                switch MeshDatapath.decode(event: r) {
                                case .unknownInterface(let ifindex, let direction, _):
                                    metrics.countEvent("unknown_interface")
                                    // One line a minute per interface: a drift must be seen, not flood the log.
                                    if Date().timeIntervalSince(lastWarned[ifindex] ?? .distantPast) > 60 {
                                        lastWarned[ifindex] = Date()
                                        logger.warning("packet on an interface with no endpoint entry", metadata: [
                                            "ifindex": "\(ifindex)", "direction": "\(direction.rawValue)"])
                                    }
                                case .policy(let ev):
                                    metrics.countEvent(ev.dropped ? "policy_drop" : "policy_verdict")
                                    hub.publish(.policy(ev))
                                case .loadBalancing(let ev):
                                    metrics.countEvent("lb")
                                    hub.publish(.loadBalancing(ev))
                                case .unrecognised(let type):
                                    metrics.countEvent("unrecognised")
                                    logger.debug("unrecognised datapath event", metadata: ["type": "\(type)"])
                                case nil:
                                    metrics.countEvent("malformed")
                                }
                            }
                        }
                        done.resume()
                    }
                    thread.name = "meshd-events"
                    thread.start()
                }
            } onCancel: { flag.stop() }
        } onGracefulShutdown: { flag.stop() }
    }
}
