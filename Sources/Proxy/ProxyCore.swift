import Foundation
import Logging
import MeshModel
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// What every connection of one proxy shares: its settings, the policy and routes in force,
/// what is known of each backend endpoint, the retry budgets, metrics, the event stream and
/// the count of open connections.
final class ProxyCore: Sendable {
    let settings: ProxySettings
    let logger: Logger
    let policy = PolicyStore()
    let health = EndpointHealth()
    let budgets = RetryBudgets()
    let metrics = ProxyMetrics()
    let events: EventStream
    let reporter: ExchangeReporter
    /// The mTLS tunnels between nodes: their listener and TLS contexts.
    let tunnels: TunnelService
    /// The ingress gateway's listening ports.
    let gateways: GatewayListeners
    private let started = ContinuousClock.now
    /// Open client connections, to cap their number and to close the last ones at shutdown.
    private let openConnections = NIOLockedValueBox<[ObjectIdentifier: any Channel]>([:])
    /// The listener's port once bound (the settings may ask for port 0).
    let listenPort = NIOLockedValueBox(0)

    init(settings: ProxySettings, logger: Logger, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        self.settings = settings
        self.logger = logger
        tunnels = TunnelService(group: group)
        gateways = GatewayListeners(group: group)
        events = EventStream(metrics: metrics)
        reporter = ExchangeReporter(metrics: metrics, events: events, policy: policy)
    }

    func hello() -> ProxyHello {
        let uptime = ContinuousClock.now - started
        return ProxyHello(pid: getpid(), port: UInt16(clamping: listenPort.withLockedValue { $0 }),
                          generation: policy.index.generation,
                          uptimeSeconds: uptime.seconds)
    }

    /// Takes a connection slot, given back when the channel closes; false when the cap is
    /// reached and the connection must go.
    func admit(_ channel: any Channel) -> Bool {
        let admitted = openConnections.withLockedValue { open in
            guard open.count < settings.maxConnections else { return false }
            open[ObjectIdentifier(channel)] = channel
            return true
        }
        guard admitted else {
            metrics.hostile(.tooManyConnections)
            return false
        }
        metrics.connectionOpened()
        channel.closeFuture.whenComplete { [self] _ in
            openConnections.withLockedValue { _ = $0.removeValue(forKey: ObjectIdentifier(channel)) }
            metrics.connectionClosed()
        }
        return true
    }

    func closeAllConnections() {
        for channel in openConnections.withLockedValue({ Array($0.values) }) { channel.close(promise: nil) }
    }
}

extension Duration {
    /// Seconds as a Double, for events and hello messages.
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
