import MeshModel
import NIOConcurrencyHelpers
import NIOCore

/// Streams L7 events to the control connection that asked for them. Events never queue
/// without bound: while that connection is not writable they are dropped and counted.
final class EventStream: Sendable {
    private struct Subscriber {
        var channel: any Channel
        var enabled: Bool
    }

    private let subscriber = NIOLockedValueBox<Subscriber?>(nil)
    private let metrics: ProxyMetrics

    init(metrics: ProxyMetrics) { self.metrics = metrics }

    /// Whether an event would go anywhere; lets callers skip building one.
    var isStreaming: Bool { subscriber.withLockedValue { $0?.enabled ?? false } }

    /// Makes `channel` the connection events go to (off until it asks), replacing any other.
    func attach(_ channel: any Channel) {
        subscriber.withLockedValue { $0 = Subscriber(channel: channel, enabled: false) }
    }

    /// Forgets `channel` if it is still the attached one.
    func detach(_ channel: any Channel) {
        subscriber.withLockedValue { if $0?.channel === channel { $0 = nil } }
    }

    func setEnabled(_ enabled: Bool, for channel: any Channel) {
        subscriber.withLockedValue { if $0?.channel === channel { $0?.enabled = enabled } }
    }

    func publish(_ event: L7Event) {
        guard let target = subscriber.withLockedValue({ $0 }), target.enabled else { return }
        // isWritable turns false past the channel's high watermark: what is queued beyond it
        // is at most one event per connection that passed this check at the same moment.
        guard target.channel.isWritable,
              let line = ControlWire.encode(ProxyControlMessage(event: event), allocator: target.channel.allocator) else {
            metrics.eventDropped()
            return
        }
        target.channel.writeAndFlush(line, promise: nil)
    }
}
