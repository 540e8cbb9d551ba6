import Datapath
import Foundation
import Hummingbird
import Logging
import MeshModel
import NIOCore
import NIOPosix
import ServiceLifecycle

/// The versioned HTTP/JSON API on the node's unix socket (see MeshModel.APIPath).
/// Every failure answers with an ErrorResponse whose message `meshctl` prints as is.
enum APIServer {
    static func make(settings: NodeSettings, manager: EndpointManager, policy: PolicyEngine, datapath: MeshDatapath,
                     redirect: RedirectControl, lb: ServiceLB, services: ServiceManager, store: Store, hub: EventHub, proxy: ProxySupervisor?,
                     cluster: ClusterAgent?, workloads: WorkloadIdentities, startedAt: Date, logger: Logger) -> some Service {
        let router = Router()
        router.get(RouterPath(APIPath.svids)) { _, _ in try await respond { await workloads.views() } }
        router.get(RouterPath(APIPath.trust)) { _, _ in
            try await respond {
                let ca = workloads.ca
                return TrustStatusView(trustDomain: ca.trustDomain, root: CertificateAuthority.summary(ca.root),
                                       intermediate: CertificateAuthority.summary(ca.currentIntermediate),
                                       bundle: await workloads.bundleRoots.map(CertificateAuthority.summary),
                                       holdsRootKey: ca.holdsRootKey, roll: await cluster?.trustStatus())
            }
        }
        router.post(RouterPath(APIPath.trustRoll)) { request, _ in
            try await respond(status: .accepted) {
                let req = try await decoded(TrustRollRequest.self, from: request, limit: 1 << 16, what: "a root roll request",
                                            expected: "a root roll request")
                guard let cluster else {
                    throw MeshError(.invalidArgument, "a node on its own has nothing to roll its root with: mutual TLS runs between cluster members",
                                    hint: "move <state-dir>/trust away and restart meshd for a new root")
                }
                return try await cluster.startRootRoll(overlap: req.overlapSeconds)
            }
        }
        PolicyRoutes.add(to: router, manager: manager, policy: policy, datapath: datapath, store: store, hub: hub, services: services,
                         cluster: cluster)
        ServiceRoutes.add(to: router, policy: policy, services: services, cluster: cluster)
        router.get(RouterPath(APIPath.nodes)) { _, _ in
            try await respond { () throws(MeshError) -> [NodeView] in
                guard let cluster else {
                    throw MeshError(.notFound, "this node is a node on its own, not a cluster member",
                                    hint: "start meshd with --cluster etcd://HOST:PORT --node-ip IP to join one")
                }
                return await cluster.nodeViews()
            }
        }
        RedirectRoutes.add(to: router, control: redirect, store: store)
        router.get(RouterPath(APIPath.status)) { _, _ in
            try await respondOffPool {
                let eps = try manager.list()
                let attached = eps.flatMap { datapath.attachments(of: $0) }
                var programs = [datapath.fromEndpoint, datapath.toEndpoint].map { p in
                    let suffix = p === datapath.fromEndpoint ? "/ingress" : "/egress"
                    return NodeStatus.Program(name: p.name, id: Int(p.id), attachments: attached.filter { $0.hasSuffix(suffix) })
                }
                let r = redirect.redirect
                programs.append(NodeStatus.Program(name: r.sockops.name, id: Int(r.sockops.id),
                                                   attachments: r.isAttached ? ["cgroup:\(r.cgroup)"] : []))
                programs.append(NodeStatus.Program(name: r.skmsg.name, id: Int(r.skmsg.id), attachments: ["sockhash:mesh_sockhash"]))
                for p in lb.attachments {
                    programs.append(NodeStatus.Program(name: p.name, id: Int(p.id), attachments: p.attached ? ["cgroup:\(settings.cgroup)"] : []))
                }
                let maps = (datapath.mapStats() + r.mapStats() + lb.mapStats()).map {
                    NodeStatus.Map(name: $0.name, type: $0.type, entries: $0.entries, capacity: $0.capacity)
                }
                var status = NodeStatus(version: MeshVersion.string, node: settings.nodeName, podCIDR: settings.podCIDR.description,
                                        bpffs: settings.bpffs, cgroup: settings.cgroup, startedAt: startedAt,
                                        programs: programs, maps: maps, endpoints: eps.count)
                status.policyRevision = Int(try datapath.policyState().revision)
                status.policies = policy.policyCount
                status.lastPublish = policy.lastPublish
                if let proxy {
                    let p = proxy.currentStatus
                    status.proxy = .init(port: Int(proxy.port), connected: p.connected, pid: p.pid.map(Int.init), adopted: p.adopted,
                                         restarts: p.restarts, generation: Int(p.generationApplied), lastRejection: p.lastRejection,
                                         routedFrontends: proxy.routedFrontends)
                }
                status.cluster = cluster?.status
                return status
            }
        }
        let readiness = services.names
        router.get(RouterPath(APIPath.endpoints)) { _, _ in try await respond { try withState(manager.list(), readiness) } }
        router.post(RouterPath(APIPath.endpoints)) { request, _ in
            try await respond(status: .created) {
                let create = try await decoded(EndpointCreateRequest.self, from: request, limit: 1 << 20, what: "an endpoint request",
                                               expected: "an endpoint")
                return try await manager.create(create)
            }
        }
        router.get("/v1/endpoints/:name") { _, context in
            try await respond { try withState([manager.get(context.parameters.get("name") ?? "")], readiness)[0] }
        }
        router.patch("/v1/endpoints/:name/labels") { request, context in
            try await respond {
                let change = try await decoded(EndpointLabelRequest.self, from: request, limit: 1 << 20, what: "a label change",
                                               expected: "a label change")
                return try await manager.relabel(context.parameters.get("name") ?? "", change)
            }
        }
        router.get(RouterPath(APIPath.identities)) { _, _ in try await respond { try await policy.identityViews() } }
        router.delete("/v1/endpoints/:name") { _, context in
            try await respond(status: .ok) { () async throws -> [String: String] in
                let name = context.parameters.get("name") ?? ""
                try await manager.delete(name)
                return ["deleted": name]
            }
        }
        let access = settings.apiAccess
        let socket = settings.apiSocket
        return Application(router: router,
                           // A request that stalls for 30 s loses its connection.
                           server: .http1(configuration: .init(additionalChannelHandlers: [PeerCredentialHandler(access: access)],
                                                               idleTimeout: .seconds(30))),
                           configuration: .init(address: .unixDomainSocket(path: socket), serverName: "meshd"),
                           onServerRunning: { _ in
                               // bind() made the socket with the umask's mode; until this runs
                               // only the folder (see Daemon.prepareSocket) keeps others out.
                               if let problem = Daemon.lockDownSocket(socket, access: access) {
                                   logger.error("cannot restrict the API socket", metadata: ["error": "\(problem)"])
                               }
                           },
                           logger: logger)
    }

    static func status(for code: MeshError.Code) -> HTTPResponse.Status {
        switch code {
        case .invalidArgument: .badRequest
        case .notFound: .notFound
        case .alreadyExists, .exhausted: .conflict
        case .permissionDenied: .forbidden
        case .tooLarge: .contentTooLarge
        case .unavailable: .serviceUnavailable
        case .datapath, .internalError: .internalServerError
        }
    }

    /// A request's body, at most `limit` bytes. A Content-Length above the limit is refused
    /// before a byte of the body is read; a body without one stops being read at the limit.
    /// Endpoints with their readiness (`ready` unless a probe says otherwise).
    static func withState(_ eps: [Endpoint], _ names: ServiceManager.Names) -> [Endpoint] {
        let states = names.readinessByEndpoint
        return eps.map { ep in
            var ep = ep
            ep.state = states[ep.name].map { $0 ? "ready" : "unready" } ?? "ready"
            return ep
        }
    }

    /// The request's JSON body as `type`: too large (over `limit`, named as `what`) is 413,
    /// not `type` is 400 saying "request body is not `expected`".
    static func decoded<T: Decodable>(_ type: T.Type, from request: Request, limit: Int, what: String,
                                      expected: String) async throws -> T {
        let body = try await body(of: request, limit: limit, what: what)
        do { return try MeshJSON.decoder().decode(T.self, from: Data(buffer: body)) } catch {
            throw MeshError.invalid("request body is not \(expected): \(describe(error))")
        }
    }

    static func body(of request: Request, limit: Int, what: String) async throws -> ByteBuffer {
        let tooLarge = MeshError(.tooLarge, "\(what) is larger than \(limit) bytes, the most this API takes",
                                 hint: "split it into smaller requests")
        if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > limit { throw tooLarge }
        do { return try await request.body.collect(upTo: limit) } catch is NIOTooManyBytesError { throw tooLarge }
    }

    static func respond<T: Encodable>(status: HTTPResponse.Status = .ok, _ body: () async throws -> T) async throws -> Response {
        do {
            return json(status, try await body())
        } catch let e as MeshError {
            return json(Self.status(for: e.code), ErrorResponse(error: e))
        } catch {
            let e = MeshError(.internalError, "\(error)")
            return json(.internalServerError, ErrorResponse(error: e))
        }
    }

    /// `respond`, with `body` run on NIO's thread pool: for map walks, BPF_PROG_TEST_RUN and
    /// other system calls that must not hold a thread of Swift's cooperative pool.
    static func respondOffPool<T: Encodable & Sendable>(status: HTTPResponse.Status = .ok,
                                                        _ body: @escaping @Sendable () throws -> T) async throws -> Response {
        try await respond(status: status) { try await NIOThreadPool.singleton.runIfActive(body) }
    }

    static func json<T: Encodable>(_ status: HTTPResponse.Status, _ value: T) -> Response {
        let data = (try? MeshJSON.encoder().encode(value)) ?? Data("{}".utf8)
        return Response(status: status, headers: [.contentType: "application/json"],
                        body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    static func describe(_ error: Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, let c): "missing field \((c.codingPath + [key]).map(\.stringValue).joined(separator: "."))"
        case DecodingError.typeMismatch(_, let c), DecodingError.valueNotFound(_, let c), DecodingError.dataCorrupted(let c):
            "\(c.codingPath.map(\.stringValue).joined(separator: ".")): \(c.debugDescription)"
        default: "\(error)"
        }
    }
}

/// `GET /metrics` in the Prometheus text format on `--metrics-address`.
enum MetricsServer {
    /// `proxy`: the L7 proxy's own metrics follow meshd's in the same scrape.
    static func make(settings: NodeSettings, metrics: MetricsCollector, proxy: ProxySupervisor?, cluster: ClusterAgent?,
                     workloads: WorkloadIdentities, logger: Logger) -> some Service {
        let router = Router()
        router.get("/metrics") { _, _ -> Response in
            metrics.observeTrust(await workloads.expiries(), counters: workloads.counters.withLockedValue { $0 })
            if let proxy { metrics.observeProxy(proxy.currentStatus) }
            if let cluster { metrics.observeCluster(cluster.healthNow, requests: cluster.etcd.requestCounts) }
            var body = try await NIOThreadPool.singleton.runIfActive { try metrics.scrape() }
            if let text = await proxy?.metricsText() { body += Array(text.utf8) }
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(bytes: body)))
        }
        return Application(router: router,
                           configuration: .init(address: .hostname(settings.metricsHost, port: settings.metricsPort), serverName: "meshd"),
                           logger: logger)
    }
}
