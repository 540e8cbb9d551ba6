import NIOCore
import NIOHTTP1
#if canImport(Glibc)
import Glibc
#endif

/// Why a forwarded request got no response from upstream, as the client, the metrics and
/// the event each need to see it.
enum UpstreamFailure {
    case connectFailed(any Error)
    case closedBeforeResponse((any Error)?)
    case responseTimeout

    /// 504 when upstream was too slow (to connect or to answer), 502 when it failed.
    var status: HTTPResponseStatus { reason == .timeout ? .gatewayTimeout : .badGateway }

    var reason: ProxyMetrics.UpstreamErrorReason {
        switch self {
        case .responseTimeout:
            return .timeout
        case .connectFailed(let error):
            if case ChannelError.connectTimeout = error { return .timeout }
            if (error as? IOError)?.errnoCode == ECONNREFUSED { return .connectRefused }
            return .other
        case .closedBeforeResponse(let error):
            if let error, (error as? IOError)?.errnoCode != ECONNRESET { return .other }
            return .reset
        }
    }

    /// For the event's `error` field.
    var message: String {
        switch self {
        case .connectFailed(let error): return "upstream connect failed: \(error)"
        case .closedBeforeResponse(let error): return "upstream closed before responding" + (error.map { ": \($0)" } ?? "")
        case .responseTimeout: return "upstream sent no response head in time"
        }
    }

    /// For the client.
    var body: String {
        status == .gatewayTimeout ? "Upstream timed out\r\n" : "Upstream unavailable\r\n"
    }
}
