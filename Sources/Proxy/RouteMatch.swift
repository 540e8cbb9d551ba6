import MeshModel
import NIOHTTP1

/// A request as route matching reads it: the path without the query, the query's
/// parameters, the Host header without its port. Parsed once per request.
struct RouteRequest {
    var method: String
    var path: Substring
    var query: Substring
    /// Lower case, port removed; empty when the request has no Host header.
    var host: String
    var headers: HTTPHeaders

    init(_ head: HTTPRequestHead) {
        method = head.method.rawValue
        let target = head.uri[...]
        if let mark = target.firstIndex(of: "?") {
            path = target[..<mark]
            query = target[target.index(after: mark)...]
        } else {
            path = target
            query = ""
        }
        host = Self.hostWithoutPort(head.headers.first(name: "host") ?? "")
        headers = head.headers
    }

    static func hostWithoutPort(_ host: String) -> String {
        var name = host[...]
        if name.hasPrefix("[") {
            // An IPv6 literal: the port, if any, follows the bracket.
            if let close = name.firstIndex(of: "]") { name = name[...close] }
        } else if let colon = name.lastIndex(of: ":"), name[name.index(after: colon)...].allSatisfy(\.isASCIIDigit) {
            name = name[..<colon]
        }
        return name.lowercased()
    }

    /// The value of the first parameter called exactly `name`, as sent (Gateway API: only
    /// the first of repeated parameters counts).
    func queryValue(_ name: String) -> Substring? {
        for pair in query.split(separator: "&", omittingEmptySubsequences: true) {
            let eq = pair.firstIndex(of: "=") ?? pair.endIndex
            guard pair[..<eq] == name else { continue }
            return eq == pair.endIndex ? "" : pair[pair.index(after: eq)...]
        }
        return nil
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { isASCII && isNumber }
}

/// One (match, rule) pair of a frontend, compiled: regular expressions built once per
/// configuration.
///
/// Swift's Regex is not Sendable; these are built once, never mutated, and only matched
/// against (which reads them), so sharing them across event loops is safe.
struct CompiledRouteMatch: @unchecked Sendable {
    enum PathTest {
        case exact(String)
        /// The prefix without its trailing slash, so `/foo` and `/foo/` both match element-wise.
        case prefix(String)
        case regex(Regex<AnyRegexOutput>)
    }

    enum ValueTest {
        case exact(String)
        case regex(Regex<AnyRegexOutput>)

        func accepts(_ value: Substring) -> Bool {
            switch self {
            case .exact(let wanted): return value == wanted
            case .regex(let regex): return (try? regex.wholeMatch(in: value)) != nil
            }
        }
    }

    /// A Host the route accepts: a name, or (from `*.example.com`) a suffix preceded by at
    /// least one label.
    enum HostnameTest {
        case exact(String)
        case wildcard(suffix: String)

        func accepts(_ host: String) -> Bool {
            switch self {
            case .exact(let name): return host == name
            case .wildcard(let suffix): return host.count > suffix.count && host.hasSuffix(suffix)
            }
        }
    }

    var rule: Int
    var path: PathTest
    /// Header names in lower case.
    var headers: [(name: String, test: ValueTest)]
    var queryParams: [(name: String, test: ValueTest)]
    var method: String?
    var hostnames: [HostnameTest]

    /// `place` names the match in errors (`route 10.96.0.10:80 matches[2]`).
    init(_ m: ProxyRouteMatch, place: String) throws(MeshError) {
        rule = m.rule
        switch m.match.path.type {
        case .exact:
            path = .exact(m.match.path.value)
        case .pathPrefix:
            var prefix = m.match.path.value
            while prefix.hasSuffix("/") { prefix.removeLast() }
            path = .prefix(prefix)
        case .regularExpression:
            path = .regex(try compileRegex(m.match.path.value, at: "\(place).path"))
        }
        headers = try m.match.headers.enumerated().map { (i, h) throws(MeshError) in
            try HeaderFilters.checkName(h.name, "\(place).headers[\(i)].name")
            return (h.name.lowercased(), try Self.test(h, "\(place).headers[\(i)]"))
        }
        queryParams = try m.match.queryParams.enumerated().map { (i, q) throws(MeshError) in
            (q.name, try Self.test(q, "\(place).queryParams[\(i)]"))
        }
        method = m.match.method?.uppercased()
        hostnames = m.hostnames.map { name in
            let lower = name.lowercased()
            return lower.hasPrefix("*.") ? .wildcard(suffix: String(lower.dropFirst())) : .exact(lower)
        }
    }

    private static func test(_ v: HTTPRoute.ValueMatch, _ place: String) throws(MeshError) -> ValueTest {
        switch v.type {
        case .exact: return .exact(v.value)
        case .regularExpression: return .regex(try compileRegex(v.value, at: "\(place).value"))
        }
    }

    /// Whether `request` fits; for a PathPrefix match, also the part of the path it matched
    /// (what ReplacePrefixMatch replaces).
    func matches(_ request: RouteRequest) -> (matched: Bool, prefix: Substring?) {
        if !hostnames.isEmpty, !hostnames.contains(where: { $0.accepts(request.host) }) { return (false, nil) }
        if let method, request.method != method { return (false, nil) }
        var prefix: Substring?
        switch path {
        case .exact(let wanted):
            guard request.path == wanted else { return (false, nil) }
        case .prefix(let wanted):
            // Element-wise: `/foo` takes `/foo`, `/foo/` and `/foo/bar`, never `/foobar`.
            guard request.path.hasPrefix(wanted) else { return (false, nil) }
            let rest = request.path.dropFirst(wanted.count)
            guard rest.isEmpty || rest.hasPrefix("/") else { return (false, nil) }
            prefix = request.path.prefix(wanted.count)
        case .regex(let regex):
            guard (try? regex.wholeMatch(in: request.path)) != nil else { return (false, nil) }
        }
        for h in headers {
            let values = request.headers[h.name]
            // A repeated header is read as one list, the way it may be folded (RFC 9110 §5.3).
            guard !values.isEmpty, h.test.accepts(values.joined(separator: ",")[...]) else { return (false, nil) }
        }
        for q in queryParams {
            guard let value = request.queryValue(q.name), q.test.accepts(value) else { return (false, nil) }
        }
        return (true, prefix)
    }
}
