/// Reads `Gateway` (`gateway.networking.k8s.io/v1`) and `TLSRoute`
/// (`gateway.networking.k8s.io/v1alpha2`) documents, with PolicyParser's error format.
/// As for HTTPRoute, fields of the Gateway API that SwiftMesh does not implement are refused
/// by name: a Gateway that silently listened somewhere else, or took routes it was not
/// meant to, would expose what its author meant to keep in.
enum GatewayReader {
    static let gatewayAPIVersions = ["gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"]
    static let tlsRouteAPIVersions = ["gateway.networking.k8s.io/v1alpha2", "gateway.networking.k8s.io/v1alpha3"]
    static let topLevel = ["apiVersion", "kind", "metadata", "spec"]
    static let specFields = ["gatewayClassName", "listeners", "addresses", "infrastructure", "backendTLS"]
    static let listenerFields = ["name", "hostname", "port", "protocol", "tls", "allowedRoutes"]
    static let maxListeners = 64

    static func gateway(_ top: PolicyFields, metadata: PolicyMetadata) throws(PolicyFieldError) -> Gateway {
        let spec = try top.required("spec", hint: "a Gateway needs spec.gatewayClassName and spec.listeners").fields(allowed: specFields)
        let classNode = try spec.required("gatewayClassName", hint: "e.g. gatewayClassName: swiftmesh")
        let className = try classNode.string()
        guard isDNSSubdomain(className) else { throw classNode.error("\"\(className)\" is not a GatewayClass name") }
        if let a = spec.optional("addresses"), !(try a.list()).isEmpty {
            throw a.error("addresses are not supported: a SwiftMesh Gateway listens on every address of its node")
        }
        for other in ["infrastructure", "backendTLS"] {
            if let n = spec.optional(other) { throw n.error("\(other) is not supported") }
        }
        let nodes = try spec.required("listeners", hint: "e.g. listeners: [{name: http, port: 80, protocol: HTTP}]")
            .nonEmptyList(of: "listener")
        guard nodes.count <= maxListeners else { throw try spec.required("listeners").error("at most \(maxListeners) listeners") }
        var listeners: [Gateway.Listener] = []
        for node in nodes {
            let l = try listener(node, namespace: metadata.namespace)
            if listeners.contains(where: { $0.name == l.name }) { throw node.error("a listener named \"\(l.name)\" is already given") }
            if let same = listeners.first(where: { $0.port == l.port && $0.proto != l.proto }) {
                throw node.error("port \(l.port) is already a \(same.proto.rawValue) listener (\(same.name)); one port speaks one protocol")
            }
            if let same = listeners.first(where: { $0.port == l.port && $0.hostname == l.hostname }) {
                throw node.error("listener \(same.name) already takes port \(l.port) for \(l.hostname ?? "every hostname")",
                                 hint: "listeners of one port differ by hostname")
            }
            listeners.append(l)
        }
        return Gateway(name: metadata.name, namespace: metadata.namespace, className: className, listeners: listeners)
    }

    static func listener(_ node: PolicyNode, namespace: String) throws(PolicyFieldError) -> Gateway.Listener {
        let f = try node.fields(allowed: listenerFields)
        let nameNode = try f.required("name")
        let name = try nameNode.string()
        guard isDNSLabel(name) else { throw nameNode.error("\"\(name)\" is not a listener name (a DNS label)") }
        let port = try f.required("port").portNumber()
        let protoNode = try f.required("protocol", hint: "HTTP, HTTPS or TLS")
        let protoName = try protoNode.string()
        if ["TCP", "UDP"].contains(protoName) {
            throw protoNode.error("protocol \(protoName) is not supported; SwiftMesh's Gateway serves HTTP, HTTPS and TLS listeners")
        }
        let proto = Gateway.ListenerProtocol(rawValue: try protoNode.choice(Gateway.ListenerProtocol.allCases.map(\.rawValue),
                                                                            what: "listener protocol"))!
        var hostname: String?
        if let h = f.optional("hostname") {
            let text = try h.string().lowercased()
            guard GatewayHostname.isValid(text) else { throw h.error("\"\(text)\" is not a hostname (a DNS name, optionally starting with \"*.\")") }
            hostname = text
        }
        var certificates: [Gateway.CertificateRef] = []
        let tlsNode = f.optional("tls")
        switch proto {
        case .http:
            if let tlsNode { throw tlsNode.error("an HTTP listener takes no tls; use protocol HTTPS to end TLS here") }
        case .https, .tls:
            guard let tlsNode else {
                throw node.error("missing required field \"tls\"", hint: proto == .https
                                 ? "an HTTPS listener needs tls.certificateRefs: [{kind: Secret, name: NAME}]"
                                 : "a TLS listener needs tls: {mode: Passthrough}")
            }
            let tf = try tlsNode.fields(allowed: ["mode", "certificateRefs", "options", "frontendValidation"])
            let mode = try tf.optional("mode")?.choice(["Terminate", "Passthrough"], what: "TLS mode") ?? "Terminate"
            for other in ["options", "frontendValidation"] {
                if let n = tf.optional(other) { throw n.error("tls.\(other) is not supported") }
            }
            if proto == .tls {
                guard mode == "Passthrough" else {
                    throw (tf.optional("mode") ?? tlsNode).error(
                        "a TLS listener that ends TLS (Terminate) is not supported; use mode: Passthrough, or protocol HTTPS")
                }
                if let c = tf.optional("certificateRefs"), !(try c.list()).isEmpty {
                    throw c.error("a Passthrough listener presents no certificate: the backend does")
                }
            } else {
                guard mode == "Terminate" else {
                    throw try tf.required("mode").error("an HTTPS listener ends TLS (Terminate); for Passthrough use protocol TLS")
                }
                let refs = try tf.required("certificateRefs", hint: "name the Secret with the certificate: [{kind: Secret, name: NAME}]")
                    .nonEmptyList(of: "certificate reference")
                for r in refs { certificates.append(try certificateRef(r, namespace: namespace)) }
            }
        }
        var fromAll = false
        if let a = f.optional("allowedRoutes") {
            let af = try a.fields(allowed: ["namespaces", "kinds"])
            if let n = af.optional("namespaces") {
                let nf = try n.fields(allowed: ["from", "selector"])
                let from = try nf.optional("from")?.choice(["Same", "All", "Selector"], what: "allowedRoutes.namespaces.from") ?? "Same"
                if from == "Selector" || nf.has("selector") {
                    throw n.error("allowedRoutes.namespaces.from: Selector is not supported; use Same or All")
                }
                fromAll = from == "All"
            }
            for k in try af.optional("kinds")?.list() ?? [] {
                let kf = try k.fields(allowed: ["group", "kind"])
                let kind = try kf.required("kind").string()
                let group = try kf.optional("group")?.string() ?? "gateway.networking.k8s.io"
                guard group == "gateway.networking.k8s.io", kind == proto.routeKind else {
                    throw k.error("a \(proto.rawValue) listener takes \(proto.routeKind)s, not \(kind)")
                }
            }
        }
        return Gateway.Listener(name: name, port: port, proto: proto, hostname: hostname, certificates: certificates,
                                routesFromAllNamespaces: fromAll)
    }

    static func certificateRef(_ node: PolicyNode, namespace: String) throws(PolicyFieldError) -> Gateway.CertificateRef {
        let f = try node.fields(allowed: ["group", "kind", "name", "namespace"])
        if let g = f.optional("group") {
            let group = try g.string()
            guard group.isEmpty || group == "core" else { throw g.error("group \"\(group)\": a certificate is a Secret (group \"\")") }
        }
        if let k = f.optional("kind") {
            let kind = try k.string()
            guard kind == "Secret" else { throw k.error("kind \(kind): a certificate is a Secret") }
        }
        let nameNode = try f.required("name")
        let name = try nameNode.string()
        guard isDNSSubdomain(name) else { throw nameNode.error("\"\(name)\" is not a Secret name") }
        let ns = try HTTPRouteReader.namespace(f, default: namespace)
        guard ns == namespace else {
            throw try f.required("namespace").error(
                "a certificate of another namespace needs a ReferenceGrant, which SwiftMesh does not read; keep it in \(namespace)")
        }
        return Gateway.CertificateRef(name: name, namespace: ns)
    }

    /// A parentRef naming a Gateway (`kind` Gateway, the default, in the Gateway API's group).
    static func gatewayParent(_ f: PolicyFields, namespace: String) throws(PolicyFieldError) -> GatewayParentRef {
        let nameNode = try f.required("name")
        let name = try nameNode.string()
        guard isDNSSubdomain(name) else { throw nameNode.error("\"\(name)\" is not a Gateway name") }
        var section: String?
        if let s = f.optional("sectionName") {
            let text = try s.string()
            guard isDNSLabel(text) else { throw s.error("\"\(text)\" is not a listener name") }
            section = text
        }
        return GatewayParentRef(name: name, namespace: try HTTPRouteReader.namespace(f, default: namespace), sectionName: section,
                                port: try f.optional("port")?.portNumber())
    }

    /// Whether a parentRef's group and kind name a Gateway (kind omitted: Gateway, as the
    /// Gateway API reads it).
    static func namesGateway(_ f: PolicyFields) throws(PolicyFieldError) -> Bool {
        let kind = try f.optional("kind")?.string() ?? "Gateway"
        let group = try f.optional("group")?.string() ?? (kind == "Gateway" ? "gateway.networking.k8s.io" : "")
        return kind == "Gateway" && group == "gateway.networking.k8s.io"
    }

    static func tlsRoute(_ top: PolicyFields, metadata: PolicyMetadata) throws(PolicyFieldError) -> TLSRoute {
        let spec = try top.required("spec", hint: "a TLSRoute needs spec.parentRefs and spec.rules")
            .fields(allowed: ["parentRefs", "hostnames", "rules"])
        var parents: [GatewayParentRef] = []
        for node in try spec.required("parentRefs", hint: "name the Gateway: parentRefs: [{name: GATEWAY}]").nonEmptyList(of: "parent") {
            let f = try node.fields(allowed: HTTPRouteReader.parentFields)
            guard try namesGateway(f) else { throw node.error("a TLSRoute attaches to a Gateway (kind: Gateway)") }
            let parent = try gatewayParent(f, namespace: metadata.namespace)
            if parents.contains(parent) { throw node.error("this parent is already given") }
            parents.append(parent)
        }
        let hostnames = try HTTPRouteReader.hostnames(spec)
        let rules = try spec.required("rules", hint: "rules: [{backendRefs: [{name: SERVICE, port: 443}]}]").nonEmptyList(of: "rule")
        guard rules.count == 1 else {
            throw try spec.required("rules").error("a TLSRoute has one rule here: its rules have no matches to choose between them")
        }
        let rf = try rules[0].fields(allowed: ["name", "backendRefs"])
        let backends = try HTTPRouteReader.backendRefs(try rf.required("backendRefs").nonEmptyList(of: "backendRef"),
                                                       routeNamespace: metadata.namespace)
        return TLSRoute(name: metadata.name, namespace: metadata.namespace, parents: parents, hostnames: hostnames, backends: backends)
    }
}
