import ArgumentParser
import Foundation
import MeshModel
import Yams

/// `meshctl apply -f FILE`: any mix of the kinds meshd reads, whole or not at all.
struct ApplyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apply",
        abstract: "Apply a YAML file of Services, Namespaces and policies, all of it or none of it.",
        discussion: """
            Kinds: \(Manifest.supportedKinds.joined(separator: ", ")). A document replaces the \
            object of the same kind, namespace and name. Example: meshctl apply -f web.yaml
            """)

    @OptionGroup var global: GlobalOptions
    @Option(name: [.short, .customLong("file")], help: "YAML file with one or more documents, or - for standard input.") var file: String
    @Flag(name: .customLong("dry-run"), help: "Check everything as apply would, change nothing.") var dryRun = false
    @Option(name: [.short, .long], help: "text or json.") var output: OutputFormat = .text

    func run() async throws {
        try await running {
            let text = try PolicyCommand.read(file)
            let r = try await global.client.call(.POST, APIPath.apply, body: PolicyApplyRequest(yaml: text, source: file, dryRun: dryRun),
                                                 as: ApplyResult.self)
            PolicyCommand.printWarnings(r.warnings)
            if output == .json { return try printJSON(r) }
            for c in r.changes { print(c) }
            if let p = r.policy, !r.dryRun {
                print("policy revision \(p.revision): \(p.entries) map entries, enforced in \(String(format: "%.1f", p.enforcedSeconds * 1000)) ms")
            }
        }
    }
}

/// The kinds `get` and `delete` take, with kubectl's short names.
enum ResourceKind: String, ExpressibleByArgument, CaseIterable {
    case service, namespace, policy, endpoint, httproute, gateway, tlsroute

    init?(argument: String) {
        switch argument.lowercased() {
        case "service", "services", "svc": self = .service
        case "namespace", "namespaces", "ns": self = .namespace
        case "policy", "policies", "ciliumnetworkpolicy", "ciliumnetworkpolicies", "cnp", "networkpolicy", "networkpolicies", "netpol": self = .policy
        case "endpoint", "endpoints", "ep": self = .endpoint
        case "httproute", "httproutes", "route", "routes": self = .httproute
        case "gateway", "gateways", "gtw": self = .gateway
        case "tlsroute", "tlsroutes": self = .tlsroute
        default: return nil
        }
    }

    static var allValueStrings: [String] { ["service (svc)", "namespace (ns)", "policy (cnp, netpol)", "endpoint (ep)", "httproute (route)", "gateway (gtw)",
                                            "tlsroute"] }
}

enum GetFormat: String, ExpressibleByArgument, CaseIterable { case text, yaml, json }

/// `NAME` in `--namespace` (default `default`), or `NAMESPACE/NAME`.
func qualified(_ name: String, namespace: String?) throws -> (namespace: String, name: String) {
    let parts = name.split(separator: "/", omittingEmptySubsequences: false)
    guard parts.count <= 2, !parts.contains(where: \.isEmpty) else {
        throw MeshError.invalid("\"\(name)\" is neither NAME nor NAMESPACE/NAME")
    }
    if parts.count == 2 {
        if let namespace, namespace != String(parts[0]) {
            throw MeshError.invalid("\"\(name)\" names namespace \(parts[0]) but --namespace says \(namespace)")
        }
        return (String(parts[0]), String(parts[1]))
    }
    return (namespace ?? "default", name)
}

struct GetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "get",
        abstract: "Show services, namespaces, policies, endpoints, HTTPRoutes, Gateways or TLSRoutes, as kubectl get does.",
        discussion: "Examples: meshctl get services; meshctl get svc web -o yaml; meshctl get ns; meshctl get httproutes; meshctl get gateways")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "service (svc), namespace (ns), policy (cnp, netpol), endpoint (ep) httproute (route), gateway (gtw) or tlsroute.") var kind: ResourceKind
    @Argument(help: "A name (NAME or NAMESPACE/NAME); all of them when left out.") var name: String?
    @Option(name: [.short, .long], help: "The namespace of NAME. (default: default)") var namespace: String?
    @Option(name: [.short, .long], help: "text, yaml or json.") var output: GetFormat = .text

    func run() async throws {
        try await running {
            let c = global.client
            switch kind {
            case .service:
                if let name {
                    let q = try qualified(name, namespace: namespace)
                    let s = try await c.call(.GET, APIPath.service(q.namespace, q.name), as: ServiceView.self)
                    switch output {
                    case .json: try printJSON(s)
                    case .yaml: print(try Yams.serialize(node: Self.yaml(s)), terminator: "")
                    case .text: Self.describe(s)
                    }
                } else {
                    var list = try await c.call(.GET, APIPath.services, as: [ServiceView].self)
                    if let namespace { list = list.filter { $0.namespace == namespace } }
                    switch output {
                    case .json: try printJSON(list)
                    case .yaml: print(try Yams.serialize(node: .sequence(.init(list.map(Self.yaml)))), terminator: "")
                    case .text:
                        printTable(["NAMESPACE", "NAME", "CLUSTER-IP", "PORTS", "BACKENDS", "AGE"], list.map { s in
                            let ready = s.backends.filter { $0.state == "ready" }.count
                            return [s.namespace, s.name, s.clusterIP.description, Self.ports(s), "\(ready)/\(s.backends.count) ready",
                                    age(s.appliedAt)]
                        })
                    }
                }
            case .namespace:
                let list: [NamespaceView]
                if let name { list = [try await c.call(.GET, APIPath.namespace(name), as: NamespaceView.self)] } else {
                    list = try await c.call(.GET, APIPath.namespaces, as: [NamespaceView].self)
                }
                switch output {
                case .json: name == nil ? try printJSON(list) : try printJSON(list[0])
                case .yaml:
                    let nodes = list.map(Self.yaml)
                    print(try Yams.serialize(node: name == nil ? .sequence(.init(nodes)) : nodes[0]), terminator: "")
                case .text:
                    printTable(["NAME", "LABELS", "ENDPOINTS", "SERVICES"], list.map {
                        [$0.name, $0.labels.description.isEmpty ? "-" : $0.labels.description, String($0.endpoints.count), String($0.services.count)]
                    })
                }
            case .policy:
                if let name {
                    let q = try qualified(name, namespace: namespace)
                    let p = try await c.call(.GET, APIPath.policy("\(q.namespace)/\(q.name)"), as: PolicyDocumentView.self)
                    if output == .json { return try printJSON(p) }
                    print(p.yaml.hasSuffix("\n") ? p.yaml : p.yaml + "\n", terminator: "")
                } else {
                    let list = try await c.call(.GET, APIPath.policies, as: [PolicySummary].self)
                    if output == .json { return try printJSON(list) }
                    printTable(["NAME", "KIND", "RULES", "SELECTS", "AGE"], list.map {
                        [$0.key, $0.kind, String($0.rules), $0.selects.isEmpty ? "-" : $0.selects.joined(separator: ","), age($0.appliedAt)]
                    })
                }
            case .httproute:
                let list: [HTTPRouteView]
                if let name {
                    let q = try qualified(name, namespace: namespace)
                    list = [try await c.call(.GET, "/v1/httproutes/\(q.namespace)/\(q.name)", as: HTTPRouteView.self)]
                } else {
                    list = try await c.call(.GET, "/v1/httproutes", as: [HTTPRouteView].self).filter { namespace == nil || $0.route.namespace == namespace }
                }
                if try Self.printEncoded(list, one: name != nil, as: output) { break }
                do {
                    printTable(["NAMESPACE", "NAME", "PARENTS", "BACKENDS", "PROGRAMMED ON", "AGE"], list.map { v in
                        let backends = Set(v.route.rules.flatMap { $0.backends.map { "\($0.name):\($0.port)" + ($0.weight == 1 ? "" : "(\($0.weight))") } })
                        return [v.route.namespace, v.route.name,
                                v.route.parents.map { $0.name + ($0.port.map { ":\($0)" } ?? "") }.joined(separator: ","),
                                backends.sorted().joined(separator: ","),
                                v.frontends.isEmpty ? "-" : v.frontends.joined(separator: ","), age(v.appliedAt)]
                    })
                    for v in list where !v.problems.isEmpty {
                        print("\(v.route.key): " + v.problems.joined(separator: "; "))
                    }
                }
            case .gateway:
                let list: [GatewayView]
                if let name {
                    let q = try qualified(name, namespace: namespace)
                    list = [try await c.call(.GET, "/v1/gateways/\(q.namespace)/\(q.name)", as: GatewayView.self)]
                } else {
                    list = try await c.call(.GET, "/v1/gateways", as: [GatewayView].self).filter { namespace == nil || $0.gateway.namespace == namespace }
                }
                if try Self.printEncoded(list, one: name != nil, as: output) { break }
                do {
                    printTable(["NAMESPACE", "NAME", "LISTENER", "PORT", "PROTOCOL", "HOSTNAME", "ROUTES", "AGE"], list.flatMap { v in
                        v.gateway.listeners.map { l in
                            [v.gateway.namespace, v.gateway.name, l.name, "\(l.port)", l.proto.rawValue, l.hostname ?? "*",
                             (v.routes[l.name] ?? []).joined(separator: ",").ifEmpty("-"), age(v.appliedAt)]
                        }
                    })
                    for v in list where !v.problems.isEmpty {
                        print("\(v.gateway.key): " + v.problems.joined(separator: "; "))
                    }
                }
            case .tlsroute:
                let list: [TLSRouteView]
                if let name {
                    let q = try qualified(name, namespace: namespace)
                    list = [try await c.call(.GET, "/v1/tlsroutes/\(q.namespace)/\(q.name)", as: TLSRouteView.self)]
                } else {
                    list = try await c.call(.GET, "/v1/tlsroutes", as: [TLSRouteView].self).filter { namespace == nil || $0.route.namespace == namespace }
                }
                if try Self.printEncoded(list, one: name != nil, as: output) { break }
                do {
                    printTable(["NAMESPACE", "NAME", "HOSTNAMES", "BACKENDS", "LISTENERS", "AGE"], list.map { v in
                        [v.route.namespace, v.route.name, v.route.hostnames.joined(separator: ",").ifEmpty("*"),
                         v.route.backends.map { "\($0.name):\($0.port)" + ($0.weight == 1 ? "" : "(\($0.weight))") }.joined(separator: ","),
                         v.listeners.joined(separator: ",").ifEmpty("-"), age(v.appliedAt)]
                    })
                    for v in list where !v.problems.isEmpty {
                        print("\(v.route.key): " + v.problems.joined(separator: "; "))
                    }
                }
            case .endpoint:
                let list: [Endpoint]
                if let name { list = [try await c.call(.GET, APIPath.endpoint(name), as: Endpoint.self)] } else {
                    list = try await c.call(.GET, APIPath.endpoints, as: [Endpoint].self)
                }
                if try Self.printEncoded(list, one: name != nil, as: output) { break }
                do {
                    printTable(["NAME", "IPV4", "STATE", "PORTS", "LABELS"], list.map {
                        [$0.name, $0.ipv4.description, $0.state ?? "ready",
                         $0.ports.isEmpty ? "-" : $0.ports.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ","),
                         $0.labels.description]
                    })
                }
            }
        }
    }

    /// JSON or YAML of a list (or of its one item when a name was asked for), through the
    /// API's own JSON; false for text, which each kind prints its own way.
    static func printEncoded<T: Encodable>(_ list: [T], one: Bool, as output: GetFormat) throws -> Bool {
        switch output {
        case .json: one ? try printJSON(list[0]) : try printJSON(list)
        case .yaml:
            let json = String(decoding: try MeshJSON.encoder().encode(one ? [list[0]] : list), as: UTF8.self)
            print(try Yams.dump(object: try Yams.load(yaml: json), sortKeys: true), terminator: "")
        case .text: return false
        }
        return true
    }

    static func ports(_ s: ServiceView) -> String {
        s.ports.map { "\($0.name.map { $0 + ":" } ?? "")\($0.port)/\($0.proto)" }.joined(separator: ",")
    }

    static func describe(_ s: ServiceView) {
        for (k, v) in [("name", s.name), ("namespace", s.namespace), ("cluster IP", s.clusterIP.description), ("DNS name", s.dnsName),
                       ("selector", s.selector.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")),
                       ("affinity", s.sessionAffinity + (s.affinityTimeoutSeconds.map { " (\($0) s)" } ?? "")),
                       ("applied", s.appliedAt.formatted(.iso8601))] {
            print("\(k):".padding(toLength: 12, withPad: " ", startingAt: 0) + v)
        }
        print("ports:")
        for p in s.ports { print("  \(p.name ?? "-")  \(p.port)/\(p.proto) -> \(p.targetPort)") }
        print("backends:")
        if s.backends.isEmpty { print("  (no endpoint matches the selector: connections are refused)") }
        printTable(["  ENDPOINT", "ADDRESS", "STATE", "TARGET PORTS"], s.backends.map {
            ["  " + $0.endpoint, $0.address.description, $0.state, $0.ports.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")]
        })
    }

    /// A Service as Kubernetes would print it, with SwiftMesh's view of its backends in status.
    static func yaml(_ s: ServiceView) -> Node {
        var spec: [(String, Node)] = [("clusterIP", Node(s.clusterIP.description)), ("type", "ClusterIP")]
        if !s.selector.isEmpty {
            spec.append(("selector", .mapping(.init(s.selector.sorted { $0.key < $1.key }.map { (Node($0.key), Node($0.value)) }))))
        }
        spec.append(("ports", .sequence(.init(s.ports.map { p in
            var f: [(String, Node)] = []
            if let n = p.name { f.append(("name", Node(n))) }
            f += [("port", Node(String(p.port))), ("protocol", Node(p.proto))]
            switch p.targetPort {
            case .number(let n): f.append(("targetPort", Node(String(n))))
            case .name(let n): f.append(("targetPort", Node(n, .implicit, .doubleQuoted)))
            }
            return map(f)
        }))))
        spec.append(("sessionAffinity", Node(s.sessionAffinity)))
        if let t = s.affinityTimeoutSeconds {
            spec.append(("sessionAffinityConfig", map([("clientIP", map([("timeoutSeconds", Node(String(t)))]))])))
        }
        let backends = s.backends.map { b in
            map([("endpoint", Node(b.endpoint)), ("address", Node(b.address.description)), ("state", Node(b.state))])
        }
        return map([("apiVersion", "v1"), ("kind", "Service"),
                    ("metadata", map([("name", Node(s.name)), ("namespace", Node(s.namespace))])),
                    ("spec", map(spec)), ("status", map([("backends", .sequence(.init(backends)))]))])
    }

    static func yaml(_ n: NamespaceView) -> Node {
        let labels = n.labels.values.sorted { $0.key < $1.key }.map { (Node($0.key), Node($0.value)) }
        return map([("apiVersion", "v1"), ("kind", "Namespace"),
                    ("metadata", map([("name", Node(n.name))] + (labels.isEmpty ? [] : [("labels", .mapping(.init(labels)))])))])
    }

    static func map(_ pairs: [(String, Node)]) -> Node { .mapping(.init(pairs.map { (Node($0.0), $0.1) })) }
}

func age(_ date: Date) -> String {
    let s = Int(Date().timeIntervalSince(date))
    switch s {
    case ..<120: return "\(max(s, 0))s"
    case ..<7200: return "\(s / 60)m"
    case ..<172_800: return "\(s / 3600)h"
    default: return "\(s / 86400)d"
    }
}

struct DeleteCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delete",
        abstract: "Delete a service, namespace, policy, endpoint, HTTPRoute, Gateway or TLSRoute.",
        discussion: "Examples: meshctl delete svc web; meshctl delete policy prod/allow-web; meshctl delete route web-canary")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "service (svc), namespace (ns), policy (cnp, netpol), endpoint (ep) httproute (route), gateway (gtw) or tlsroute.") var kind: ResourceKind
    @Argument(help: "NAME or NAMESPACE/NAME.") var name: String
    @Option(name: [.short, .long], help: "The namespace of NAME. (default: default)") var namespace: String?

    func run() async throws {
        try await running {
            let c = global.client
            switch kind {
            case .service:
                let q = try qualified(name, namespace: namespace)
                _ = try await c.call(.DELETE, APIPath.service(q.namespace, q.name), as: [String: String].self)
                print("service/\(q.namespace)/\(q.name) deleted")
            case .namespace:
                _ = try await c.call(.DELETE, APIPath.namespace(name), as: [String: String].self)
                print("namespace/\(name) deleted")
            case .policy:
                let q = try qualified(name, namespace: namespace)
                _ = try await c.call(.DELETE, APIPath.policy("\(q.namespace)/\(q.name)"), as: [String: String].self)
                print("policy/\(q.namespace)/\(q.name) deleted")
            case .endpoint:
                try EndpointName.validate(name)
                _ = try await c.call(.DELETE, APIPath.endpoint(name), as: [String: String].self)
                print("endpoint/\(name) deleted")
            case .httproute:
                let q = try qualified(name, namespace: namespace)
                _ = try await c.call(.DELETE, "/v1/httproutes/\(q.namespace)/\(q.name)", as: [String: String].self)
                print("httproute/\(q.namespace)/\(q.name) deleted")
            case .gateway, .tlsroute:
                let q = try qualified(name, namespace: namespace)
                _ = try await c.call(.DELETE, "/v1/\(kind.rawValue)s/\(q.namespace)/\(q.name)", as: [String: String].self)
                print("\(kind.rawValue)/\(q.namespace)/\(q.name) deleted")
            }
        }
    }
}

extension BPFCommand {
    struct LB: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "lb", abstract: "The service load balancer's maps, as the kernel holds them.",
                                                        subcommands: [ListCmd.self])
        struct ListCmd: AsyncParsableCommand {
            static let configuration = CommandConfiguration(commandName: "list", abstract: "List service frontends and their backends in slot order.")
            @OptionGroup var global: GlobalOptions
            @Option(name: [.short, .long], help: "text or json.") var output: OutputFormat = .text
            func run() async throws {
                try await running {
                    let rows = try await global.client.call(.GET, APIPath.bpfLB, as: [BPFLBRow].self)
                    if output == .json { return try printJSON(rows) }
                    printTable(["FRONTEND", "SERVICE", "VIP", "PROTO", "AFFINITY", "BACKENDS"], rows.map {
                        [String($0.frontend), $0.service, $0.vip + ($0.routed == true ? " (routed: mesh-proxy)" : ""), $0.proto, $0.affinitySeconds.map { "\($0)s" } ?? "-",
                         $0.backends.isEmpty ? "(none: refused)" : $0.backends.joined(separator: ", ")]
                    })
                }
            }
        }
    }
}

extension String {
    /// `replacement` for an empty string (a table cell).
    func ifEmpty(_ replacement: String) -> String { isEmpty ? replacement : self }
}
