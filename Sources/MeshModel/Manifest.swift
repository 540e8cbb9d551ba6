/// One file for `meshctl apply`: any mix of the kinds SwiftMesh reads, validated whole.
/// Policies are read by PolicyParser, Services and Namespaces by ServiceReader; errors
/// read as PolicyParser's do (`file: document 3 (Service web): spec.ports[0].port: …`).
public struct Manifest: Sendable {
    public struct Document: Sendable {
        /// `kind`, e.g. `Service`.
        public var kind: String
        /// `namespace/name`, or the name of a Namespace.
        public var key: String
        public var tree: PolicyTree
    }

    /// Policy documents in file order (for PolicyEngine, which stores them as written).
    public var policyDocuments: [Document] = []
    public var policies: [Policy] = []
    public var services: [MeshService] = []
    public var namespaces: [Namespace] = []
    public var routes: [HTTPRoute] = []
    public var gateways: [Gateway] = []
    public var tlsRoutes: [TLSRoute] = []
    public var warnings: [String] = []

    public var isEmpty: Bool { policyDocuments.isEmpty && services.isEmpty && namespaces.isEmpty && routes.isEmpty && gateways.isEmpty
        && tlsRoutes.isEmpty }

    /// Every kind `meshctl apply` takes, as `Kind (apiVersion)`.
    public static var supportedKinds: [String] {
        PolicyParser.supportedKinds.map { "\($0.kind.rawValue) (\($0.apiVersion))" } + ["Service (v1)", "Namespace (v1)",
                                                                                          "HTTPRoute (\(HTTPRouteReader.apiVersions[0]))",
                                                                                          "Gateway (\(GatewayReader.gatewayAPIVersions[0]))",
                                                                                          "TLSRoute (\(GatewayReader.tlsRouteAPIVersions[0]))"]
    }

    public static func read(documents: [PolicyTree], source: String) throws(MeshError) -> Manifest {
        var out = Manifest()
        var seen: [String: Int] = [:]
        for (index, tree) in documents.enumerated() {
            if case .null = tree { continue }
            var ignored: [PolicyFieldError] = []
            do throws(PolicyFieldError) {
                let node = PolicyNode(tree: tree, path: "")
                guard case .map = tree else {
                    throw node.error("a document must be a map with apiVersion, kind, metadata and spec; got \(tree.summary)")
                }
                let (apiVersion, kind) = try header(node)
                let documentKey: String
                switch kind {
                case "Service", "Namespace":
                    guard apiVersion == "v1" else {
                        throw PolicyNode(tree: .null, path: "apiVersion").error("\"\(apiVersion)\" is not the apiVersion of \(kind); use v1")
                    }
                    let top = try node.prunedFields(allowed: ServiceReader.serviceTopLevel, ignored: &ignored)
                    let metadata = try PolicyMetadata(top.required("metadata"), ignored: &ignored)
                    if kind == "Service" {
                        // A Service's name is a DNS label of its own (RFC 1035): it becomes
                        // NAME.NAMESPACE.svc.cluster.local.
                        guard isDNSLabel(metadata.name), metadata.name.first?.isLetter == true else {
                            throw PolicyNode(tree: .null, path: "metadata.name").error(
                                "\"\(metadata.name)\" is not a valid Service name: at most 63 lowercase letters, digits and '-', starting with a letter")
                        }
                        out.services.append(try ServiceReader.service(top, metadata: metadata))
                        documentKey = "Service \(metadata.key)"
                    } else {
                        out.namespaces.append(try ServiceReader.namespace(top, metadata: metadata))
                        documentKey = "Namespace \(metadata.name)"
                    }
                case "HTTPRoute":
                    guard HTTPRouteReader.apiVersions.contains(apiVersion) else {
                        throw PolicyNode(tree: .null, path: "apiVersion").error(
                            "\"\(apiVersion)\" is not the apiVersion of HTTPRoute; use \(HTTPRouteReader.apiVersions[0])")
                    }
                    let top = try node.prunedFields(allowed: HTTPRouteReader.topLevel, ignored: &ignored)
                    let metadata = try PolicyMetadata(top.required("metadata"), ignored: &ignored)
                    out.routes.append(try HTTPRouteReader.route(top, metadata: metadata))
                    documentKey = "HTTPRoute \(metadata.key)"
                case "Gateway", "TLSRoute":
                    let versions = kind == "Gateway" ? GatewayReader.gatewayAPIVersions : GatewayReader.tlsRouteAPIVersions
                    guard versions.contains(apiVersion) else {
                        throw PolicyNode(tree: .null, path: "apiVersion").error(
                            "\"\(apiVersion)\" is not the apiVersion of \(kind); use \(versions[0])")
                    }
                    let top = try node.prunedFields(allowed: GatewayReader.topLevel, ignored: &ignored)
                    let metadata = try PolicyMetadata(top.required("metadata"), ignored: &ignored)
                    if kind == "Gateway" {
                        out.gateways.append(try GatewayReader.gateway(top, metadata: metadata))
                    } else {
                        out.tlsRoutes.append(try GatewayReader.tlsRoute(top, metadata: metadata))
                    }
                    documentKey = "\(kind) \(metadata.key)"
                default:
                    guard PolicyParser.supportedKinds.contains(where: { $0.kind.rawValue == kind }) else {
                        throw PolicyNode(tree: .null, path: "kind").error(
                            "\"\(kind)\" (apiVersion \"\(apiVersion)\") is not a kind SwiftMesh reads; supported: \(supportedKinds.joined(separator: ", "))")
                    }
                    let (metadata, parsed) = try PolicyParser.parseDocument(node, ignored: &ignored)
                    out.policies += parsed
                    out.policyDocuments.append(Document(kind: kind, key: metadata.key, tree: tree))
                    documentKey = "policy \(metadata.key)"
                }
                if let first = seen[documentKey] {
                    throw PolicyNode(tree: .null, path: "metadata.name").error("\(documentKey) is already given by document \(first + 1) of this file")
                }
                seen[documentKey] = index
            } catch {
                throw PolicyParser.meshError(error, source: source, index: index, document: tree)
            }
            out.warnings += ignored.map { PolicyParser.meshError($0, source: source, index: index, document: tree).message }
        }
        guard !out.isEmpty else { throw MeshError.invalid("\(source): no documents found") }
        return out
    }

    static func header(_ node: PolicyNode) throws(PolicyFieldError) -> (String, String) {
        let top = try node.entries()
        func field(_ key: String) throws(PolicyFieldError) -> String {
            guard let child = top.first(where: { $0.key == key })?.node else {
                throw node.error("missing required field \"\(key)\"", hint: "start each document with apiVersion and kind, e.g. apiVersion: v1 and kind: Service")
            }
            return try child.string()
        }
        return (try field("apiVersion"), try field("kind"))
    }
}
