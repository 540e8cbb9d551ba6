// meshctl: the SwiftMesh CLI. One command per verb, grouped by noun; all talk to meshd.
import ArgumentParser
import Foundation
import MeshModel

@main
struct Meshctl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meshctl",
        abstract: "Control a SwiftMesh node: its status, endpoints, policies and datapath.",
        discussion: "meshctl talks to meshd over its unix socket (--api-socket, or SWIFTMESH_API_SOCKET).",
        version: MeshVersion.string,
        subcommands: [Status.self, ApplyCommand.self, GetCommand.self, DeleteCommand.self, EndpointCommand.self, PolicyCommand.self,
                      IdentityCommand.self, TrustCommand.self, NodeCommand.self, Monitor.self, ConfigCommand.self, BPFCommand.self]
    )
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}

struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: "meshd's API socket. (default: $SWIFTMESH_API_SOCKET or /run/swiftmesh/meshd.sock)")
    var apiSocket: String?

    var client: APIClient {
        APIClient(socket: apiSocket ?? ProcessInfo.processInfo.environment["SWIFTMESH_API_SOCKET"] ?? "/run/swiftmesh/meshd.sock")
    }
}

/// Prints a MeshError the way users read it and exits 1; anything else goes to ArgumentParser.
func running(_ body: () async throws -> Void) async throws {
    do { try await body() } catch let e as MeshError {
        FileHandle.standardError.write(Data("meshctl: error: \(e.message)\n".utf8))
        if let hint = e.hint { FileHandle.standardError.write(Data("hint: \(hint)\n".utf8)) }
        throw ExitCode(1)
    }
}

func printJSON<T: Encodable>(_ value: T) throws {
    print(String(decoding: try MeshJSON.encoder().encode(value), as: UTF8.self))
}

/// Left-aligned columns, as kubectl prints them.
func printTable(_ header: [String], _ rows: [[String]]) {
    let all = [header] + rows
    let widths = header.indices.map { i in all.map { $0[i].count }.max() ?? 0 }
    for row in all {
        print(row.enumerated().map { i, c in i == row.count - 1 ? c : c.padding(toLength: widths[i] + 3, withPad: " ", startingAt: 0) }.joined())
    }
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the node: version, BPF programs and where they are attached, maps and their fill, endpoints.")

    @OptionGroup var global: GlobalOptions
    @Option(name: [.short, .long], help: "text or json.") var output: OutputFormat = .text

    func run() async throws {
        try await running {
            let s = try await global.client.call(.GET, APIPath.status, as: NodeStatus.self)
            if output == .json { return try printJSON(s) }
            print("meshd \(s.version) on node \(s.node), up since \(s.startedAt.formatted(.iso8601))")
            print("pod CIDR \(s.podCIDR), pins \(s.bpffs), cgroup \(s.cgroup)")
            print("endpoints: \(s.endpoints), policies: \(s.policies), revision \(s.policyRevision)")
            if let p = s.lastPublish {
                print(String(format: "last publish: revision %d, %d entries; wrote %d, deleted %d; compiled in %.1f ms, published in %.1f ms",
                             p.revision, p.entries, p.written, p.deleted, p.compileSeconds * 1000, p.publishSeconds * 1000))
            }
            if let p = s.proxy {
                print("L7 proxy: " + (p.connected ? "running, pid \(p.pid ?? 0)\(p.adopted ? " (adopted)" : "")" : "NOT CONNECTED")
                      + ", port \(p.port), restarts \(p.restarts), configuration \(p.generation)"
                      + (p.routedFrontends.map { ", \($0) routed frontend\($0 == 1 ? "" : "s")" } ?? "")
                      + (p.lastRejection.map { "; last configuration REJECTED: \($0)" } ?? ""))
            } else {
                print("L7 proxy: off (flows that HTTP rules apply to are dropped)")
            }
            if let c = s.cluster {
                var line = "cluster: etcd "
                if c.connected {
                    line += "connected"
                } else {
                    line += "UNREACHABLE" + (c.lastError.map { " (\($0))" } ?? "") + "; enforcing what the node last knew"
                }
                line += " (\(c.etcd.joined(separator: ","))), node IP \(c.nodeIP), \(c.nodes) node(s), "
                line += "\(c.remoteEndpoints) remote endpoint(s), revision \(c.appliedRevision)"
                if c.etcdRevision > c.appliedRevision { line += " (\(c.etcdRevision - c.appliedRevision) behind)" }
                line += ", lease \(c.leaseTTL) s"
                if c.leasesLost > 0 { line += ", lease lost \(c.leasesLost) time(s)" }
                print(line)
            }
            print("")
            printTable(["PROGRAM", "ID", "ATTACHED"], s.programs.map {
                [$0.name, String($0.id), $0.attachments.isEmpty ? "-" : "\($0.attachments.count): " + $0.attachments.joined(separator: " ")]
            })
            print("")
            printTable(["MAP", "TYPE", "ENTRIES", "CAPACITY", "FILL"], s.maps.map {
                [$0.name, $0.type, String($0.entries), String($0.capacity),
                 $0.type == "ringbuf" || $0.type == "array" ? "-" : String(format: "%.1f%%", Double($0.entries) * 100 / Double(max($0.capacity, 1)))]
            })
        }
    }
}

struct EndpointCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "endpoint",
        abstract: "Create, inspect, delete and run processes in endpoints (workloads).",
        subcommands: [Create.self, List.self, Get.self, Label.self, Delete.self, Exec.self]
    )

    struct Label: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Change an endpoint's labels at run time; selection and policy follow at once.",
            discussion: "k=v sets a label, k- removes one, as kubectl label does. Example: meshctl endpoint label web tier=frontend canary-")

        @OptionGroup var global: GlobalOptions
        @Argument(help: "Endpoint name.") var name: String
        @Argument(help: "Changes: key=value to set, key- to remove.") var changes: [String] = []
        @Option(name: [.short, .long], help: "text or json.") var output: OutputFormat = .text

        func run() async throws {
            try await running {
                try EndpointName.validate(name)
                let request = try EndpointLabelRequest(parsing: changes)
                let ep = try await global.client.call(.PATCH, APIPath.endpointLabels(name), body: request, as: Endpoint.self)
                if output == .json { return try printJSON(ep) }
                print("endpoint \(ep.name) labelled: \(ep.labels.description.isEmpty ? "(no labels)" : ep.labels.description)")
            }
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create an endpoint: a network namespace, a veth pair, an address from the pod CIDR and a cgroup.")

        @OptionGroup var global: GlobalOptions
        @Argument(help: "Endpoint name: lowercase letters, digits and '-', at most 40.") var name: String
        @Option(help: "Labels as key=value pairs, comma-separated, e.g. app=web,env=prod.") var labels: String = ""
        @Option(help: "Named ports, e.g. http=8080,grpc=9090, for services' targetPort: http.") var ports: String = ""
        @Option(help: "Readiness probe meshd runs from the node: tcp:PORT or http:PORT/PATH (PORT a number or a port name). Only a ready endpoint is a service backend.")
        var readiness: String?
        @Option(name: .customLong("readiness-interval"), help: "Seconds between probes.") var readinessInterval: Double = 1
        @Option(name: .customLong("readiness-timeout"), help: "Seconds a probe may take.") var readinessTimeout: Double = 1
        @Option(name: .customLong("readiness-failures"), help: "Consecutive failures that make a ready endpoint unready.") var readinessFailures: Int = 3
        @Option(name: .customLong("readiness-successes"), help: "Consecutive successes that make an unready endpoint ready.") var readinessSuccesses: Int = 1
        @Option(help: "Service account its workload certificate names: spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/ACCOUNT.")
        var serviceAccount: String = Endpoint.defaultServiceAccount
        @Option(name: [.short, .long], help: "text or json.") var output: OutputFormat = .text

        func run() async throws {
            try await running {
                let parsed = try Labels(parsing: labels)
                let probe = try readiness.map {
                    try ReadinessProbe(parsing: $0, intervalSeconds: readinessInterval, timeoutSeconds: readinessTimeout,
                                       failureThreshold: readinessFailures, successThreshold: readinessSuccesses)
                }
                let request = EndpointCreateRequest(name: name, labels: parsed.values, ports: try EndpointPorts.parse(ports), readiness: probe,
                                                    serviceAccount: serviceAccount)
                let ep = try await global.client.call(.POST, APIPath.endpoints, body: request, as: Endpoint.self)
                if output == .json { return try printJSON(ep) }
                print("endpoint \(ep.name) created: id \(ep.id), \(ep.ipv4), netns \(ep.netns), interface \(ep.interface)")
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the node's endpoints.")

        @OptionGroup var global: GlobalOptions
        @Option(name: [.short, .long], help: "text or json.") var output: OutputFormat = .text

        func run() async throws {
            try await running {
                let eps = try await global.client.call(.GET, APIPath.endpoints, as: [Endpoint].self)
                if output == .json { return try printJSON(eps) }
                printTable(["NAME", "ID", "IPV4", "INTERFACE", "LABELS"],
                           eps.map { [$0.name, String($0.id), $0.ipv4.description, $0.interface, $0.labels.description] })
            }
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one endpoint.")

        @OptionGroup var global: GlobalOptions
        @Argument(help: "Endpoint name.") var name: String
        @Option(name: [.short, .long], help: "text or json.") var output: OutputFormat = .text

        func run() async throws {
            try await running {
                try EndpointName.validate(name)
                let ep = try await global.client.call(.GET, APIPath.endpoint(name), as: Endpoint.self)
                if output == .json { return try printJSON(ep) }
                for (k, v) in [("name", ep.name), ("id", String(ep.id)), ("ipv4", ep.ipv4.description),
                               ("labels", ep.labels.description), ("account", ep.serviceAccount), ("ports", ep.ports.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")),
                               ("readiness", ep.readiness.map { "\($0) every \($0.intervalSeconds) s: \(ep.state ?? "?")" } ?? "-"),
                               ("netns", ep.netns), ("interface", ep.interface),
                               ("cgroup", ep.cgroup), ("created", ep.createdAt.formatted(.iso8601))] {
                    print("\(k):".padding(toLength: 11, withPad: " ", startingAt: 0) + v)
                }
            }
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete an endpoint, killing the processes in it.")

        @OptionGroup var global: GlobalOptions
        @Argument(help: "Endpoint name.") var name: String

        func run() async throws {
            try await running {
                try EndpointName.validate(name)
                _ = try await global.client.call(.DELETE, APIPath.endpoint(name), as: [String: String].self)
                print("endpoint \(name) deleted")
            }
        }
    }

    struct Exec: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run a command inside an endpoint (its network namespace and cgroup).",
            discussion: "Output and exit status are the command's own. Example: meshctl endpoint exec web -- curl -s http://10.200.0.2:8080/")

        @OptionGroup var global: GlobalOptions
        @Argument(help: "Endpoint name.") var name: String
        @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.") var command: [String] = []

        func run() async throws {
            try await running {
                guard !command.isEmpty else { throw MeshError.invalid("no command given", hint: "meshctl endpoint exec \(name) -- CMD ARGS...") }
                try EndpointName.validate(name)
                guard geteuid() == 0 else {
                    throw MeshError(.permissionDenied, "entering an endpoint needs root", hint: "run meshctl as root")
                }
                let ep = try await global.client.call(.GET, APIPath.endpoint(name), as: Endpoint.self)
                // Join the endpoint's cgroup first; then `ip netns exec` enters its netns
                // (with /sys remounted to match) and execs the command in place, so output
                // and exit status are the command's own.
                do { try "\(getpid())".write(toFile: ep.cgroup + "/cgroup.procs", atomically: false, encoding: .utf8) } catch {
                    throw MeshError(.internalError, "cannot join cgroup \(ep.cgroup): \(error.localizedDescription)")
                }
                let argv = ["ip", "netns", "exec", ep.netns] + command
                var cargs = argv.map { strdup($0) } + [nil]
                // The Swift runtime blocks most signals in its threads and ignores SIGPIPE;
                // exec keeps both, so give the command the defaults a shell would.
                var none = sigset_t()
                sigemptyset(&none)
                pthread_sigmask(SIG_SETMASK, &none, nil)
                signal(SIGPIPE, SIG_DFL)
                execvp("ip", &cargs)
                throw MeshError(.internalError, "cannot run ip netns exec: \(String(cString: strerror(errno)))")
            }
        }
    }
}

struct TrustCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "trust",
        abstract: "The node's certificate authority: its root, intermediate and trust bundle, and rolling the cluster's root.",
        subcommands: [Status.self, Roll.self]
    )

    static func show(_ t: TrustStatusView) {
        print("trust domain: \(t.trustDomain)")
        print("root:         \(t.root.fingerprint) \(t.root.subject) (expires \(t.root.notAfter.formatted(.iso8601)))"
              + (t.holdsRootKey ? ", its key is on this node" : ""))
        print("intermediate: \(t.intermediate.fingerprint) \(t.intermediate.subject) (expires \(t.intermediate.notAfter.formatted(.iso8601)))")
        print("bundle:       " + t.bundle.map(\.fingerprint).joined(separator: ", "))
        if let r = t.roll { showRoll(r) }
    }

    static func showRoll(_ r: TrustRollView) {
        print("root roll:    \(r.phase.rawValue), \(r.oldRoot) -> \(r.newRoot ?? "?"), overlap \(Int(r.overlapSeconds)) s"
              + (r.error.map { ": \($0)" } ?? ""))
        for step in r.steps { print("  \(step)") }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show the root, intermediate and trust bundle (fingerprints) and the last root roll.")
        @OptionGroup var global: GlobalOptions
        @Option(name: [.short, .long], help: "text or json.") var output: OutputFormat = .text

        func run() async throws {
            try await running {
                let t = try await global.client.call(.GET, APIPath.trust, as: TrustStatusView.self)
                if output == .json { return try printJSON(t) }
                TrustCommand.show(t)
            }
        }
    }

    struct Roll: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Roll the cluster's root to a new one, with an overlap in which both are trusted (run it on the node that holds the root's key).",
            discussion: "Steps, each waiting for every node: the new root joins every trust bundle; nodes' intermediates and workload certificates move to it; both roots stay trusted for --overlap; the old root leaves the bundles. Connections stay up throughout.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "Seconds both roots stay trusted once every node has moved.") var overlap: Double = 60
        @Flag(help: "Return once started instead of following the roll to its end.") var noWait = false

        func run() async throws {
            try await running {
                var r = try await global.client.call(.POST, APIPath.trustRoll, body: TrustRollRequest(overlapSeconds: overlap),
                                                     as: TrustRollView.self)
                var shown = 0
                while !noWait {
                    for step in r.steps.dropFirst(shown) { print(step) }
                    shown = r.steps.count
                    if r.finished { break }
                    try await Task.sleep(for: .milliseconds(250))
                    guard let now = try await global.client.call(.GET, APIPath.trust, as: TrustStatusView.self).roll else { break }
                    r = now
                }
                if r.phase == .failed { throw MeshError(.unavailable, "the root roll stopped: \(r.error ?? "?")") }
                if noWait { TrustCommand.showRoll(r) }
            }
        }
    }
}

struct IdentityCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "identity",
        abstract: "Inspect the identities policy is enforced by, and the workloads' certificates.",
        subcommands: [List.self, SVIDs.self]
    )

    struct SVIDs: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "svids",
            abstract: "List the workload certificates (X.509 SVIDs) of the node's endpoints: SPIFFE ID, expiry and next rotation.",
            discussion: "Files: <state-dir>/trust/svids/ENDPOINT.crt (the certificate, then the node's intermediate) and ENDPOINT.key (0600); the root is <state-dir>/trust/root.crt.")

        @OptionGroup var global: GlobalOptions
        @Option(name: [.short, .long], help: "text or json.") var output: OutputFormat = .text

        func run() async throws {
            try await running {
                let list = try await global.client.call(.GET, APIPath.svids, as: [SVIDView].self)
                if output == .json { return try printJSON(list) }
                printTable(["ENDPOINT", "SPIFFE ID", "EXPIRES", "ROTATES", "ROTATIONS"], list.map {
                    [$0.endpoint, $0.spiffeID, $0.notAfter.formatted(.iso8601), $0.rotatesAt.formatted(.iso8601), String($0.rotations)]
                })
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List allocated identities: one per label set (global) and per CIDR a rule names (local).",
            discussion: "An identity nothing uses any more shows since when; it is released after a grace period.")

        @OptionGroup var global: GlobalOptions
        @Option(name: [.short, .long], help: "text or json.") var output: OutputFormat = .text

        func run() async throws {
            try await running {
                let list = try await global.client.call(.GET, APIPath.identities, as: [IdentityView].self)
                if output == .json { return try printJSON(list) }
                printTable(["ID", "SCOPE", "LABELS", "ENDPOINTS", "UNUSED SINCE"], list.map {
                    [String($0.id), $0.scope, $0.labels, $0.endpoints.isEmpty ? "-" : $0.endpoints.joined(separator: ","),
                     $0.unusedSince.map { $0.formatted(.iso8601) } ?? "-"]
                })
            }
        }
    }
}

struct NodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "node",
        abstract: "Inspect the nodes of the cluster this node is a member of.",
        subcommands: [List.self]
    )

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the cluster's nodes: address, pod CIDR, endpoints and last heartbeat, as this node last read them from etcd.",
            discussion: "A node whose lease lapses (it died, or lost etcd for longer than its lease) leaves the list, and its endpoints every node's view.")

        @OptionGroup var global: GlobalOptions
        @Option(name: [.short, .long], help: "text or json.") var output: OutputFormat = .text

        func run() async throws {
            try await running {
                let list = try await global.client.call(.GET, APIPath.nodes, as: [NodeView].self)
                if output == .json { return try printJSON(list) }
                printTable(["NAME", "NODE IP", "POD CIDR", "ENDPOINTS", "LAST HEARTBEAT", "VERSION"], list.map {
                    [$0.name + ($0.local ? " (this node)" : ""), $0.ip, $0.podCIDR, String($0.endpoints),
                     "\(Int(max(0, Date().timeIntervalSince($0.heartbeat))))s ago", $0.version]
                })
            }
        }
    }
}
