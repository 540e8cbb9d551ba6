import Datapath
import Foundation
import Logging
import MeshModel

/// Owns the node's services and namespaces: validates and stores them, registers every
/// ready endpoint a service selects as its backend, probes endpoints' readiness, and keeps
/// the kernel's load-balancer maps and the DNS names equal to that desired state.
///
/// Nobody lists backends: a sync recomputes every service's backends from the endpoints,
/// their labels and readiness, and ServiceLB writes only what differs, so the cost of a
/// change is the entries it changes, not the number of services.
public actor ServiceManager {
    struct Record {
        var id: Int
        var service: MeshService
        var clusterIP: IPv4Address
        var appliedAt: Date
    }

    /// An endpoint's probe results so far.
    struct ProbeState {
        var ready: Bool
        var successes = 0
        var failures = 0
    }

    let settings: NodeSettings
    let store: Store
    let lb: ServiceLB
    let policy: PolicyEngine
    let dns: NodeDNS?
    let logger: Logger
    private var services: [String: Record] = [:]
    private var namespaces: [String: (namespace: Namespace, appliedAt: Date)] = [:]
    private var probes: [String: ProbeState] = [:]
    /// HTTPRoutes by key; `id` orders them by first apply (precedence ties).
    struct RouteRecord {
        var id: Int
        var route: HTTPRoute
        var appliedAt: Date
    }
    private var routes: [String: RouteRecord] = [:]
    private var routeProblems: RouteTable.Problems = [:]
    private var routeFrontends: [String: [String]] = [:]
    /// Gateways and TLSRoutes by store key (`Gateway:namespace/name`); `id` orders them by
    /// first apply, in the same sequence as HTTPRoutes (an older Gateway keeps a port).
    struct GatewayDocRecord {
        var id: Int
        var doc: GatewayDocument
        var appliedAt: Date
    }
    private var gatewayDocs: [String: GatewayDocRecord] = [:]
    private var gatewayTable = GatewayTable.Result()
    /// Receives the routed frontends whenever they change (the proxy supervisor). With the
    /// proxy off no frontend is routed: the L4 balancer keeps serving. Frontends are routed
    /// from the first sync on (a restarted meshd never unroutes them while it starts), and
    /// the table waits here until the supervisor is set.
    private var onRoutes: (@Sendable (ProxyRouting) -> Void)?
    private var lastRoutes: ProxyRouting?
    /// What a prober checks: it is replaced when any of it changes.
    struct ProbeTarget: Equatable {
        var probe: ReadinessProbe
        var endpointID: UInt32
        var address: IPv4Address
        var port: UInt16
    }
    private var probers: [String: (target: ProbeTarget, generation: Int, task: Task<Void, Never>)] = [:]
    private var proberGeneration = 0
    /// Endpoint ids the kernel had as backends when meshd started: until their probe has
    /// a say, they stay ready, so a restart never takes a working backend out.
    private var readyAtStart: Set<UInt32>
    /// Names for the numbers the kernel reports (metrics, monitor), readable without
    /// waiting for this actor.
    nonisolated let names = Names()

    public init(settings: NodeSettings, store: Store, lb: ServiceLB, policy: PolicyEngine, dns: NodeDNS?, logger: Logger) throws(MeshError) {
        self.settings = settings
        self.store = store
        self.lb = lb
        self.policy = policy
        self.dns = dns
        self.logger = logger
        for row in try store.serviceRows() {
            do {
                guard let ip = IPv4Address(row.clusterIP) else { throw MeshError(.internalError, "bad cluster IP \(row.clusterIP)") }
                services[row.key] = Record(id: Int(row.id ?? 0), service: try row.service(), clusterIP: ip, appliedAt: row.appliedAt)
            } catch {
                logger.error("a stored service no longer reads; it is not served", metadata: ["service": "\(row.key)", "error": "\(error)"])
            }
        }
        for row in try store.namespaceRows() {
            if let ns = try? row.namespace() { namespaces[ns.name] = (ns, row.appliedAt) }
        }
        for row in try store.routeRows() {
            do {
                if GatewayDocument.isStoreKey(row.key) {
                    let doc = try JSONDecoder().decode(GatewayDocument.self, from: Data(row.spec.utf8))
                    gatewayDocs[row.key] = GatewayDocRecord(id: Int(row.id ?? 0), doc: doc, appliedAt: row.appliedAt)
                    continue
                }
                routes[row.key] = RouteRecord(id: Int(row.id ?? 0), route: try row.route(), appliedAt: row.appliedAt)
            } catch {
                logger.error("a stored HTTPRoute no longer reads; it is not served", metadata: ["route": "\(row.key)", "error": "\(error)"])
            }
        }
        readyAtStart = Set(((try? lb.kernelEntries()) ?? []).flatMap { $0.backends.map(\.id) })
    }

    public nonisolated var unownedExecutor: UnownedSerialExecutor { ControlThread.executor.asUnownedSerialExecutor() }

    /// Hands the routed frontends to the L7 proxy from now on (and at once).
    public func setOnRoutes(_ f: @escaping @Sendable (ProxyRouting) -> Void) {
        onRoutes = f
        if let lastRoutes { f(lastRoutes) }
    }

    /// Labels of every namespace that has a Namespace document (for identities and policy).
    public nonisolated static func namespaceLabels(_ store: Store) -> [String: Labels] {
        Dictionary(((try? store.namespaceRows()) ?? []).compactMap { try? $0.namespace() }.map { ($0.name, $0.labels) },
                   uniquingKeysWith: { a, _ in a })
    }

    // MARK: Frontends

    /// A frontend's id: the service's row id, and its port's place (1-255) in the low byte.
    static func frontendID(service: Int, port: Int) -> UInt32 { UInt32(service) << 8 | UInt32(port + 1) }
    static let maxPorts = 255

    static func targetPort(_ port: MeshService.Port, of ep: Endpoint) -> UInt16? { targetPort(port, ports: ep.ports) }

    static func targetPort(_ port: MeshService.Port, ports: [String: UInt16]) -> UInt16? {
        switch port.targetPort {
        case .number(let n): n
        case .name(let s): ports[s]
        }
    }

    // MARK: Other nodes' endpoints

    /// The other nodes' endpoints (a cluster's): backends of the services that select
    /// them while their own node reports them ready.
    private var remoteEndpoints: [EndpointRecord] = []
    /// Told after this node's endpoints or their readiness changed (the cluster agent, the
    /// workload certificates).
    private var onLocalChange: [@Sendable () -> Void] = []

    public func addOnLocalChange(_ f: @escaping @Sendable () -> Void) { onLocalChange.append(f) }

    public func setRemoteEndpoints(_ records: [EndpointRecord]) {
        remoteEndpoints = records.sorted { ($0.node, $0.name) < ($1.node, $1.name) }
        do { try sync() } catch { logger.error("re-registering backends failed", metadata: ["error": "\(error.message)"]) }
    }

    /// A remote backend's id in the kernel's maps and events: the high bit set (local
    /// endpoint ids never reach it), the rest a hash of `node/name`.
    static func remoteBackendID(_ r: EndpointRecord) -> UInt32 {
        let h = FNV1a.hash32("\(r.node)/\(r.name)")
        return 0x8000_0000 | (h & 0x7fff_ffff)
    }

    /// Whether each of this node's endpoints is ready (probed, or without a probe).
    public func readiness() throws(MeshError) -> [String: Bool] {
        Dictionary(try store.endpoints().map { ($0.name, isReady($0)) }, uniquingKeysWith: { a, _ in a })
    }

    func isReady(_ ep: Endpoint) -> Bool {
        guard ep.readiness != nil else { return true }
        return probes[ep.name]?.ready ?? readyAtStart.contains(UInt32(ep.id))
    }

    // MARK: Applying

    /// Checks services and namespaces against the node (addresses, port names) and gives
    /// each new service its cluster IP. Throws, changing nothing, at the first problem.
    func plan(_ incoming: [MeshService], source: String) throws(MeshError) -> [Record] {
        let endpoints = try store.endpoints()
        let replaced = Set(incoming.map(\.key))
        var taken: [IPv4Address: String] = [:]
        for r in services.values where !replaced.contains(r.service.key) { taken[r.clusterIP] = r.service.key }
        var planned: [Record] = []
        var pending: [(Int, MeshService)] = []
        for (i, svc) in incoming.enumerated() {
            let place = "\(source): Service \(svc.key)"
            guard svc.ports.count <= Self.maxPorts else { throw .invalid("\(place): spec.ports: at most \(Self.maxPorts) ports") }
            if let ip = svc.clusterIP {
                guard settings.serviceCIDR.contains(ip), ip != settings.serviceCIDR.network, ip != settings.serviceCIDR.broadcast else {
                    throw .invalid("\(place): spec.clusterIP: \(ip) is not an address of the service CIDR \(settings.serviceCIDR)",
                                   hint: "leave clusterIP out to get one, or pick one inside \(settings.serviceCIDR)")
                }
                if let holder = taken[ip] {
                    throw MeshError(.alreadyExists, "\(place): spec.clusterIP: \(ip) is already the address of service \(holder)")
                }
                taken[ip] = svc.key
            }
            // A port name no selected endpoint has is a typo, unless nothing is selected yet.
            let selected = endpoints.filter { svc.selects($0.labels) }
            for (j, port) in svc.ports.enumerated() {
                guard case .name(let name) = port.targetPort, !selected.isEmpty else { continue }
                guard selected.contains(where: { $0.ports[name] != nil }) else {
                    let known = Set(selected.flatMap { $0.ports.keys }).sorted()
                    throw .invalid("\(place): spec.ports[\(j)].targetPort: no endpoint the selector picks (\(selected.map(\.name).joined(separator: ", "))) has a port named \"\(name)\"",
                                   hint: known.isEmpty ? "give endpoints named ports with meshctl endpoint create --ports \(name)=8080" : "their port names: \(known.joined(separator: ", "))")
                }
            }
            pending.append((i, svc))
        }
        // Addresses for the rest: first every re-applied service keeps the one it has (unless
        // another document of the file asks for it), then the others get the lowest free
        // ones, in one walk for the whole file.
        var chosen: [String: IPv4Address] = [:]
        for (_, svc) in pending {
            if let ip = svc.clusterIP { chosen[svc.key] = ip; continue }
            if let existing = services[svc.key], taken[existing.clusterIP] == nil {
                chosen[svc.key] = existing.clusterIP
                taken[existing.clusterIP] = svc.key
            }
        }
        var cursor = settings.serviceCIDR.network.value &+ 1
        for (_, svc) in pending {
            if chosen[svc.key] == nil {
                while cursor < settings.serviceCIDR.broadcast.value, taken[IPv4Address(cursor)] != nil { cursor &+= 1 }
                guard cursor < settings.serviceCIDR.broadcast.value else {
                    throw MeshError(.exhausted, "\(source): Service \(svc.key): the service CIDR \(settings.serviceCIDR) has no free address left",
                                    hint: "delete services, or restart meshd with a larger --service-cidr")
                }
                chosen[svc.key] = IPv4Address(cursor)
                taken[IPv4Address(cursor)] = svc.key
            }
            planned.append(Record(id: services[svc.key]?.id ?? 0, service: svc, clusterIP: chosen[svc.key]!, appliedAt: Date()))
        }
        // Backend entries: every port of every service times the endpoints it selects now.
        let kept = services.values.filter { !replaced.contains($0.service.key) }.map(\.service) + planned.map(\.service)
        let backendEntries = kept.reduce(0) { sum, svc in sum + svc.ports.count * endpoints.filter { svc.selects($0.labels) }.count }
        guard backendEntries <= ServiceLB.backendCapacity else {
            throw MeshError(.exhausted, "\(source): the services would need \(backendEntries) backend entries; the load balancer holds \(ServiceLB.backendCapacity)")
        }
        let frontends = services.values.filter { !replaced.contains($0.service.key) }.reduce(0) { $0 + $1.service.ports.count }
            + planned.reduce(0) { $0 + $1.service.ports.count }
        guard frontends <= ServiceLB.frontendCapacity else {
            throw MeshError(.exhausted, "\(source): the services would have \(frontends) ports; the load balancer holds \(ServiceLB.frontendCapacity)")
        }
        return planned
    }

    /// What an apply changed, so that it can be undone if a later part of the same file
    /// fails (the policy part, published after it).
    public struct Undo: Sendable {
        var services: [String: Record?] = [:]
        var applied: [String: Record] = [:]
        var namespaces: [String: (namespace: Namespace, appliedAt: Date)?] = [:]
        var appliedNamespaces: [String: Namespace] = [:]
        var routes: [String: RouteRecord?] = [:]
        var appliedRoutes: [String: HTTPRoute] = [:]
        var gatewayDocs: [String: GatewayDocRecord?] = [:]
        var appliedGatewayDocs: [String: GatewayDocument] = [:]
    }

    /// Checks and stores services and namespaces, then serves them. Planning and the
    /// services' commit happen with no suspension in between, so two applies never plan
    /// against each other's half-done state. Namespace labels change identities: a change
    /// of them publishes policy, and if that fails everything this call did is undone.
    /// Returns kubectl-style change lines, and what to undo should the caller's next step fail.
    func apply(services incoming: [MeshService], namespaces nsIncoming: [Namespace], routes routesIncoming: [HTTPRoute] = [],
               gatewayDocuments docsIncoming: [GatewayDocument] = [],
               source: String, dryRun: Bool) async throws(MeshError) -> (changes: [String], undo: Undo) {
        let planned = try plan(incoming, source: source)
        var changes: [String] = []
        for d in docsIncoming {
            let old = gatewayDocs[d.storeKey]
            let verb = old == nil ? "created" : old!.doc == d ? "unchanged" : "configured"
            changes.append("\(d.kind.lowercased())/\(d.key) \(verb)")
        }
        for r in routesIncoming {
            let verb = routes[r.key] == nil ? "created" : routes[r.key]!.route == r ? "unchanged" : "configured"
            changes.append("httproute/\(r.key) \(verb)")
        }
        for ns in nsIncoming {
            let verb = namespaces[ns.name] == nil ? "created" : namespaces[ns.name]!.namespace == ns ? "unchanged" : "configured"
            changes.append("namespace/\(ns.name) \(verb)")
        }
        for r in planned {
            let old = services[r.service.key]
            let verb = old == nil ? "created" : (old!.service == r.service && old!.clusterIP == r.clusterIP) ? "unchanged" : "configured"
            changes.append("service/\(r.service.key) \(verb) (\(r.clusterIP))")
        }
        var undo = Undo()
        if dryRun { return (changes.map { $0 + " (dry run)" }, undo) }
        for r in planned { undo.services[r.service.key] = .some(services[r.service.key]) }
        for ns in nsIncoming { undo.namespaces[ns.name] = .some(namespaces[ns.name]) }
        for r in routesIncoming { undo.routes[r.key] = .some(routes[r.key]) }
        for d in docsIncoming { undo.gatewayDocs[d.storeKey] = .some(gatewayDocs[d.storeKey]) }
        let (rows, allRouteRows) = try store.writeServices(
            planned.map { Store.ServiceRow(id: $0.id == 0 ? nil : Int64($0.id), key: $0.service.key, spec: Self.json($0.service),
                                           clusterIP: $0.clusterIP.description, appliedAt: $0.appliedAt) },
            namespaces: nsIncoming.map { Store.NamespaceRow(name: $0.name, labels: Self.json($0.labels.values), appliedAt: Date()) },
            routes: routesIncoming.map { Store.RouteRow(id: nil, key: $0.key, spec: Self.json($0), appliedAt: Date()) }
                + docsIncoming.map { Store.RouteRow(id: nil, key: $0.storeKey, spec: Self.json($0), appliedAt: Date()) })
        let routeRows = allRouteRows.prefix(routesIncoming.count)
        for (d, row) in zip(docsIncoming, allRouteRows.dropFirst(routesIncoming.count)) {
            let appliedAt = gatewayDocs[d.storeKey]?.doc == d ? gatewayDocs[d.storeKey]!.appliedAt : Date()
            gatewayDocs[d.storeKey] = GatewayDocRecord(id: Int(row.id ?? 0), doc: d, appliedAt: appliedAt)
            undo.appliedGatewayDocs[d.storeKey] = d
        }
        // The ids the store gave (or kept) order precedence ties.
        for (r, row) in zip(routesIncoming, routeRows) {
            let appliedAt = routes[r.key]?.route == r ? routes[r.key]!.appliedAt : Date()
            routes[r.key] = RouteRecord(id: Int(row.id ?? 0), route: r, appliedAt: appliedAt)
            undo.appliedRoutes[r.key] = r
        }
        for (r, row) in zip(planned, rows) {
            var rec = r
            rec.id = Int(row.id ?? 0)
            services[rec.service.key] = rec
            undo.applied[rec.service.key] = rec
        }
        let nsChanged = nsIncoming.contains { namespaces[$0.name]?.namespace != $0 }
        for ns in nsIncoming {
            namespaces[ns.name] = (ns, Date())
            undo.appliedNamespaces[ns.name] = ns
        }
        do {
            try sync()
            if nsChanged { try await policy.publish() }
        } catch {
            await revert(undo)
            throw error
        }
        for c in changes { logger.info("applied", metadata: ["change": "\(c)"]) }
        return (changes, undo)
    }

    /// Puts back what `undo` recorded, for each object still as that apply left it (a later
    /// apply's changes stay).
    func revert(_ undo: Undo) async {
        var deleteServices: [String] = [], restoreServices: [Store.ServiceRow] = []
        for (key, previous) in undo.services where services[key].map({ $0.id == undo.applied[key]?.id && $0.service == undo.applied[key]?.service }) ?? false {
            services[key] = previous
            if let p = previous {
                restoreServices.append(Store.ServiceRow(id: Int64(p.id), key: key, spec: Self.json(p.service), clusterIP: p.clusterIP.description,
                                                        appliedAt: p.appliedAt))
            } else {
                deleteServices.append(key)
            }
        }
        var deleteNamespaces: [String] = [], restoreNamespaces: [Store.NamespaceRow] = []
        for (name, previous) in undo.namespaces where namespaces[name]?.namespace == undo.appliedNamespaces[name] {
            namespaces[name] = previous
            if let p = previous {
                restoreNamespaces.append(Store.NamespaceRow(name: name, labels: Self.json(p.namespace.labels.values), appliedAt: p.appliedAt))
            } else {
                deleteNamespaces.append(name)
            }
        }
        var deleteRoutes: [String] = [], restoreRoutes: [Store.RouteRow] = []
        for (key, previous) in undo.routes where routes[key]?.route == undo.appliedRoutes[key] {
            routes[key] = previous
            if let p = previous {
                restoreRoutes.append(Store.RouteRow(id: Int64(p.id), key: key, spec: Self.json(p.route), appliedAt: p.appliedAt))
            } else {
                deleteRoutes.append(key)
            }
        }
        for (key, previous) in undo.gatewayDocs where gatewayDocs[key]?.doc == undo.appliedGatewayDocs[key] {
            gatewayDocs[key] = previous
            if let p = previous {
                restoreRoutes.append(Store.RouteRow(id: Int64(p.id), key: key, spec: Self.json(p.doc), appliedAt: p.appliedAt))
            } else {
                deleteRoutes.append(key)
            }
        }
        do {
            try store.writeServices(restoreServices, namespaces: restoreNamespaces, routes: restoreRoutes, deleteServices: deleteServices,
                                        deleteNamespaces: deleteNamespaces, deleteRoutes: deleteRoutes)
            try sync()
            if !undo.namespaces.isEmpty { try await policy.publish() }
        } catch {
            logger.error("undoing a failed apply failed; the next change resynchronises", metadata: ["error": "\(error.message)"])
        }
    }

    static func json<T: Encodable>(_ value: T) -> String {
        String(decoding: (try? JSONEncoder().encode(value)) ?? Data("{}".utf8), as: UTF8.self)
    }

    public func deleteService(_ key: String) throws(MeshError) -> String {
        guard services[key] != nil else {
            throw MeshError(.notFound, "service \"\(key)\" does not exist", hint: "meshctl get services lists them")
        }
        try store.writeServices([], namespaces: [], deleteServices: [key])
        services[key] = nil
        try sync()
        logger.info("service deleted", metadata: ["service": "\(key)"])
        return key
    }

    public func deleteRoute(_ key: String) throws(MeshError) -> String {
        guard routes[key] != nil else {
            throw MeshError(.notFound, "HTTPRoute \"\(key)\" does not exist", hint: "meshctl get httproutes lists them")
        }
        try store.writeServices([], namespaces: [], deleteRoutes: [key])
        routes[key] = nil
        try sync()
        logger.info("HTTPRoute deleted", metadata: ["route": "\(key)"])
        return key
    }

    /// Deletes a Gateway or TLSRoute (`kind`) by `namespace/name`.
    public func deleteGatewayDocument(kind: String, _ key: String) throws(MeshError) -> String {
        let storeKey = "\(kind):\(key)"
        guard gatewayDocs[storeKey] != nil else {
            throw MeshError(.notFound, "\(kind) \"\(key)\" does not exist", hint: "meshctl get \(kind.lowercased())s lists them")
        }
        try store.writeServices([], namespaces: [], deleteRoutes: [storeKey])
        gatewayDocs[storeKey] = nil
        try sync()
        logger.info("\(kind) deleted", metadata: ["key": "\(key)"])
        return key
    }

    public func deleteNamespace(_ name: String) async throws(MeshError) -> String {
        guard let old = namespaces[name] else {
            throw MeshError(.notFound, "namespace \"\(name)\" does not exist", hint: "meshctl get namespaces lists them")
        }
        try store.writeServices([], namespaces: [], deleteNamespaces: [name])
        namespaces[name] = nil
        do { try await policy.publish() } catch {
            if namespaces[name] == nil {
                namespaces[name] = old
                _ = try? store.writeServices([], namespaces: [Store.NamespaceRow(name: name, labels: Self.json(old.namespace.labels.values), appliedAt: old.appliedAt)])
            }
            throw error
        }
        logger.info("namespace deleted", metadata: ["namespace": "\(name)"])
        return name
    }

    // MARK: Endpoints and readiness

    /// Called after any endpoint change: starts and stops probers, then re-registers backends.
    public func endpointsChanged() {
        do {
            let eps = try store.endpoints()
            var wanted: [String: ProbeTarget] = [:]
            for ep in eps {
                guard let p = ep.readiness else { continue }
                let port = UInt16(p.port) ?? ep.ports[p.port]
                guard let port else {
                    logger.warning("readiness probe names a port the endpoint does not have; it stays unready",
                                   metadata: ["endpoint": "\(ep.name)", "probe": "\(p)"])
                    continue
                }
                wanted[ep.name] = ProbeTarget(probe: p, endpointID: UInt32(ep.id), address: ep.ipv4, port: port)
            }
            for (name, running) in probers {
                if wanted[name] == running.target { continue }
                running.task.cancel()
                probers[name] = nil
                probes[name] = nil
            }
            for (name, target) in wanted where probers[name] == nil {
                let (probe, address, port) = (target.probe, target.address, target.port)
                proberGeneration += 1
                let generation = proberGeneration
                let task = Task { [weak self] in
                    while !Task.isCancelled {
                        let ok = await ReadinessCheck.run(probe, address: address, port: port)
                        guard !Task.isCancelled, let self else { return }
                        await self.record(name, generation: generation, ok: ok)
                        try? await Task.sleep(for: .milliseconds(Int64(probe.intervalSeconds * 1000)))
                    }
                }
                probers[name] = (target, generation, task)
            }
            try sync()
        } catch {
            logger.error("re-registering backends failed", metadata: ["error": "\(error.message)"])
        }
        onLocalChange.forEach { $0() }
    }

    /// One probe's result; a result of a prober since replaced (the endpoint was deleted and
    /// made again, or its probe changed) counts for nothing. No store read: the prober's
    /// target is the endpoint's probe as of its last change.
    private func record(_ name: String, generation: Int, ok: Bool) {
        guard let running = probers[name], running.generation == generation else { return }
        let probe = running.target.probe, id = running.target.endpointID
        var st = probes[name] ?? ProbeState(ready: readyAtStart.contains(id))
        if ok { st.successes += 1; st.failures = 0 } else { st.failures += 1; st.successes = 0 }
        let was = st.ready
        if !st.ready && st.successes >= probe.successThreshold { st.ready = true }
        if st.ready && st.failures >= probe.failureThreshold { st.ready = false }
        probes[name] = st
        readyAtStart.remove(id)
        guard st.ready != was else { return }
        logger.info(st.ready ? "endpoint ready" : "endpoint unready", metadata: ["endpoint": "\(name)", "probe": "\(probe)"])
        do { try sync() } catch { logger.error("re-registering backends failed", metadata: ["error": "\(error.message)"]) }
        onLocalChange.forEach { $0() }
    }

    /// Makes the kernel's frontends, the DNS names and the names table match the desired state.
    func sync() throws(MeshError) {
        let eps = try store.endpoints()
        let routed = routeTable(eps)
        var desired: [ServiceLB.Frontend: [ServiceLB.Backend]] = [:]
        var frontendNames: [UInt32: Names.FrontendName] = [:]
        for r in services.values {
            guard r.id < 1 << 24 else {
                logger.error("service row id beyond the frontend id space; not served", metadata: ["service": "\(r.service.key)"])
                continue
            }
            let selected = eps.filter { r.service.selects($0.labels) && isReady($0) }
            let selectedRemote = remoteEndpoints.filter { $0.ready && r.service.selects($0.labels) }
            for (i, port) in r.service.ports.enumerated() {
                let f = ServiceLB.Frontend(id: Self.frontendID(service: r.id, port: i), vip: r.clusterIP.value, port: port.port,
                                           proto: port.protocolNumber, affinityTimeout: r.service.affinityTimeoutSeconds,
                                           routed: port.protocolNumber == 6 && routed.contains("\(r.clusterIP):\(port.port)"))
                desired[f] = selected.compactMap { ep in
                    Self.targetPort(port, of: ep).map { ServiceLB.Backend(id: UInt32(ep.id), address: ep.ipv4.value, port: $0) }
                } + selectedRemote.compactMap { ep in
                    Self.targetPort(port, ports: ep.ports).map { ServiceLB.Backend(id: Self.remoteBackendID(ep), address: ep.ip.value, port: $0) }
                }
                frontendNames[f.id] = .init(service: r.service.key, port: port.name ?? "\(port.port)")
            }
        }
        do {
            let st = try lb.sync(desired)
            if st.written + st.deleted > 0 {
                logger.debug("load balancer synced", metadata: ["written": "\(st.written)", "deleted": "\(st.deleted)", "frontends": "\(desired.count)"])
            }
        } catch {
            throw MeshError(.datapath, "writing the load balancer's maps failed: \(error)")
        }
        names.set(frontends: frontendNames,
                  endpoints: Dictionary(eps.map { (UInt32($0.id), $0.name) } + remoteEndpoints.map { (Self.remoteBackendID($0), "\($0.node)/\($0.name)") },
                                        uniquingKeysWith: { a, _ in a }),
                  cgroups: Dictionary(eps.compactMap { ep in Cgroup2.id(ep.cgroup).map { ($0, ep.name) } }, uniquingKeysWith: { a, _ in a }),
                  readiness: Dictionary(eps.filter { $0.readiness != nil }.map { ($0.name, isReady($0)) }, uniquingKeysWith: { a, _ in a }),
                  serviceBackends: services.values.map { r in
                      (r.service.key, eps.filter { r.service.selects($0.labels) }.map { isReady($0) })
                  })
        dns?.publish(services.values.map { (name: "\($0.service.name).\($0.service.namespace).svc.\(NodeDNS.domain)", address: $0.clusterIP) })
    }

    /// Recomputes the routed frontends and the gateway's ports, hands them to the proxy
    /// when they changed, and returns the frontends' `vip:port`s (none while the proxy is off).
    private func routeTable(_ eps: [Endpoint]) -> Set<String> {
        let ordered = routes.values.sorted { ($0.id, $0.route.key) < ($1.id, $1.route.key) }.map(\.route)
        var frontends: [String: RouteTable.ServiceFrontends] = [:]
        for r in services.values {
            frontends[r.service.key] = .init(key: r.service.key, clusterIP: r.clusterIP,
                                             tcpPorts: r.service.ports.filter { $0.protocolNumber == 6 }.map(\.port))
        }
        let backends = { (key: String, number: UInt16) -> [ProxyBackendEndpoint]? in
            guard let svc = self.services[key]?.service,
                  let port = svc.ports.first(where: { $0.port == number && $0.protocolNumber == 6 }) else { return nil }
            return eps.filter { svc.selects($0.labels) && self.isReady($0) }.compactMap { ep in
                Self.targetPort(port, of: ep).map { ProxyBackendEndpoint(ip: ep.ipv4, port: $0, name: "\(ep.labels.namespace)/\(ep.name)") }
            }
        }
        let (table, problems) = RouteTable.build(routes: ordered, services: frontends, backends: backends)
        let docs = gatewayDocs.values.sorted { ($0.id, $0.doc.storeKey) < ($1.id, $1.doc.storeKey) }.map(\.doc)
        let gateways = GatewayTable.build(
            gateways: docs.compactMap { if case .gateway(let g) = $0 { g } else { nil } }, httpRoutes: ordered,
            tlsRoutes: docs.compactMap { if case .tlsRoute(let r) = $0 { r } else { nil } },
            certificate: { GatewayCertificates.check($0, directory: self.settings.gatewayCertificates) }, backends: backends)
        var byRoute: [String: [String]] = [:]
        for t in table { for key in t.routes { byRoute[key, default: []].append("\(t.vip):\(t.port)") } }
        for (key, listeners) in gateways.attached where routes[key] != nil { byRoute[key, default: []] += listeners.map { "gateway \($0)" } }
        var problemsNow = problems
        for (key, list) in gateways.routeProblems where routes[key] != nil { problemsNow[key, default: []] += list }
        let proxyOn = settings.proxy != nil
        if !proxyOn {
            for key in routes.keys { problemsNow[key, default: []].append("not programmed: the L7 proxy is off (proxy: on)") }
        }
        if problemsNow != routeProblems {
            for (key, list) in problemsNow where routeProblems[key] != list {
                logger.warning("HTTPRoute not wholly in force", metadata: ["route": "\(key)", "problems": "\(list.joined(separator: "; "))"])
            }
        }
        for (key, list) in gateways.gatewayProblems where gatewayTable.gatewayProblems[key] != list {
            logger.warning("Gateway not wholly in force", metadata: ["gateway": "\(key)", "problems": "\(list.joined(separator: "; "))"])
        }
        routeProblems = problemsNow
        gatewayTable = gateways
        if !proxyOn {
            for key in gatewayDocs.keys where key.hasPrefix("Gateway:") {
                let k = String(key.dropFirst("Gateway:".count))
                gatewayTable.gatewayProblems[k, default: []].append("not programmed: the L7 proxy is off (proxy: on)")
            }
            gatewayTable.ports = []
        }
        guard proxyOn else {
            routeFrontends = [:]
            return []
        }
        routeFrontends = byRoute
        let routing = ProxyRouting(routes: table, gateways: gatewayTable.ports)
        if routing != lastRoutes {
            lastRoutes = routing
            onRoutes?(routing)
            logger.info("routes programmed", metadata: ["frontends": "\(table.count)", "routes": "\(routes.count)",
                                                        "gatewayPorts": "\(gatewayTable.ports.count)"])
        }
        return Set(table.map { "\($0.vip):\($0.port)" })
    }

    public func gatewayViews() -> [GatewayView] {
        gatewayDocs.values.compactMap { r -> GatewayView? in
            guard case .gateway(let g) = r.doc else { return nil }
            return gatewayView(g, appliedAt: r.appliedAt)
        }.sorted { $0.gateway.key < $1.gateway.key }
    }

    public func gatewayView(_ key: String) throws(MeshError) -> GatewayView {
        guard let r = gatewayDocs["Gateway:\(key)"], case .gateway(let g) = r.doc else {
            throw MeshError(.notFound, "Gateway \"\(key)\" does not exist", hint: "meshctl get gateways lists them")
        }
        return gatewayView(g, appliedAt: r.appliedAt)
    }

    private func gatewayView(_ g: Gateway, appliedAt: Date) -> GatewayView {
        var attached: [String: [String]] = [:]
        for (route, listeners) in gatewayTable.attached {
            for l in listeners where l.hasPrefix(g.key + "/") { attached[String(l.dropFirst(g.key.count + 1)), default: []].append(route) }
        }
        return GatewayView(gateway: g, routes: attached.mapValues { $0.sorted() }, problems: gatewayTable.gatewayProblems[g.key] ?? [],
                           appliedAt: appliedAt)
    }

    public func tlsRouteViews() -> [TLSRouteView] {
        gatewayDocs.values.compactMap { r -> TLSRouteView? in
            guard case .tlsRoute(let t) = r.doc else { return nil }
            return TLSRouteView(route: t, listeners: gatewayTable.attached[t.key] ?? [], problems: gatewayTable.routeProblems[t.key] ?? [],
                                appliedAt: r.appliedAt)
        }.sorted { $0.route.key < $1.route.key }
    }

    public func tlsRouteView(_ key: String) throws(MeshError) -> TLSRouteView {
        guard let v = tlsRouteViews().first(where: { $0.route.key == key }) else {
            throw MeshError(.notFound, "TLSRoute \"\(key)\" does not exist", hint: "meshctl get tlsroutes lists them")
        }
        return v
    }

    public func routeViews() -> [HTTPRouteView] {
        routes.values.sorted { $0.route.key < $1.route.key }.map(routeView)
    }

    public func routeView(_ key: String) throws(MeshError) -> HTTPRouteView {
        guard let r = routes[key] else {
            throw MeshError(.notFound, "HTTPRoute \"\(key)\" does not exist", hint: "meshctl get httproutes lists them")
        }
        return routeView(r)
    }

    private func routeView(_ r: RouteRecord) -> HTTPRouteView {
        HTTPRouteView(route: r.route, frontends: routeFrontends[r.route.key] ?? [], problems: routeProblems[r.route.key] ?? [],
                      appliedAt: r.appliedAt)
    }

    // MARK: Reading

    public func views() throws(MeshError) -> [ServiceView] {
        let eps = try store.endpoints()
        return services.values.sorted { $0.service.key < $1.service.key }.map { view($0, eps) }
    }

    public func view(_ key: String) throws(MeshError) -> ServiceView {
        guard let r = services[key] else {
            throw MeshError(.notFound, "service \"\(key)\" does not exist", hint: "meshctl get services lists them")
        }
        return view(r, try store.endpoints())
    }

    private func view(_ r: Record, _ eps: [Endpoint]) -> ServiceView {
        let backends = eps.filter { r.service.selects($0.labels) }.map { ep in
            var ports: [String: Int] = [:]
            for p in r.service.ports { if let t = Self.targetPort(p, of: ep) { ports[p.name ?? "\(p.port)"] = Int(t) } }
            return ServiceView.Backend(endpoint: ep.name, address: ep.ipv4, state: isReady(ep) ? "ready" : "unready", ports: ports)
        } + remoteEndpoints.filter { r.service.selects($0.labels) }.map { ep in
            var ports: [String: Int] = [:]
            for p in r.service.ports { if let t = Self.targetPort(p, ports: ep.ports) { ports[p.name ?? "\(p.port)"] = Int(t) } }
            return ServiceView.Backend(endpoint: "\(ep.node)/\(ep.name)", address: ep.ip, state: ep.ready ? "ready" : "unready", ports: ports)
        }
        return ServiceView(service: r.service, clusterIP: r.clusterIP, backends: backends, appliedAt: r.appliedAt)
    }

    public func namespaceViews() throws(MeshError) -> [NamespaceView] {
        let eps = try store.endpoints()
        let named = Set(namespaces.keys).union(eps.map { $0.labels.namespace }).union(services.values.map(\.service.namespace))
        return named.sorted().map { name in
            NamespaceView(name: name, labels: namespaces[name]?.namespace.labels ?? Labels(),
                          endpoints: eps.filter { $0.labels.namespace == name }.map(\.name),
                          services: services.values.filter { $0.service.namespace == name }.map(\.service.name).sorted())
        }
    }

    public func namespaceView(_ name: String) throws(MeshError) -> NamespaceView {
        guard let v = try namespaceViews().first(where: { $0.name == name }) else {
            throw MeshError(.notFound, "namespace \"\(name)\" does not exist", hint: "meshctl get namespaces lists them")
        }
        return v
    }

    /// What the kernel holds, named.
    public nonisolated func kernelRows() throws(MeshError) -> [BPFLBRow] {
        let entries: [ServiceLB.Entry]
        do { entries = try lb.kernelEntries() } catch { throw MeshError(.datapath, "reading the load balancer's maps failed: \(error)") }
        return entries.map { e in
            let n = names.frontend(e.frontend.id)
            return BPFLBRow(frontend: Int(e.frontend.id), service: n.map { "\($0.service):\($0.port)" } ?? "?",
                            vip: "\(IPv4Address(e.frontend.vip)):\(e.frontend.port)", proto: ProtocolName.name(e.frontend.proto),
                            affinitySeconds: e.frontend.affinityTimeout.map(Int.init),
                            backends: e.backends.map { "\(names.endpoint($0.id)) \(IPv4Address($0.address)):\($0.port)" },
                            routed: e.frontend.routed)
        }
    }

    /// Names for kernel numbers and readiness, behind a lock.
    public final class Names: @unchecked Sendable {
        public struct FrontendName: Sendable { public var service: String; public var port: String }
        private let lock = NSLock()
        private var frontends: [UInt32: FrontendName] = [:]
        private var endpoints: [UInt32: String] = [:]
        private var cgroups: [UInt64: String] = [:]
        private var readiness: [String: Bool] = [:]
        private var serviceBackends: [(String, [Bool])] = []

        func set(frontends: [UInt32: FrontendName], endpoints: [UInt32: String], cgroups: [UInt64: String],
                 readiness: [String: Bool], serviceBackends: [(String, [Bool])]) {
            lock.withLock {
                self.frontends = frontends
                self.endpoints = endpoints
                self.cgroups = cgroups
                self.readiness = readiness
                self.serviceBackends = serviceBackends
            }
        }

        public func frontend(_ id: UInt32) -> FrontendName? { lock.withLock { frontends[id] } }
        public func endpoint(_ id: UInt32) -> String { lock.withLock { endpoints[id] ?? "endpoint \(id)" } }
        public func endpoint(cgroup: UInt64) -> String? { lock.withLock { cgroups[cgroup] } }
        /// Endpoints with a readiness probe, and whether each is ready now.
        public var readinessByEndpoint: [String: Bool] { lock.withLock { readiness } }
        /// Per service, its selected endpoints' readiness.
        public var backendsByService: [(String, [Bool])] { lock.withLock { serviceBackends } }
    }
}
