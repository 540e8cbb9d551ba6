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

    init(datapath: MeshDatapath, metrics: MetricsCollector, logger: Logger) {
        self.datapath = datapath
        self.metrics = metrics
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
        let (metrics, logger) = (self.metrics, self.logger)
        await withGracefulShutdownHandler {
            await withTaskCancellationHandler {
                await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                    let thread = Thread {
                        var lastWarned: [UInt32: Date] = [:]
                        while !flag.isStopped {
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
