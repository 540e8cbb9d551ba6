/// Reads `gateway.networking.k8s.io/v1` HTTPRoute documents (see PolicyParser for the error
/// format). Every field of the Gateway API's HTTPRoute is known: the ones SwiftMesh does not
/// implement are refused by name rather than ignored, since a route that silently drops a
/// filter or a match would send requests where its author did not mean them to go.
enum HTTPRouteReader {
    static let apiVersions = ["gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"]
    static let topLevel = ["apiVersion", "kind", "metadata", "spec"]
    static let specFields = ["parentRefs", "hostnames", "rules"]
    static let parentFields = ["group", "kind", "namespace", "name", "port", "sectionName"]
    static let ruleFields = ["name", "matches", "filters", "backendRefs", "timeouts", "retry", "sessionPersistence"]
    static let matchFields = ["path", "headers", "queryParams", "method"]
    static let backendFields = ["group", "kind", "namespace", "name", "port", "weight", "filters"]
    static let filterTypes = ["RequestHeaderModifier", "ResponseHeaderModifier", "URLRewrite"]
    static let otherFilterTypes = ["RequestMirror", "RequestRedirect", "ExtensionRef", "CORS", "ExternalAuth"]
    static let methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]
    /// Limits of the Gateway API's own schema.
    static let maxRules = 16, maxMatches = 64, maxBackends = 16, maxHeaderMatches = 16, maxWeight = 1_000_000

    static func route(_ top: PolicyFields, metadata: PolicyMetadata) throws(PolicyFieldError) -> HTTPRoute {
        let spec = try top.required("spec", hint: "an HTTPRoute needs spec.parentRefs and spec.rules").fields(allowed: specFields)
        var parents: [HTTPRoute.ParentRef] = []
        var gatewayParents: [GatewayParentRef] = []
        let parentNodes = try spec.required("parentRefs", hint: "name the Service (mesh) or Gateway (ingress) the route applies to: parentRefs: [{kind: Service, name: web}]")
            .nonEmptyList(of: "parent")
        for node in parentNodes {
            let f = try node.fields(allowed: parentFields)
            if try GatewayReader.namesGateway(f) {
                let parent = try GatewayReader.gatewayParent(f, namespace: metadata.namespace)
                if gatewayParents.contains(parent) { throw node.error("this parent is already given") }
                gatewayParents.append(parent)
                continue
            }
            try serviceKind(f, what: "parentRefs", refusal: "an HTTPRoute's parent is a Service (mesh) or a Gateway (ingress)")
            if let s = f.optional("sectionName") { throw s.error("sectionName is not supported for a Service parent; use port") }
            let parent = HTTPRoute.ParentRef(name: try serviceName(f), namespace: try namespace(f, default: metadata.namespace),
                                             port: try f.optional("port")?.portNumber())
            if parents.contains(parent) { throw node.error("this parent is already given") }
            parents.append(parent)
        }
        let hostnames = try hostnames(spec)
        var rules: [HTTPRoute.Rule] = []
        let ruleNodes = try spec.optional("rules")?.list() ?? []
        guard ruleNodes.count <= maxRules else { throw try spec.required("rules").error("at most \(maxRules) rules") }
        for node in ruleNodes { rules.append(try rule(node, namespace: metadata.namespace)) }
        if rules.isEmpty {
            // The Gateway API's default: one rule that matches everything and has no backend.
            rules = [HTTPRoute.Rule(backends: [])]
        }
        return HTTPRoute(name: metadata.name, namespace: metadata.namespace, parents: parents, gatewayParents: gatewayParents,
                         hostnames: hostnames, rules: rules)
    }

    /// `spec.hostnames`, lower case.
    static func hostnames(_ spec: PolicyFields) throws(PolicyFieldError) -> [String] {
        var out: [String] = []
        for node in try spec.optional("hostnames")?.list() ?? [] {
            let h = try node.string().lowercased()
            guard GatewayHostname.isValid(h) else {
                throw node.error("\"\(h)\" is not a hostname (a DNS name, optionally starting with \"*.\")")
            }
            out.append(h)
        }
        return out
    }

    static func rule(_ node: PolicyNode, namespace routeNamespace: String) throws(PolicyFieldError) -> HTTPRoute.Rule {
        let f = try node.fields(allowed: ruleFields)
        if let s = f.optional("sessionPersistence") { throw s.error("sessionPersistence is not supported") }
        var matches: [HTTPRoute.Match] = []
        let matchNodes = try f.optional("matches")?.list() ?? []
        guard matchNodes.count <= maxMatches else { throw node.error("at most \(maxMatches) matches in a rule") }
        for m in matchNodes { matches.append(try match(m)) }
        var filters: [HTTPRoute.Filter] = []
        for fn in try f.optional("filters")?.list() ?? [] { filters.append(try filter(fn)) }
        let backendNodes = try f.optional("backendRefs")?.list() ?? []
        guard backendNodes.count <= maxBackends else { throw node.error("at most \(maxBackends) backendRefs in a rule") }
        let backends = try backendRefs(backendNodes, routeNamespace: routeNamespace)
        var timeouts: HTTPRoute.Timeouts?
        if let t = f.optional("timeouts") {
            let tf = try t.fields(allowed: ["request", "backendRequest"])
            let request = try tf.optional("request").flatMap { n throws(PolicyFieldError) in try duration(n) }
            let backend = try tf.optional("backendRequest").flatMap { n throws(PolicyFieldError) in try duration(n) }
            if let request, let backend, backend > request {
                throw t.error("backendRequest (\(backend)s) is longer than request (\(request)s)",
                              hint: "each attempt must fit in the whole request's time")
            }
            timeouts = HTTPRoute.Timeouts(request: request, backendRequest: backend)
        }
        var retry: HTTPRoute.Retry?
        if let r = f.optional("retry") {
            let rf = try r.fields(allowed: ["attempts", "backoff", "codes"])
            var attempts = 1
            if let a = rf.optional("attempts") {
                guard case .int(let n) = a.tree else { throw a.typeError(expected: "a whole number") }
                guard (0...10).contains(n) else { throw a.error("\(n) attempts: give 0 to 10") }
                attempts = n
            }
            let backoff = try rf.optional("backoff").flatMap { n throws(PolicyFieldError) in try duration(n) } ?? 0.025
            var codes: [Int] = []
            for c in try rf.optional("codes")?.list() ?? [] {
                guard case .int(let n) = c.tree else { throw c.typeError(expected: "an HTTP status code") }
                guard (400...599).contains(n) else { throw c.error("\(n) is not a retryable status (400-599)") }
                codes.append(n)
            }
            retry = HTTPRoute.Retry(attempts: attempts, backoffSeconds: backoff, codes: codes.isEmpty ? HTTPRoute.Retry.defaultCodes : codes)
        }
        return HTTPRoute.Rule(matches: matches, filters: filters, backends: backends, timeouts: timeouts, retry: retry)
    }

    /// `backendRefs[]`: Services with a port and a weight.
    static func backendRefs(_ nodes: [PolicyNode], routeNamespace: String) throws(PolicyFieldError) -> [HTTPRoute.BackendRef] {
        guard nodes.count <= maxBackends else { throw nodes[maxBackends].error("at most \(maxBackends) backendRefs") }
        var backends: [HTTPRoute.BackendRef] = []
        for b in nodes {
            let bf = try b.fields(allowed: backendFields)
            try serviceKind(bf, what: "backendRefs", refusal: "a backend must be a Service")
            if let ff = bf.optional("filters"), !(try ff.list()).isEmpty {
                throw ff.error("filters on a backendRef are not supported; put them on the rule")
            }
            guard let portNode = bf.optional("port") else {
                throw b.error("missing required field \"port\"", hint: "a Service backend needs the Service's port, e.g. port: 80")
            }
            var weight: UInt32 = 1
            if let w = bf.optional("weight") {
                guard case .int(let n) = w.tree else { throw w.typeError(expected: "a whole number") }
                guard (0...maxWeight).contains(n) else { throw w.error("\(n) is not a weight (0-\(maxWeight))") }
                weight = UInt32(n)
            }
            backends.append(HTTPRoute.BackendRef(name: try serviceName(bf), namespace: try namespace(bf, default: routeNamespace),
                                                 port: try portNode.portNumber(), weight: weight))
        }
        return backends
    }

    static func match(_ node: PolicyNode) throws(PolicyFieldError) -> HTTPRoute.Match {
        let f = try node.fields(allowed: matchFields)
        var out = HTTPRoute.Match()
        if let p = f.optional("path") {
            let pf = try p.fields(allowed: ["type", "value"])
            let typeName = try pf.optional("type")?.choice(HTTPRoute.PathMatch.Kind.allCases.map(\.rawValue), what: "path match type")
            let kind = typeName.flatMap { HTTPRoute.PathMatch.Kind(rawValue: $0) } ?? .pathPrefix
            let valueNode = pf.optional("value")
            let value = try valueNode?.string() ?? "/"
            switch kind {
            case .exact, .pathPrefix:
                guard value.hasPrefix("/"), !value.contains("?"), !value.contains("#"), !value.contains("//") else {
                    throw (valueNode ?? p).error("\"\(value)\" is not an absolute path (it starts with \"/\" and has no \"?\", \"#\" or \"//\")")
                }
            case .regularExpression:
                try compiles(value, at: valueNode ?? p)
            }
            out.path = HTTPRoute.PathMatch(type: kind, value: value)
        }
        let headers = try f.optional("headers")?.list() ?? []
        guard headers.count <= maxHeaderMatches else { throw node.error("at most \(maxHeaderMatches) header matches") }
        for h in headers {
            let m = try valueMatch(h)
            guard isHeaderName(m.name) else { throw h.error("\"\(m.name)\" is not a valid header name") }
            guard !out.headers.contains(where: { $0.name.lowercased() == m.name.lowercased() }) else {
                throw h.error("header \"\(m.name)\" is matched twice")
            }
            out.headers.append(HTTPRoute.ValueMatch(type: m.type, name: m.name.lowercased(), value: m.value))
        }
        let params = try f.optional("queryParams")?.list() ?? []
        guard params.count <= maxHeaderMatches else { throw node.error("at most \(maxHeaderMatches) query parameter matches") }
        for q in params {
            let m = try valueMatch(q)
            guard !out.queryParams.contains(where: { $0.name == m.name }) else { throw q.error("query parameter \"\(m.name)\" is matched twice") }
            out.queryParams.append(m)
        }
        if let m = f.optional("method") { out.method = try m.choice(methods, what: "method") }
        return out
    }

    static func valueMatch(_ node: PolicyNode) throws(PolicyFieldError) -> HTTPRoute.ValueMatch {
        let f = try node.fields(allowed: ["type", "name", "value"])
        let typeName = try f.optional("type")?.choice(HTTPRoute.ValueMatch.Kind.allCases.map(\.rawValue), what: "match type")
        let kind = typeName.flatMap { HTTPRoute.ValueMatch.Kind(rawValue: $0) } ?? .exact
        let name = try f.required("name").string()
        guard !name.isEmpty, name.utf8.count <= 256 else { throw try f.required("name").error("a name of 1 to 256 characters") }
        let valueNode = try f.required("value")
        let value = try valueNode.string()
        if kind == .regularExpression { try compiles(value, at: valueNode) }
        return HTTPRoute.ValueMatch(type: kind, name: name, value: value)
    }

    static func filter(_ node: PolicyNode) throws(PolicyFieldError) -> HTTPRoute.Filter {
        let keys = ["type", "requestHeaderModifier", "responseHeaderModifier", "urlRewrite", "requestMirror", "requestRedirect",
                    "extensionRef", "cors", "externalAuth"]
        let f = try node.fields(allowed: keys)
        let typeNode = try f.required("type", hint: "one of \(filterTypes.joined(separator: ", "))")
        let type = try typeNode.string()
        if otherFilterTypes.contains(type) {
            throw typeNode.error("filter \(type) is not supported; SwiftMesh applies \(filterTypes.joined(separator: ", "))")
        }
        let type2 = try typeNode.choice(filterTypes, what: "filter type")
        let field = ["RequestHeaderModifier": "requestHeaderModifier", "ResponseHeaderModifier": "responseHeaderModifier",
                     "URLRewrite": "urlRewrite"][type2]!
        let body = try f.required(field, hint: "a \(type2) filter carries its settings in \"\(field)\"")
        for other in keys where other != "type" && other != field && f.has(other) {
            throw try f.required(other).error("\"\(other)\" does not go with a \(type2) filter")
        }
        switch type2 {
        case "RequestHeaderModifier": return .requestHeaderModifier(try headerModifier(body))
        case "ResponseHeaderModifier": return .responseHeaderModifier(try headerModifier(body))
        default:
            let uf = try body.fields(allowed: ["hostname", "path"])
            var rewrite = HTTPRoute.URLRewrite()
            if let h = uf.optional("hostname") {
                let host = try h.string()
                guard isDNSSubdomain(host) else { throw h.error("\"\(host)\" is not a hostname") }
                rewrite.hostname = host
            }
            if let p = uf.optional("path") {
                let pf = try p.fields(allowed: ["type", "replaceFullPath", "replacePrefixMatch"])
                let t = try pf.required("type").choice(["ReplaceFullPath", "ReplacePrefixMatch"], what: "path rewrite type")
                let valueNode = try pf.required(t == "ReplaceFullPath" ? "replaceFullPath" : "replacePrefixMatch")
                let value = try valueNode.string()
                guard value.hasPrefix("/") else { throw valueNode.error("\"\(value)\" is not an absolute path") }
                rewrite.path = t == "ReplaceFullPath" ? .replaceFullPath(value) : .replacePrefixMatch(value)
            }
            return .urlRewrite(rewrite)
        }
    }

    static func headerModifier(_ node: PolicyNode) throws(PolicyFieldError) -> HTTPRoute.HeaderModifier {
        let f = try node.fields(allowed: ["set", "add", "remove"])
        func headers(_ key: String) throws(PolicyFieldError) -> [HTTPRoute.Header] {
            var out: [HTTPRoute.Header] = []
            for h in try f.optional(key)?.list() ?? [] {
                let hf = try h.fields(allowed: ["name", "value"])
                let name = try hf.required("name").string()
                guard isHeaderName(name) else { throw try hf.required("name").error("\"\(name)\" is not a valid header name") }
                let value = try hf.required("value").string()
                guard !value.contains("\r"), !value.contains("\n") else { throw try hf.required("value").error("a header value is one line") }
                out.append(HTTPRoute.Header(name: name, value: value))
            }
            return out
        }
        var remove: [String] = []
        for r in try f.optional("remove")?.list() ?? [] {
            let name = try r.string()
            guard isHeaderName(name) else { throw r.error("\"\(name)\" is not a valid header name") }
            remove.append(name)
        }
        return HTTPRoute.HeaderModifier(set: try headers("set"), add: try headers("add"), remove: remove)
    }

    // MARK: pieces

    /// `group` (empty or `core`) and `kind` (`Service`, the default) of a reference.
    static func serviceKind(_ f: PolicyFields, what: String, refusal: String) throws(PolicyFieldError) {
        if let g = f.optional("group") {
            let group = try g.string()
            guard group.isEmpty || group == "core" else { throw g.error("group \"\(group)\": \(refusal)") }
        }
        if let k = f.optional("kind") {
            let kind = try k.string()
            guard kind == "Service" else { throw k.error("kind \(kind): \(refusal)") }
        } else if what == "parentRefs" {
            // The Gateway API's default parent kind is Gateway.
            throw f.node.error("a parentRef without kind names a Gateway: \(refusal)", hint: "write kind: Service")
        }
    }

    static func serviceName(_ f: PolicyFields) throws(PolicyFieldError) -> String {
        let n = try f.required("name")
        let name = try n.string()
        guard isDNSLabel(name) else { throw n.error("\"\(name)\" is not a Service name") }
        return name
    }

    static func namespace(_ f: PolicyFields, default ns: String) throws(PolicyFieldError) -> String {
        guard let n = f.optional("namespace") else { return ns }
        let s = try n.string()
        guard isDNSLabel(s) else { throw n.error("\"\(s)\" is not a namespace name") }
        return s
    }

    static func compiles(_ pattern: String, at node: PolicyNode) throws(PolicyFieldError) {
        do { _ = try compileRegex(pattern) } catch { throw node.error(error) }
    }

    /// A token, and no longer than the Gateway API allows.
    static func isHeaderName(_ s: String) -> Bool { s.utf8.count <= 256 && HTTPRoute.isHeaderName(s) }

    /// A Gateway API duration (GEP-2257): one or more number-and-unit parts, units h, m, s
    /// and ms, e.g. `10s`, `500ms`, `1h30m`. `0s` means no timeout (nil).
    static func duration(_ node: PolicyNode) throws(PolicyFieldError) -> Double? {
        let text = try node.string()
        let bad = node.error("\"\(text)\" is not a duration", hint: "write e.g. 10s, 500ms or 1m30s (units h, m, s, ms)")
        var total = 0.0
        var rest = Substring(text)
        guard !rest.isEmpty else { throw bad }
        while !rest.isEmpty {
            let digits = rest.prefix { $0.isASCII && $0.isNumber }
            guard !digits.isEmpty, digits.count <= 5, let n = Int(digits) else { throw bad }
            rest = rest.dropFirst(digits.count)
            let unit: Double
            if rest.hasPrefix("ms") { unit = 0.001; rest = rest.dropFirst(2) }
            else if rest.hasPrefix("h") { unit = 3600; rest = rest.dropFirst() }
            else if rest.hasPrefix("m") { unit = 60; rest = rest.dropFirst() }
            else if rest.hasPrefix("s") { unit = 1; rest = rest.dropFirst() }
            else { throw bad }
            total += Double(n) * unit
        }
        return total == 0 ? nil : total
    }
}
