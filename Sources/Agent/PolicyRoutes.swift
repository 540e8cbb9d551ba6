import Datapath
import Foundation
import Hummingbird
import MeshModel
import NIOCore
import NIOPosix

/// Policy, trace, monitor and BPF-dump routes of the API.
enum PolicyRoutes {
    static func add(to router: Router<BasicRequestContext>, manager: EndpointManager, policy: PolicyEngine,
                    datapath: MeshDatapath, store: Store, hub: EventHub, services: ServiceManager, cluster: ClusterAgent?) {
        router.post(RouterPath(APIPath.policies)) { request, _ in
            try await APIServer.respond(status: .ok) {
                let req = try await APIServer.decoded(PolicyApplyRequest.self, from: request, limit: 64 << 20, what: "a policy file",
                                                      expected: "a policy apply request")
                if !req.dryRun { try cluster?.requireStore("apply \(req.source)") }
                let result = try await policy.apply(req)
                if let cluster, !req.dryRun { try await ServiceRoutes.shareApplied(req.yaml, cluster: cluster, services: services) }
                return result
            }
        }
        router.get(RouterPath(APIPath.policies)) { _, _ in try await APIServer.respond { try await policy.list() } }
        router.get("/v1/policies/:namespace/:name") { _, ctx in
            try await APIServer.respond {
                try await policy.get("\(ctx.parameters.get("namespace") ?? "")/\(ctx.parameters.get("name") ?? "")")
            }
        }
        router.delete("/v1/policies/:namespace/:name") { _, ctx in
            try await APIServer.respond {
                try cluster?.requireStore("delete a policy")
                let key = try await policy.delete("\(ctx.parameters.get("namespace") ?? "")/\(ctx.parameters.get("name") ?? "")")
                try await cluster?.documentDeleted(kind: "policy", key: key)
                return ["deleted": key]
            }
        }
        router.post(RouterPath(APIPath.trace)) { request, _ in
            try await APIServer.respond {
                let req = try await APIServer.decoded(TraceRequest.self, from: request, limit: 1 << 20, what: "a trace request",
                                                      expected: "a trace request")
                return try await NIOThreadPool.singleton.runIfActive { try trace(req, manager: manager, policy: policy, datapath: datapath) }
            }
        }
        router.get(RouterPath(APIPath.monitor)) { request, _ -> Response in
            let type = request.uri.queryParameters.get("type") ?? "all"
            guard ["all", "drop", "verdict", "lb", "l7"].contains(type) else {
                return APIServer.json(.badRequest, ErrorResponse(error: .invalid("monitor type \"\(type)\" is not drop, verdict, lb, l7 or all")))
            }
            let stream = EventResolver(store: store, policy: policy, services: services.names).stream(hub: hub, type: type)
            return Response(status: .ok, headers: [.contentType: "application/x-ndjson"], body: ResponseBody(asyncSequence: stream))
        }
        router.get(RouterPath(APIPath.bpfPolicy)) { _, _ in
            try await APIServer.respondOffPool {
                let names = Dictionary(uniqueKeysWithValues: try store.endpoints().map { ($0.id, $0.name) })
                let revision = try datapath.policyState().revision
                var rows: [BPFPolicyRow] = []
                for e in try datapath.policyEntries() {
                    let ports: String
                    if e.proto == 0 { ports = "all" } else {
                        let span = UInt32(1) << (16 - e.portPrefixLength)
                        let from = UInt32(e.portPrefix), to = from + span - 1
                        ports = from == to ? "\(from)" : "\(from)-\(to)"
                    }
                    rows.append(BPFPolicyRow(endpoint: names[Int(e.endpointID)] ?? "\(e.endpointID)", direction: e.direction.rawValue,
                                             identity: Int(e.identity), peer: policy.describe(identity: e.identity),
                                             proto: ProtocolName.name(e.proto), ports: ports, action: e.action == .deny ? "deny" : e.l7 ? "allow (L7 proxy)" : e.auth ? "allow (authenticated)" : "allow",
                                             rule: policy.describe(rule: e.ruleID, revision: revision)))
                }
                return rows
            }
        }
        router.get(RouterPath(APIPath.bpfIPCache)) { _, _ in
            try await APIServer.respondOffPool {
                let names = Dictionary(uniqueKeysWithValues: try store.endpoints().map { ($0.id, $0.name) })
                var rows: [BPFIPCacheRow] = []
                for e in try datapath.ipcacheEntries() {
                    rows.append(BPFIPCacheRow(prefix: "\(IPv4Address(e.address))/\(e.prefixLength)", identity: Int(e.identity),
                                              labels: policy.describe(identity: e.identity),
                                              endpoint: e.endpointID == 0 ? "" : names[Int(e.endpointID)] ?? "\(e.endpointID)",
                                              tunnel: e.tunnel))
                }
                return rows
            }
        }
        router.get(RouterPath(APIPath.bpfConntrack)) { _, _ in
            try await APIServer.respondOffPool {
                let names = Dictionary(uniqueKeysWithValues: try store.endpoints().map { ($0.id, $0.name) })
                var rows: [BPFConntrackRow] = []
                for c in try datapath.conntrackEntries().sorted(by: { ($0.endpointID, $0.ageSeconds) < ($1.endpointID, $1.ageSeconds) }) {
                    let flow = "\(IPv4Address(c.source)):\(c.sourcePort) -> \(IPv4Address(c.destination)):\(c.destinationPort)"
                    rows.append(BPFConntrackRow(endpoint: names[Int(c.endpointID)] ?? "\(c.endpointID)", direction: c.direction.rawValue,
                                                flow: flow, proto: ProtocolName.name(c.proto), revision: Int(c.revision),
                                                rule: policy.describe(rule: c.ruleID, revision: c.revision),
                                                closing: c.closing, ageSeconds: c.ageSeconds, idleSeconds: c.idleSeconds))
                }
                return rows
            }
        }
    }

    /// Runs the real programs on a synthetic first packet, at both hooks it would cross.
    static func trace(_ req: TraceRequest, manager: EndpointManager, policy: PolicyEngine,
                      datapath: MeshDatapath) throws -> TraceResponse {
        let proto: MeshDatapath.TraceProtocol
        switch req.proto.uppercased() {
        case "TCP": proto = .tcp
        case "UDP": proto = .udp
        case "ICMP": proto = .icmp
        default: throw MeshError.invalid("protocol \"\(req.proto)\" is not TCP, UDP or ICMP")
        }
        // For ICMP the "port" is the message type (8: echo request), as in `icmps` rules.
        if proto == .icmp {
            guard (0...255).contains(req.port) else { throw MeshError.invalid("ICMP type \(req.port) is not 0-255 (8 is an echo request)") }
        } else {
            guard (1...65535).contains(req.port) else { throw MeshError.invalid("port \(req.port) is not 1-65535") }
        }
        // Each side is an endpoint name or an IPv4 address (a peer outside the node).
        func side(_ s: String) throws -> (Endpoint?, IPv4Address) {
            if let ip = IPv4Address(s) { return (nil, ip) }
            let ep = try manager.get(s)
            return (ep, ep.ipv4)
        }
        let (fromEP, fromIP) = try side(req.from)
        let (toEP, toIP) = try side(req.to)
        guard fromEP != nil || toEP != nil else { throw MeshError.invalid("at least one of --from and --to must be an endpoint") }
        let revision = try datapath.policyState().revision
        var hops: [TraceHop] = []
        for (ep, dir) in [(fromEP, MeshDatapath.Direction.egress), (toEP, .ingress)] {
            guard let ep else { continue }
            let ifindex = Plumbing.ifindex(ep.interface)
            let r = try datapath.trace(ifindex: ifindex, direction: dir, source: fromIP.value, destination: toIP.value,
                                       proto: proto, destinationPort: UInt16(req.port))
            hops.append(TraceHop(hook: "\(dir.rawValue) of \(ep.name)", enforced: r.enforced,
                                 verdict: r.action == .deny ? "denied"
                                     : r.l7 ? "allowed (through the L7 proxy, whose HTTP rules then apply)"
                                     : r.auth ? (dir == .ingress ? "allowed (for a proven peer: from another node, only through the mTLS tunnel)"
                                                                 : "allowed (for a proven peer: to another node, only through the mTLS tunnel)")
                                     : "allowed",
                                 reason: r.reason.label,
                                 rule: policy.describe(rule: r.ruleID, revision: revision),
                                 peerIdentity: Int(r.peerIdentity), peer: policy.describe(identity: r.peerIdentity)))
        }
        let verdict = hops.allSatisfy { $0.verdict.hasPrefix("allowed") }
            ? hops.contains { $0.verdict.contains("L7 proxy") } ? "allowed (through the L7 proxy)"
            : hops.contains { $0.verdict.contains("proven peer") } ? "allowed (for a proven peer)" : "allowed" : "denied"
        // Established connections of the flow: conntrack entries at either hook, as the
        // programs keyed them (the first packet's tuple, the endpoint and its direction).
        // Their next packet passes on the entry; under a newer revision it is first
        // decided again as a new flow of the same tuple, which is what the hop says.
        var established: [TracedConnection] = []
        let entries = try datapath.conntrackEntries().filter {
            $0.source == fromIP.value && $0.destination == toIP.value && $0.proto == proto.number
                && Int($0.destinationPort) == req.port
        }
        for (ep, dir) in [(fromEP, MeshDatapath.Direction.egress), (toEP, .ingress)] {
            guard let ep else { continue }
            let hook = "\(dir.rawValue) of \(ep.name)"
            let newFlow = hops.first { $0.hook == hook }?.verdict ?? "allowed"
            for e in entries.sorted(by: { $0.sourcePort < $1.sourcePort }) where e.endpointID == UInt32(ep.id) && e.direction == dir {
                established.append(TracedConnection(
                    hook: hook, sourcePort: Int(e.sourcePort), revision: Int(e.revision),
                    rule: policy.describe(rule: e.ruleID, revision: e.revision), idleSeconds: e.idleSeconds,
                    verdict: e.revision == revision ? "allowed" : newFlow))
            }
        }
        return TraceResponse(from: req.from, to: req.to, port: req.port, proto: req.proto.uppercased(), revision: Int(revision),
                             hops: hops, verdict: verdict, established: established)
    }
}
