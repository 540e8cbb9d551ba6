import MeshModel
import NIOHTTP1

/// Headers that describe one hop, not the message: never forwarded (RFC 9110 §7.6.1):
/// connection, keep-alive, proxy-connection, te, trailer, upgrade, and those the
/// Connection header names.
enum HopByHop {
    static let names = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"]

    /// `headers` without the hop-by-hop ones. This runs on every request and response, so it
    /// works on bytes and allocates nothing beyond the copy it returns (none when there is
    /// nothing to drop): lower-casing every name, NIO's `canonicalForm`, or splitting the
    /// Connection header into an array each showed at 1-3% of the proxy's time under wrk.
    static func stripped(_ headers: HTTPHeaders) -> HTTPHeaders {
        var present: UInt8 = 0   // bit i: names[i] is among the headers
        var named: [String] = []  // other headers the Connection header names (rare)
        for (name, value) in headers {
            guard let i = hopByHopIndex(name.utf8) else { continue }
            present |= 1 << i
            guard i == 0 else { continue }
            forEachToken(value) { token in
                if hopByHopIndex(token) == nil, headers.contains(where: { sameName($0.name.utf8, token) }) {
                    named.append(String(decoding: token, as: UTF8.self))
                }
            }
        }
        guard present != 0 || !named.isEmpty else { return headers }
        var out = headers
        for (i, name) in names.enumerated() where present & (1 << i) != 0 { out.remove(name: name) }
        for name in named { out.remove(name: name) }
        return out
    }

    /// Which of `names` a header name is, ASCII case aside; compared in full only when its
    /// first letter and length fit.
    static func hopByHopIndex<Bytes: Collection<UInt8>>(_ name: Bytes) -> Int? {
        guard let first = name.first else { return nil }
        let i: Int
        switch (first | 0x20, name.count) {
        case (UInt8(ascii: "c"), 10): i = 0
        case (UInt8(ascii: "k"), 10): i = 1
        case (UInt8(ascii: "p"), 16): i = 2
        case (UInt8(ascii: "t"), 2): i = 3
        case (UInt8(ascii: "t"), 7): i = 4
        case (UInt8(ascii: "u"), 7): i = 5
        default: return nil
        }
        return sameName(name, names[i].utf8) ? i : nil
    }

    /// Whether two header names are the same, ASCII letters compared without case.
    static func sameName(_ a: some Collection<UInt8>, _ b: some Collection<UInt8>) -> Bool {
        let lower = { (c: UInt8) in c >= 0x41 && c <= 0x5A ? c | 0x20 : c }
        return a.count == b.count && a.elementsEqual(b) { lower($0) == lower($1) }
    }

    /// Calls `body` with each comma-separated token of a Connection header, without the
    /// blanks around it (empty tokens skipped).
    private static func forEachToken(_ value: String, _ body: (Substring.UTF8View) -> Void) {
        let bytes = Substring(value).utf8
        let blank = { (b: UInt8) in b == UInt8(ascii: " ") || b == UInt8(ascii: "\t") }
        var start = bytes.startIndex
        while start < bytes.endIndex {
            let end = bytes[start...].firstIndex(of: UInt8(ascii: ",")) ?? bytes.endIndex
            var lo = start, hi = end
            while lo < hi, blank(bytes[lo]) { bytes.formIndex(after: &lo) }
            while lo < hi, blank(bytes[bytes.index(before: hi)]) { bytes.formIndex(before: &hi) }
            if lo < hi { body(bytes[lo..<hi]) }
            start = end < bytes.endIndex ? bytes.index(after: end) : end
        }
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
