/// What is wrong at one place of a policy document. PolicyParser turns it into a
/// MeshError that also names the file and the document.
struct PolicyFieldError: Error {
    /// Where, e.g. `spec.ingress[0].toPorts[0].ports[0].port`; empty for the document itself.
    var path: String
    var problem: String
    var hint: String?
}

/// A value of a policy document together with its path, so that every check can say
/// where it failed. Readers take a node and return model values or throw.
struct PolicyNode {
    let tree: PolicyTree
    let path: String

    func error(_ problem: String, hint: String? = nil) -> PolicyFieldError {
        PolicyFieldError(path: path, problem: problem, hint: hint)
    }

    /// Re-throws a validation error of the model (CIDR, label) as an error at this node,
    /// keeping its words and hint.
    func error(_ cause: MeshError) -> PolicyFieldError {
        error(cause.message, hint: cause.hint)
    }

    /// The path of `key` below this node: `a.key`, or `a["app.kubernetes.io/name"]` when
    /// the key is not a plain word and dots would make the path ambiguous.
    func path(of key: String) -> String {
        let plain = !key.isEmpty && key.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") }
        if !plain { return "\(path)[\"\(key)\"]" }
        return path.isEmpty ? key : "\(path).\(key)"
    }

    func typeError(expected: String) -> PolicyFieldError {
        if case .null = tree {
            return error("expected \(expected), got an empty value",
                         hint: "write [] for an empty list or {} for an empty map, or leave the field out")
        }
        return error("expected \(expected), got \(tree.summary)")
    }

    // MARK: Shapes

    /// The node as a map whose keys are all in `allowed`; anything else is refused with the
    /// list of what is allowed here.
    func fields(allowed: [String]) throws(PolicyFieldError) -> PolicyFields {
        guard case .map(let pairs) = tree else { throw typeError(expected: "a map") }
        var seen = Set<String>()
        for (key, _) in pairs {
            guard seen.insert(key).inserted else { throw PolicyNode(tree: .null, path: path(of: key)).error("field \"\(key)\" is given twice") }
            guard allowed.contains(key) else { throw unknownField(key, allowed: allowed) }
        }
        return PolicyFields(node: self, pairs: pairs)
    }

    /// The node as a map whose keys in `allowed` are read and whose other keys are left
    /// out, as the Kubernetes API server prunes fields its schema does not know: each
    /// dropped key is added to `ignored` (server-written ones such as `status` silently).
    func prunedFields(allowed: [String], ignored: inout [PolicyFieldError]) throws(PolicyFieldError) -> PolicyFields {
        guard case .map(let pairs) = tree else { throw typeError(expected: "a map") }
        var seen = Set<String>()
        var kept: [(String, PolicyTree)] = []
        for (key, value) in pairs {
            guard seen.insert(key).inserted else { throw PolicyNode(tree: .null, path: path(of: key)).error("field \"\(key)\" is given twice") }
            if allowed.contains(key) {
                kept.append((key, value))
            } else if !Self.serverWrittenFields.contains(key) {
                let guess = closest(to: key, in: allowed).map { "; did you mean \"\($0)\"?" } ?? ""
                ignored.append(PolicyNode(tree: .null, path: path(of: key)).error(
                    "unknown field \"\(key)\" ignored, as the Kubernetes API server would drop it\(guess)"))
            }
        }
        return PolicyFields(node: self, pairs: kept)
    }

    /// The node as a map of any keys (each once), in document order.
    func entries() throws(PolicyFieldError) -> [(key: String, node: PolicyNode)] {
        guard case .map(let pairs) = tree else { throw typeError(expected: "a map") }
        var seen = Set<String>()
        var out: [(key: String, node: PolicyNode)] = []
        for (key, value) in pairs {
            let child = PolicyNode(tree: value, path: path(of: key))
            guard seen.insert(key).inserted else { throw child.error("field \"\(key)\" is given twice") }
            out.append((key, child))
        }
        return out
    }

    func list() throws(PolicyFieldError) -> [PolicyNode] {
        guard case .list(let items) = tree else { throw typeError(expected: "a list") }
        return items.enumerated().map { PolicyNode(tree: $1, path: "\(path)[\($0)]") }
    }

    /// A list with at least one item; `what` says what the items are for the message.
    func nonEmptyList(of what: String) throws(PolicyFieldError) -> [PolicyNode] {
        let items = try list()
        guard !items.isEmpty else { throw error("the list is empty; give at least one \(what) or leave the field out") }
        return items
    }

    // MARK: Scalars

    func string() throws(PolicyFieldError) -> String {
        switch tree {
        case .string(let s): return s
        case .int(let i): throw error("expected a string, got the number \(i)", hint: "quote it: \"\(i)\"")
        case .bool(let b): throw error("expected a string, got the boolean \(b)", hint: "quote it: \"\(b)\"")
        default: throw typeError(expected: "a string")
        }
    }

    /// A string that must be one of `choices`, compared without regard to case when
    /// `ignoringCase`; returns the choice as spelled in `choices`.
    func choice(_ choices: [String], ignoringCase: Bool = false, what: String) throws(PolicyFieldError) -> String {
        let s = try string()
        let hit = choices.first { ignoringCase ? $0.lowercased() == s.lowercased() : $0 == s }
        guard let hit else {
            throw error("\(what) \"\(s)\" is not supported; use one of \(choices.joined(separator: ", "))")
        }
        return hit
    }

    /// A port number 1-65535, written as an integer or as a string of digits.
    func portNumber(field: String = "port") throws(PolicyFieldError) -> UInt16 {
        let value: Int
        switch tree {
        case .int(let i): value = i
        case .string(let s):
            guard !s.isEmpty, s.allSatisfy({ $0.isASCII && $0.isNumber }), let i = Int(s) else {
                throw error("\"\(s)\" is not a port number; named ports are not supported, give the number (1-65535)")
            }
            value = i
        default: throw typeError(expected: "a port number")
        }
        guard (1...65535).contains(value) else {
            let allHint = field == "port" ? "; to allow every port leave \"port\" out" : ""
            throw error("\(value) is not a port number (1-65535)\(allHint)")
        }
        return UInt16(value)
    }

    /// A map of Kubernetes labels (`metadata.labels`, a Service's `selector`), each key and
    /// value checked, an error at the offending one.
    func labelMap() throws(PolicyFieldError) -> [String: String] {
        var out: [String: String] = [:]
        for (key, child) in try entries() {
            let value = try child.string()
            do {
                try Labels.validateKey(key)
                try Labels.validateValue(value, key: key)
            } catch { throw child.error(error) }
            out[key] = value
        }
        return out
    }

    func cidr() throws(PolicyFieldError) -> IPv4CIDR {
        let text = try string()
        do { return try IPv4CIDR(parsing: text) } catch { throw self.error(error) }
    }

    // MARK: Unknown fields

    /// Fields of Cilium and Kubernetes policies that are real but that SwiftMesh does not
    /// implement; naming them as such is kinder than calling them unknown.
    static let unsupportedFields: Set<String> = [
        "toFQDNs", "toServices", "fromRequires", "toRequires", "fromGroups", "toGroups",
        "fromNodes", "toNodes", "authentication", "nodeSelector", "enableDefaultDeny",
        "labels", "originatingTLS", "terminatingTLS", "serverNames", "listener",
        "kafka", "dns", "l7proto", "l7", "headerMatches", "cidrGroupRef", "cidrGroupSelector",
    ]

    /// Fields the Kubernetes API server adds to stored objects.
    static let serverWrittenFields: Set<String> = [
        "status", "uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink",
        "deletionTimestamp", "deletionGracePeriodSeconds",
    ]

    private func unknownField(_ key: String, allowed: [String]) -> PolicyFieldError {
        let child = PolicyNode(tree: .null, path: path(of: key))
        let list = allowed.joined(separator: ", ")
        if Self.unsupportedFields.contains(key) {
            return child.error("\"\(key)\" is not supported by SwiftMesh; supported here: \(list)")
        }
        let guess = closest(to: key, in: allowed).map { "; did you mean \"\($0)\"?" } ?? ""
        let hint = Self.serverWrittenFields.contains(key)
            ? "the API server writes \"\(key)\"; remove it from documents copied from kubectl get -o yaml" : nil
        return child.error("unknown field \"\(key)\"\(guess) (allowed here: \(list))", hint: hint)
    }
}

/// The fields of a map node, already checked against the allowed keys.
struct PolicyFields {
    let node: PolicyNode
    let pairs: [(String, PolicyTree)]

    func has(_ key: String) -> Bool { pairs.contains { $0.0 == key } }

    /// The field is there and is not an empty list: Cilium reads `ingress: []` or
    /// `fromEndpoints: []` exactly as if the field were left out.
    func hasItems(_ key: String) -> Bool {
        pairs.contains { pair in
            guard pair.0 == key else { return false }
            if case .list(let items) = pair.1 { return !items.isEmpty }
            return true
        }
    }

    func optional(_ key: String) -> PolicyNode? {
        pairs.first { $0.0 == key }.map { PolicyNode(tree: $0.1, path: node.path(of: key)) }
    }

    func required(_ key: String, hint: String? = nil) throws(PolicyFieldError) -> PolicyNode {
        guard let child = optional(key) else { throw node.error("missing required field \"\(key)\"", hint: hint) }
        return child
    }
}

/// The candidate nearest to `word` by edit distance, when near enough to be a typo.
func closest(to word: String, in candidates: [String]) -> String? {
    let scored = candidates.map { ($0, editDistance(word.lowercased(), $0.lowercased())) }
    guard let best = scored.min(by: { $0.1 < $1.1 }), best.1 <= max(2, word.count / 3) else { return nil }
    return best.0
}

func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    var row = Array(0...b.count)
    for (i, ca) in a.enumerated() {
        var diagonal = row[0]
        row[0] = i + 1
        for (j, cb) in b.enumerated() {
            let above = row[j + 1]
            row[j + 1] = min(diagonal + (ca == cb ? 0 : 1), above + 1, row[j] + 1)
            diagonal = above
        }
    }
    return row[b.count]
}
