import MeshModel
import NIOHTTP1

/// Headers that describe one hop, not the message: never forwarded (RFC 9110 §7.6.1).
enum HopByHop {
    static let names: Set<String> = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"]

    /// `headers` without the hop-by-hop ones, nor those the Connection header names.
    static func stripped(_ headers: HTTPHeaders) -> HTTPHeaders {
        var dropped = names
        for value in headers[canonicalForm: "connection"] { dropped.insert(value.lowercased()) }
        var out = HTTPHeaders()
        out.reserveCapacity(headers.count)
        for (name, value) in headers where !dropped.contains(name.lowercased()) {
            out.add(name: name, value: value)
        }
        return out
    }
}

extension HTTPRequestHead {
    /// The request as L7 policy reads it: target as sent, Host as sent, names in lower case.
    var l7Request: L7Request {
        L7Request(method: method.rawValue, target: uri, host: headers.first(name: "host") ?? "",
                  headers: headers.map { (name: $0.name.lowercased(), value: $0.value) })
    }

    /// Requests that would turn the connection into something other than HTTP/1.1, which
    /// the proxy cannot police yet.
    var asksForAnotherProtocol: Bool {
        method == .CONNECT || headers.contains(name: "upgrade")
    }

    /// The request as sent upstream: the same method, target and end-to-end headers, over
    /// the proxy's own HTTP/1.1 connection.
    var forUpstream: HTTPRequestHead {
        HTTPRequestHead(version: .http1_1, method: method, uri: uri, headers: HopByHop.stripped(headers))
    }

    /// Whether the client said it takes trailers (`te: trailers`), which gRPC needs end to
    /// end: over HTTP/2 upstream it is sent on (it asks nothing of a hop there).
    var acceptsTrailers: Bool { headers[canonicalForm: "te"].contains { $0.lowercased() == "trailers" } }
}
