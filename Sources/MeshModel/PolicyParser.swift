/// Turns policy documents (one file's worth, already converted from YAML to PolicyTree)
/// into validated Policy values, or refuses the whole file.
///
/// Two kinds are read: `cilium.io/v2` CiliumNetworkPolicy (see CiliumPolicyReader for how
/// `specs` entries become policies) and `networking.k8s.io/v1` NetworkPolicy. Validation is
/// strict: unknown fields, wrong types and values SwiftMesh cannot enforce are errors, so
/// a policy never means less than its author wrote.
///
/// Every error is a MeshError(.invalidArgument) whose message reads
/// `<source>: document <n> (<kind> <name>): <path>: <what is wrong>`, e.g.
/// `web.yaml: document 2 (CiliumNetworkPolicy web): spec.ingress[0].toPorts[0].ports[0].port: "http" is not a port number; …`.
public enum PolicyParser {
    /// The `apiVersion`/`kind` pairs SwiftMesh reads.
    public static let supportedKinds: [(apiVersion: String, kind: Policy.Kind)] = [
        ("cilium.io/v2", .ciliumNetworkPolicy),
        ("networking.k8s.io/v1", .networkPolicy),
    ]

    /// Parses every document of one file. Null documents (empty YAML documents) are skipped
    /// but still counted, so document numbers match the file. Two documents may not share a
    /// namespace and name.
    public static func parse(documents: [PolicyTree], source: String) throws(MeshError) -> [Policy] {
        try read(documents: documents, source: source).policies
    }

    /// As `parse`, and also the fields left out as the Kubernetes API server would prune
    /// them (an unknown top-level field, such as the `description` of older Cilium
    /// examples), each as a warning that names the file, document and place.
    public static func read(documents: [PolicyTree], source: String) throws(MeshError) -> (policies: [Policy], warnings: [String]) {
        var policies: [Policy] = []
        var warnings: [String] = []
        var documentOfKey: [String: Int] = [:]
        for (index, tree) in documents.enumerated() {
            if case .null = tree { continue }
            var ignored: [PolicyFieldError] = []
            do throws(PolicyFieldError) {
                let (metadata, parsed) = try parseDocument(PolicyNode(tree: tree, path: ""), ignored: &ignored)
                if let first = documentOfKey[metadata.key] {
                    throw PolicyFieldError(path: "metadata.name",
                                           problem: "\"\(metadata.name)\" in namespace \"\(metadata.namespace)\" is already used by document \(first + 1) of this file; names must be unique per namespace")
                }
                documentOfKey[metadata.key] = index
                policies += parsed
            } catch {
                throw meshError(error, source: source, index: index, document: tree)
            }
            warnings += ignored.map { meshError($0, source: source, index: index, document: tree).message }
        }
        return (policies, warnings)
    }

    /// Top-level fields outside the kind's schema are pruned (added to `ignored`), as the
    /// API server does; inside `spec` every field must be known.
    static func parseDocument(_ node: PolicyNode, ignored: inout [PolicyFieldError]) throws(PolicyFieldError) -> (PolicyMetadata, [Policy]) {
        guard case .map = node.tree else {
            throw node.error("a policy document must be a map with apiVersion, kind, metadata and spec; got \(node.tree.summary)")
        }
        let kind = try documentKind(node)
        switch kind {
        case .ciliumNetworkPolicy:
            let top = try node.prunedFields(allowed: CiliumPolicyReader.topLevelFields, ignored: &ignored)
            let metadata = try PolicyMetadata(top.required("metadata"), ignored: &ignored)
            return (metadata, try CiliumPolicyReader.read(top, metadata: metadata))
        case .networkPolicy:
            let top = try node.prunedFields(allowed: NetworkPolicyReader.topLevelFields, ignored: &ignored)
            let metadata = try PolicyMetadata(top.required("metadata"), ignored: &ignored)
            return (metadata, [try NetworkPolicyReader.read(top, metadata: metadata)])
        }
    }

    /// Which supported kind the document is, from its `apiVersion` and `kind`.
    static func documentKind(_ node: PolicyNode) throws(PolicyFieldError) -> Policy.Kind {
        let top = try node.entries()
        func field(_ key: String) throws(PolicyFieldError) -> String {
            guard let child = top.first(where: { $0.key == key })?.node else {
                throw node.error("missing required field \"\(key)\"", hint: "start the document with apiVersion and kind, e.g. apiVersion: cilium.io/v2 and kind: CiliumNetworkPolicy")
            }
            return try child.string()
        }
        let apiVersion = try field("apiVersion"), kind = try field("kind")
        if let match = supportedKinds.first(where: { $0.kind.rawValue == kind }) {
            guard match.apiVersion == apiVersion else {
                throw PolicyNode(tree: .null, path: "apiVersion").error(
                    "\"\(apiVersion)\" is not the apiVersion of \(kind); use \(match.apiVersion)")
            }
            return match.kind
        }
        let supported = supportedKinds.map { "\($0.kind.rawValue) (\($0.apiVersion))" }.joined(separator: ", ")
        throw PolicyNode(tree: .null, path: "kind").error(
            "\"\(kind)\" (apiVersion \"\(apiVersion)\") is not a policy kind SwiftMesh reads; supported: \(supported)")
    }

    /// The MeshError for `error`, prefixed with the file and the document, named by kind
    /// and name when those can be read.
    static func meshError(_ error: PolicyFieldError, source: String, index: Int, document: PolicyTree) -> MeshError {
        var label: [String] = []
        if case .string(let kind)? = document["kind"] { label.append(kind) }
        if case .string(let name)? = document["metadata"]?["name"] { label.append(name) }
        let named = label.isEmpty ? "" : " (\(label.joined(separator: " ")))"
        let place = error.path.isEmpty ? "" : "\(error.path): "
        return .invalid("\(source): document \(index + 1)\(named): \(place)\(error.problem)", hint: error.hint)
    }
}

/// The `metadata` every document has: its name and namespace. The other fields of a
/// Kubernetes object's metadata are allowed and ignored (server-written ones too); a field
/// it does not have is an error.
struct PolicyMetadata {
    let name: String
    let namespace: String
    /// metadata.namespace was given (a Namespace may not have one).
    let hasNamespace: Bool
    let labels: Labels
    var key: String { "\(namespace)/\(name)" }

    static let objectMetaFields = ["name", "namespace", "labels", "annotations", "generateName", "finalizers", "ownerReferences"]

    init(_ node: PolicyNode, ignored: inout [PolicyFieldError]) throws(PolicyFieldError) {
        // Server-written fields are dropped; any other unknown one is an error: a typo
        // such as "namepsace" would otherwise move the policy into "default".
        for (key, child) in try node.entries() where !Self.objectMetaFields.contains(key) && !PolicyNode.serverWrittenFields.contains(key) {
            let guess = closest(to: key, in: Self.objectMetaFields).map { "; did you mean \"\($0)\"?" } ?? ""
            throw child.error("unknown field \"\(key)\" in metadata\(guess)", hint: "metadata takes \(Self.objectMetaFields.joined(separator: ", "))")
        }
        let fields = try node.prunedFields(allowed: Self.objectMetaFields, ignored: &ignored)
        let nameNode = try fields.required("name")
        name = try nameNode.string()
        guard isDNSSubdomain(name) else {
            throw nameNode.error("\"\(name)\" is not a valid name: use at most 253 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit")
        }
        hasNamespace = fields.has("namespace")
        if let namespaceNode = fields.optional("namespace") {
            namespace = try namespaceNode.string()
            guard isDNSLabel(namespace) else {
                throw namespaceNode.error("\"\(namespace)\" is not a valid namespace: use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit")
            }
        } else {
            namespace = "default"
        }
        _ = try fields.optional("annotations")?.entries()
        let labelMap = try fields.optional("labels")?.labelMap() ?? [:]
        self.labels = (try? Labels(labelMap)) ?? Labels() // each pair is checked above
    }
}

/// Port ranges as both kinds write them: `port` (a number or a string of digits),
/// optional `endPort`; no `port` at all means every port of the protocol.
enum PolicyPorts {
    static func range(_ fields: PolicyFields, proto: PortRange.L4Protocol) throws(PolicyFieldError) -> PortRange {
        let endNode = fields.optional("endPort")
        guard let portNode = fields.optional("port") else {
            if let endNode { throw endNode.error("endPort needs a port to start the range") }
            return PortRange(proto: proto, from: 1, to: 65535)
        }
        let port = try portNode.portNumber()
        guard let endNode else { return PortRange(proto: proto, from: port, to: port) }
        let end = try endNode.portNumber(field: "endPort")
        guard end >= port else { throw endNode.error("endPort \(end) is less than port \(port)") }
        return PortRange(proto: proto, from: port, to: end)
    }
}

/// Kubernetes object names (RFC 1123 subdomain): at most 253 characters, dot-separated
/// parts of lowercase letters, digits and '-', each starting and ending alphanumeric.
func isDNSSubdomain(_ s: String) -> Bool {
    guard !s.isEmpty, s.count <= 253 else { return false }
    let ok: (Character) -> Bool = { $0.isASCII && ($0.isLowercase || $0.isNumber) }
    return s.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { part in
        guard let f = part.first, let l = part.last else { return false }
        return ok(f) && ok(l) && part.allSatisfy { ok($0) || $0 == "-" }
    }
}
