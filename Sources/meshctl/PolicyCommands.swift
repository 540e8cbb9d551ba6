import ArgumentParser
import Foundation
import MeshModel

struct PolicyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy",
        abstract: "Apply, inspect and trace network policies (CiliumNetworkPolicy, Kubernetes NetworkPolicy).",
        subcommands: [Apply.self, Validate.self, List.self, Get.self, Delete.self, Trace.self]
    )

    static func read(_ file: String) throws -> String {
        if file == "-" {
            return String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
        }
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
            throw MeshError.invalid("cannot read \(file)")
        }
        return text
    }

    struct Apply: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Apply every policy document of a YAML file, all of them or none.",
            discussion: "Documents replace earlier ones of the same namespace/name. Example: meshctl policy apply -f allow-web.yaml")

        @OptionGroup var global: GlobalOptions
        @Option(name: [.short, .customLong("file")], help: "YAML file with one or more documents, or - for standard input.") var file: String
        @Option(name: [.short, .long], help: "text or json.") var output: OutputFormat = .text

        func run() async throws {
            try await running {
                let text = try PolicyCommand.read(file)
                let r = try await global.client.call(.POST, APIPath.policies, body: PolicyApplyRequest(yaml: text, source: file, dryRun: false),
                                                     as: PolicyApplyResult.self)
                PolicyCommand.printWarnings(r.warnings)
                if output == .json { return try printJSON(r) }
                for d in r.documents { print("policy \(d) applied") }
                print("revision \(r.revision): \(r.entries) map entries, enforced in \(String(format: "%.1f", r.enforcedSeconds * 1000)) ms")
            }
        }
    }

    struct Validate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Check a policy file as apply would, without applying it.")

        @OptionGroup var global: GlobalOptions
        @Option(name: [.short, .customLong("file")], help: "YAML file, or - for standard input.") var file: String

        func run() async throws {
            try await running {
                let text = try PolicyCommand.read(file)
                let r = try await global.client.call(.POST, APIPath.policies, body: PolicyApplyRequest(yaml: text, source: file, dryRun: true),
                                                     as: PolicyApplyResult.self)
                PolicyCommand.printWarnings(r.warnings)
                print("\(file): valid: \(r.documents.count) document(s), \(r.policies) policies, \(r.rules) rules, \(r.entries) map entries")
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List applied policies and the endpoints they select.")

        @OptionGroup var global: GlobalOptions
        @Option(name: [.short, .long], help: "text or json.") var output: OutputFormat = .text

        func run() async throws {
            try await running {
                let list = try await global.client.call(.GET, APIPath.policies, as: [PolicySummary].self)
                if output == .json { return try printJSON(list) }
                printTable(["NAME", "KIND", "RULES", "SELECTS"], list.map {
                    [$0.key, $0.kind, String($0.rules), $0.selects.isEmpty ? "-" : $0.selects.joined(separator: ",")]
                })
            }
        }
    }

    /// kubectl's habit: each warning on standard error, behind "Warning: ".
    static func printWarnings(_ warnings: [String]) {
        for w in warnings { FileHandle.standardError.write(Data("Warning: \(w)\n".utf8)) }
    }

    enum DocumentFormat: String, ExpressibleByArgument, CaseIterable { case yaml, json }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one policy document as applied.")

        @OptionGroup var global: GlobalOptions
        @Argument(help: "namespace/name, or name for the default namespace.") var name: String
        @Option(name: [.short, .long], help: "yaml or json.") var output: DocumentFormat = .yaml

        func run() async throws {
            try await running {
                let key = name.contains("/") ? name : "default/\(name)"
                let doc = try await global.client.call(.GET, APIPath.policy(key), as: PolicyDocumentView.self)
                if output == .json { return try printJSON(doc) }
                print(doc.yaml, terminator: doc.yaml.hasSuffix("\n") ? "" : "\n")
            }
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a policy document; its rules stop applying at once.")

        @OptionGroup var global: GlobalOptions
        @Argument(help: "namespace/name, or name for the default namespace.") var name: String

        func run() async throws {
            try await running {
                let key = name.contains("/") ? name : "default/\(name)"
                _ = try await global.client.call(.DELETE, APIPath.policy(key), as: [String: String].self)
                print("policy \(key) deleted")
            }
        }
    }

    struct Trace: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Explain the verdict for a new connection, using the kernel's own programs and maps.",
            discussion: "Example: meshctl policy trace --from web --to db --port 5432/TCP. --from/--to take an endpoint name or an IPv4 address.")

        @OptionGroup var global: GlobalOptions
        @Option(help: "Source endpoint or IPv4 address.") var from: String
        @Option(help: "Destination endpoint or IPv4 address.") var to: String
        @Option(help: "PORT/PROTO, e.g. 80/TCP, 53/UDP, or TYPE/ICMP (8/ICMP: an echo request; ICMP alone means that).") var port: String
        @Option(name: [.short, .long], help: "text or json.") var output: OutputFormat = .text

        func run() async throws {
            try await running {
                let parts = port.split(separator: "/")
                let (p, proto): (Int, String)
                if port.uppercased() == "ICMP" { (p, proto) = (8, "ICMP") } else {
                    guard parts.count == 2, let n = Int(parts[0]) else {
                        throw MeshError.invalid("--port \"\(port)\" is not PORT/PROTO", hint: "for example 80/TCP, 53/UDP or 8/ICMP")
                    }
                    (p, proto) = (n, String(parts[1]))
                }
                let r = try await global.client.call(.POST, APIPath.trace, body: TraceRequest(from: from, to: to, port: p, proto: proto),
                                                     as: TraceResponse.self)
                if output == .json { return try printJSON(r) }
                print("\(r.from) -> \(r.to) \(r.proto == "ICMP" ? "ICMP type \(r.port)" : "\(r.port)/\(r.proto)") at policy revision \(r.revision)")
                for h in r.hops {
                    print("  \(h.hook): \(h.verdict.uppercased())" + (h.enforced ? "" : " (not enforced)"))
                    print("    peer identity \(h.peerIdentity) (\(h.peer))")
                    print("    \(h.reason == "none" ? "by" : h.reason + ":") \(h.rule)")
                }
                print("verdict: \(r.verdict.uppercased())")
                if !r.established.isEmpty {
                    print("established (conntrack):")
                    for c in r.established {
                        print("  source port \(c.sourcePort), \(c.hook): next packet \(c.verdict.uppercased())")
                        print("    allowed under revision \(c.revision) by \(c.rule), idle \(String(format: "%.1f", c.idleSeconds)) s")
                    }
                }
            }
        }
    }
}

struct Monitor: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stream datapath events: drops with the rule that decided, verdicts of new flows, service load-balancing decisions, HTTP requests the L7 proxy judged.")

    enum EventType: String, ExpressibleByArgument, CaseIterable { case drop, verdict, lb, l7, all }

    @OptionGroup var global: GlobalOptions
    @Option(help: "drop, verdict, lb (service load-balancing decisions), l7 (HTTP requests through the proxy) or all.") var type: EventType = .all
    @Option(name: [.short, .long], help: "text or json (one object per line).") var output: OutputFormat = .text
    @Option(help: "Stop after this many events.") var count: Int?

    /// ` route=RULE attempts=N` for a routed request (attempts only when retried).
    static func routeNote(_ h: MonitorEvent.HTTPInfo) -> String {
        let route = h.routeRule.map { " route=\($0)" } ?? ""
        guard let attempts = h.attempts, attempts > 1 else { return route }
        return route + " attempts=\(attempts)"
    }

    func run() async throws {
        try await running {
            var seen = 0
            let encoder = JSONEncoder()
            encoder.dateEncodingStrategy = .iso8601
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            if output == .text { print("listening for \(type.rawValue) events; Ctrl-C to stop") }
            try await global.client.stream(APIPath.monitor + "?type=\(type.rawValue)", as: MonitorEvent.self) { e in
                if output == .json {
                    print(String(decoding: try encoder.encode(e), as: UTF8.self))
                } else if e.type == "lb" {
                    print("LB     \(e.endpoint) -> \(e.destination):\(e.destinationPort) \(e.proto) \(e.service ?? "")"
                          + (e.verdict == "refused" ? " REFUSED (no ready backend)" : " => \(e.backend ?? "") \(e.rule) (\(e.reason))"))
                } else if e.type == "l7", let h = e.http, let tunnel = h.tunnel {
                    print("MTLS   \(e.endpoint) \(e.source):\(e.sourcePort) -> \(e.destination):\(e.destinationPort) \(tunnel) tunnel"
                          + " peer=\(h.peerSPIFFEID ?? "-") => \(h.status) \(e.verdict.uppercased())"
                          + (e.rule.isEmpty ? "" : " rule=\(e.rule)") + (e.reason.isEmpty ? "" : " (\(e.reason))"))
                } else if e.type == "l7", let h = e.http {
                    let to = (h.service.map { " [\($0)]" } ?? "") + (h.destinationEndpoint.map { " (\($0))" } ?? "")
                    print("HTTP   \(e.endpoint) \(e.source):\(e.sourcePort) -> \(e.destination):\(e.destinationPort)\(to) \(h.method) \(h.path)"
                          + " => \(h.status) \(e.verdict.uppercased()) \(String(format: "%.1fms", h.latencySeconds * 1000))"
                          + Self.routeNote(h) + (e.rule.isEmpty ? "" : " rule=\(e.rule)") + (e.reason.isEmpty ? "" : " (\(e.reason))"))
                } else {
                    let ports = e.proto == "ICMP" ? "" : ":\(e.destinationPort)"
                    let src = e.proto == "ICMP" ? e.source : "\(e.source):\(e.sourcePort)"
                    print("\(e.type == "drop" ? "DROP   " : e.verdict == "to-proxy" ? "PROXY  " : "ALLOW  ") \(e.endpoint) \(e.direction) \(src) -> \(e.destination)\(ports) \(e.proto)"
                          + " peer=\(e.peerIdentity)(\(e.peer)) \(e.type == "drop" ? "reason=\(e.reason) " : "")rule=\(e.rule)")
                }
                fflush(nil)
                seen += 1
                return count.map { seen < $0 } ?? true
            }
        }
    }
}

struct BPFCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bpf",
        abstract: "Dump the datapath's BPF maps readably.",
        subcommands: [PolicyMap.self, IPCache.self, Conntrack.self, Sockmap.self, LB.self]
    )

    struct Sockmap: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "sockmap", abstract: "Sockets of accelerated connections.",
                                                        subcommands: [ListCmd.self])
        struct ListCmd: AsyncParsableCommand {
            static let configuration = CommandConfiguration(commandName: "list", abstract: "List sockets in the sockhash and how each sends.")
            @OptionGroup var global: GlobalOptions
            @Option(name: [.short, .long], help: "text or json.") var output: OutputFormat = .text
            func run() async throws {
                try await running {
                    let rows = try await global.client.call(.GET, "/v1/bpf/sockmap", as: [BPFSocketRow].self)
                    if output == .json { return try printJSON(rows) }
                    printTable(["LOCAL", "REMOTE", "CLIENT", "SERVER", "MODE", "FALLBACK", "REV"], rows.map {
                        [$0.local, $0.remote, $0.client, $0.server, $0.mode, $0.fallback.isEmpty ? "-" : $0.fallback, String($0.revision)]
                    })
                }
            }
        }
    }

    struct PolicyMap: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "policy", abstract: "The active revision's policy map.",
                                                        subcommands: [ListCmd.self])
        struct ListCmd: AsyncParsableCommand {
            static let configuration = CommandConfiguration(commandName: "list", abstract: "List policy map entries.")
            @OptionGroup var global: GlobalOptions
            @Option(name: [.short, .long], help: "text or json.") var output: OutputFormat = .text
            func run() async throws {
                try await running {
                    let rows = try await global.client.call(.GET, APIPath.bpfPolicy, as: [BPFPolicyRow].self)
                    if output == .json { return try printJSON(rows) }
                    printTable(["ENDPOINT", "DIRECTION", "IDENTITY", "PEER", "PROTO", "PORTS", "ACTION", "RULE"], rows.map {
                        [$0.endpoint, $0.direction, String($0.identity), $0.peer, $0.proto, $0.ports, $0.action, $0.rule]
                    })
                }
            }
        }
    }

    struct IPCache: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ipcache", abstract: "Addresses and the identities they map to.",
                                                        subcommands: [ListCmd.self])
        struct ListCmd: AsyncParsableCommand {
            static let configuration = CommandConfiguration(commandName: "list", abstract: "List ipcache entries.")
            @OptionGroup var global: GlobalOptions
            @Option(name: [.short, .long], help: "text or json.") var output: OutputFormat = .text
            func run() async throws {
                try await running {
                    let rows = try await global.client.call(.GET, APIPath.bpfIPCache, as: [BPFIPCacheRow].self)
                    if output == .json { return try printJSON(rows) }
                    printTable(["PREFIX", "IDENTITY", "LABELS", "ENDPOINT", "REACHED"], rows.map {
                        [$0.prefix, String($0.identity), $0.labels, $0.endpoint.isEmpty ? "-" : $0.endpoint,
                         $0.tunnel == true ? "mtls-tunnel" : "direct"]
                    })
                }
            }
        }
    }

    struct Conntrack: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ct", abstract: "SwiftMesh's connection tracking table.",
                                                        subcommands: [ListCmd.self])
        struct ListCmd: AsyncParsableCommand {
            static let configuration = CommandConfiguration(commandName: "list", abstract: "List tracked flows.")
            @OptionGroup var global: GlobalOptions
            @Option(name: [.short, .long], help: "text or json.") var output: OutputFormat = .text
            func run() async throws {
                try await running {
                    let rows = try await global.client.call(.GET, APIPath.bpfConntrack, as: [BPFConntrackRow].self)
                    if output == .json { return try printJSON(rows) }
                    printTable(["ENDPOINT", "DIRECTION", "PROTO", "FLOW", "REV", "IDLE", "RULE"], rows.map {
                        [$0.endpoint, $0.direction, $0.proto, $0.flow + ($0.closing ? " (closing)" : ""), String($0.revision),
                         String(format: "%.0fs", $0.idleSeconds), $0.rule]
                    })
                }
            }
        }
    }
}

struct ConfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Show or change settings of a running meshd (kept across restarts).",
        discussion: "Settings: socket-redirect (on|off); socket-redirect-max-write (bytes; a larger write sends the connection through the stack for good; 0: no limit); socket-redirect-max-queued (bytes a reader may leave unread before its writer takes the stack's flow control; default 4194304; 0: no limit, which lets a stalled reader queue without bound); local-congestion-control (the TCP congestion control that connections between two local endpoints get as they are established, e.g. cubic or reno; keep: the node's; default cubic; an application's own choice stays). Example: meshctl config set socket-redirect off",
        subcommands: [Get.self, Set.self]
    )

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show the run-time settings.")
        @OptionGroup var global: GlobalOptions
        @Option(name: [.short, .long], help: "text or json.") var output: OutputFormat = .text
        func run() async throws {
            try await running {
                let c = try await global.client.call(.GET, RuntimeConfig.path, as: [String: String].self)
                if output == .json { return try printJSON(c) }
                for (k, v) in c.sorted(by: { $0.key < $1.key }) { print("\(k): \(v)") }
            }
        }
    }

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Change a setting now.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The setting, e.g. socket-redirect.") var key: String
        @Argument(help: "Its new value, e.g. on or off.") var value: String
        func run() async throws {
            try await running {
                let c = try await global.client.call(.PUT, "\(RuntimeConfig.path)/\(key)", body: ConfigSetRequest(value: value), as: [String: String].self)
                print("\(key): \(c[key] ?? value)")
            }
        }
    }
}
