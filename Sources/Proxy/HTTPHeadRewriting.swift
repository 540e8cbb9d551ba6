import MeshModel
import NIOHTTP1

/// Headers that describe one hop, not the message: never forwarded (RFC 9110 §7.6.1):
/// connection, keep-alive, proxy-connection, te, trailer, upgrade, and those the
/// Connection header names.
enum HopByHop {
    /// `headers` without the hop-by-hop ones. This runs on every request and response, so it
    /// allocates nothing for headers with none to drop, and compares a name in full only when
    /// its first letter and length fit a hop-by-hop name. (Lower-casing every name, or NIO's
    /// `canonicalForm`, allocated per header; a plain comparison with each name cost 3% of
    /// the proxy's time under wrk.)
    static func stripped(_ headers: HTTPHeaders) -> HTTPHeaders {
        var drop: [String] = []
        for (name, value) in headers where isHopByHop(name) {
            drop.append(name)
            if sameName(name, "connection") {
                for token in value.utf8.split(separator: UInt8(ascii: ",")) { drop.append(trimmed(token)) }
            }
        }
        guard !drop.isEmpty else { return headers }
        var out = headers
        for name in drop { out.remove(name: name) }
        return out
    }

    static func isHopByHop(_ name: String) -> Bool {
        guard let first = name.utf8.first else { return false }
        let candidate: String
        switch (first | 0x20, name.utf8.count) {
        case (UInt8(ascii: "c"), 10): candidate = "connection"
        case (UInt8(ascii: "k"), 10): candidate = "keep-alive"
        case (UInt8(ascii: "p"), 16): candidate = "proxy-connection"
        case (UInt8(ascii: "t"), 2): candidate = "te"
        case (UInt8(ascii: "t"), 7): candidate = "trailer"
        case (UInt8(ascii: "u"), 7): candidate = "upgrade"
        default: return false
        }
        return sameName(name, candidate)
    }

    /// Whether two header names are the same, ASCII letters compared without case.
    static func sameName(_ name: String, _ other: some StringProtocol) -> Bool {
        name.utf8.count == other.utf8.count
            && name.utf8.elementsEqual(other.utf8) { a, b in (a >= 0x41 && a <= 0x5A ? a | 0x20 : a) == (b >= 0x41 && b <= 0x5A ? b | 0x20 : b) }
    }

    /// A Connection header's token without the blanks around it, read by bytes: walking
    /// Characters showed in the profile.
    private static func trimmed(_ token: Substring.UTF8View) -> String {
        let blank = { (b: UInt8) in b == UInt8(ascii: " ") || b == UInt8(ascii: "\t") }
        var lo = token.startIndex, hi = token.endIndex
        while lo < hi, blank(token[lo]) { token.formIndex(after: &lo) }
        while lo < hi, blank(token[token.index(before: hi)]) { token.formIndex(before: &hi) }
        return String(decoding: token[lo..<hi], as: UTF8.self)
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
