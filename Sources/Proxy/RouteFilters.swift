import MeshModel
import NIOHTTP1

/// A route rule's filters, checked once per configuration: what it changes on the request
/// sent upstream and on the response sent back.
struct RouteFilters: Sendable {
    var request: [HTTPRoute.HeaderModifier] = []
    var response: [HTTPRoute.HeaderModifier] = []
    var hostname: String?
    var path: HTTPRoute.URLRewrite.PathRewrite?

    init(_ filters: [HTTPRoute.Filter], place: String) throws(MeshError) {
        for (i, filter) in filters.enumerated() {
            let at = "\(place).filters[\(i)]"
            switch filter {
            case .requestHeaderModifier(let m):
                try HeaderFilters.check(m, at)
                request.append(m)
            case .responseHeaderModifier(let m):
                try HeaderFilters.check(m, at)
                response.append(m)
            case .urlRewrite(let rewrite):
                if let host = rewrite.hostname {
                    try HeaderFilters.checkValue(host, "\(at).hostname")
                    hostname = host
                }
                switch rewrite.path {
                case .replaceFullPath(let p)?, .replacePrefixMatch(let p)?:
                    guard p.isEmpty || p.hasPrefix("/"), !p.utf8.contains(where: { $0 == UInt8(ascii: "?") || $0 <= 0x20 || $0 == 0x7f }) else {
                        throw MeshError.invalid("\(at).path: \"\(p)\" is not a path (it must start with / and hold no query, space or control character)")
                    }
                    path = rewrite.path
                case nil:
                    break
                }
            }
        }
    }

    /// The request head to send upstream: hop-by-hop headers gone, header modifiers and URL
    /// rewrite applied. `matchedPrefix` is what a PathPrefix match matched.
    func upstreamHead(_ head: HTTPRequestHead, matchedPrefix: Substring?) -> HTTPRequestHead {
        var out = head.forUpstream
        for m in request { HeaderFilters.apply(m, to: &out.headers) }
        if let hostname { out.headers.replaceOrAdd(name: "host", value: hostname) }
        if let path {
            let target = out.uri[...]
            let mark = target.firstIndex(of: "?") ?? target.endIndex
            let oldPath = target[..<mark]
            let query = target[mark...]
            switch path {
            case .replaceFullPath(let p):
                out.uri = (p.isEmpty ? "/" : p) + query
            case .replacePrefixMatch(let p):
                // Only a PathPrefix match says which part to replace; otherwise the path stays.
                if let matchedPrefix {
                    out.uri = Self.replacingPrefix(of: oldPath, matched: matchedPrefix.count, with: p) + query
                }
            }
        }
        return out
    }

    /// Gateway API's ReplacePrefixMatch: `/foo` → `/xyz` turns `/foo/bar` into `/xyz/bar`,
    /// `/foo/` into `/xyz/`; an empty or `/` replacement leaves `/bar` (never `//bar`).
    static func replacingPrefix(of path: Substring, matched: Int, with replacement: String) -> String {
        var head = replacement[...]
        while head.hasSuffix("/") { head.removeLast() }
        let result = String(head) + path.dropFirst(matched)
        return result.isEmpty ? "/" : result
    }

    func apply(toResponse headers: inout HTTPHeaders) {
        for m in response { HeaderFilters.apply(m, to: &headers) }
    }
}

/// Header modifiers: checked so that a configuration can never make the proxy write a
/// malformed head, and applied in Gateway API's order (set, add, remove).
enum HeaderFilters {
    static func check(_ m: HTTPRoute.HeaderModifier, _ place: String) throws(MeshError) {
        for (i, h) in m.set.enumerated() {
            try checkName(h.name, "\(place).set[\(i)].name")
            try checkValue(h.value, "\(place).set[\(i)].value")
        }
        for (i, h) in m.add.enumerated() {
            try checkName(h.name, "\(place).add[\(i)].name")
            try checkValue(h.value, "\(place).add[\(i)].value")
        }
        for (i, name) in m.remove.enumerated() { try checkName(name, "\(place).remove[\(i)]") }
    }

    /// RFC 9110 token characters only.
    static func checkName(_ name: String, _ place: String) throws(MeshError) {
        guard HTTPRoute.isHeaderName(name) else {
            throw MeshError.invalid("\(place): \"\(name)\" is not a header name")
        }
    }

    static func checkValue(_ value: String, _ place: String) throws(MeshError) {
        guard !value.utf8.contains(where: { $0 == 0x0d || $0 == 0x0a || $0 == 0 }) else {
            throw MeshError.invalid("\(place): a header value may not contain CR, LF or NUL")
        }
    }

    static func apply(_ m: HTTPRoute.HeaderModifier, to headers: inout HTTPHeaders) {
        for h in m.set { headers.replaceOrAdd(name: h.name, value: h.value) }
        for h in m.add { headers.add(name: h.name, value: h.value) }
        for name in m.remove { headers.remove(name: name) }
    }
}
