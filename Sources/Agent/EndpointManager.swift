import Datapath
import Foundation
import Logging
import MeshModel

/// Owns the node's endpoints: desired state in the store, plumbing in the kernel, entries
/// in the BPF maps. One actor, so creations and deletions never interleave.
///
/// Every change is all-or-nothing: a failed creation removes what it made and leaves no
/// row; the row is written in the same step that reserves its id and address.
public actor EndpointManager {
    let settings: NodeSettings
    let store: Store
    let datapath: MeshDatapath
    let policy: PolicyEngine
    /// Told after every change, to re-register backends (and probe new endpoints).
    let services: ServiceManager?
    let dns: NodeDNS?
    let logger: Logger

    public init(settings: NodeSettings, store: Store, datapath: MeshDatapath, policy: PolicyEngine,
                services: ServiceManager? = nil, dns: NodeDNS? = nil, logger: Logger) {
        self.settings = settings
        self.store = store
        self.datapath = datapath
        self.policy = policy
        self.services = services
        self.dns = dns
        self.logger = logger
    }

    /// Plumbing spawns processes and waits; map updates are system calls: all of it runs on
    /// the control thread, never on Swift's cooperative pool.
    public nonisolated var unownedExecutor: UnownedSerialExecutor { ControlThread.executor.asUnownedSerialExecutor() }

    /// From the store, without waiting for a creation or deletion in progress.
    public nonisolated func list() throws(MeshError) -> [Endpoint] { try store.endpoints() }

    public nonisolated func get(_ name: String) throws(MeshError) -> Endpoint {
        try EndpointName.validate(name)
        guard let ep = try store.endpoint(named: name) else {
            throw MeshError(.notFound, "endpoint \"\(name)\" does not exist", hint: "meshctl endpoint list shows the endpoints")
        }
        return ep
    }

    public func create(_ request: EndpointCreateRequest) async throws(MeshError) -> Endpoint {
        try EndpointName.validate(request.name)
        let labels = try Labels(request.labels)
        let serviceAccount = request.serviceAccount ?? Endpoint.defaultServiceAccount
        // A DNS label, as Kubernetes names service accounts: it becomes a SPIFFE ID's last part.
        guard (1...63).contains(serviceAccount.count), serviceAccount.first != "-", serviceAccount.last != "-",
              serviceAccount.allSatisfy({ $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "-") }) else {
            throw MeshError.invalid("service account \"\(serviceAccount)\" must be 1-63 lowercase letters, digits and '-', not starting or ending with '-'")
        }
        let ports = request.ports ?? [:]
        for name in ports.keys { try EndpointPorts.validateName(name, what: "port") }
        if ports.values.contains(0) { throw MeshError.invalid("port 0 is not a port number (1-65535)") }
        if let probe = request.readiness, UInt16(probe.port) == nil, ports[probe.port] == nil {
            throw MeshError.invalid("readiness probe \(probe): the endpoint has no port named \"\(probe.port)\"",
                                    hint: ports.isEmpty ? "give it with --ports \(probe.port)=8080, or probe a port number" : "its ports: \(ports.keys.sorted().joined(separator: ", "))")
        }
        if try store.endpoint(named: request.name) != nil {
            throw MeshError(.alreadyExists, "endpoint \"\(request.name)\" already exists")
        }
        let settings = self.settings
        let existing = try store.endpoints()
        let used = Set(existing.map(\.ipv4))
        guard let ip = settings.podCIDR.firstFree(excluding: used) else {
            throw MeshError(.exhausted, "pod CIDR \(settings.podCIDR) is exhausted: all \(settings.podCIDR.assignableCount) addresses are in use",
                            hint: "delete an endpoint or restart meshd with a larger --pod-cidr")
        }
        guard existing.count < MeshDatapath.maxEndpoints else {
            throw MeshError(.exhausted, "the node already has \(existing.count) endpoints, the most its BPF maps hold")
        }
        // The row reserves the id and address; plumbing follows, and the policy revision
        // that knows the endpoint is published before its programs attach, so its first
        // packet already meets its policy. Any failure undoes all of it.
        let ep = try store.insertEndpoint { (id: Int) throws(MeshError) -> Endpoint in
            Endpoint(id: id, name: request.name, labels: labels, ipv4: ip,
                     netns: settings.netnsName(request.name), interface: settings.interfaceName(id),
                     cgroup: settings.cgroupPath(request.name), createdAt: Date(), ports: ports, readiness: request.readiness,
                     serviceAccount: serviceAccount)
        }
        do {
            try Plumbing.create(ep)
        } catch {
            // Plumbing removed what it made; anything else under these names is not ours.
            _ = try? store.deleteEndpoint(named: ep.name)
            throw error
        }
        do {
            try Cgroup2.create(ep.cgroup)
            try await policy.publish()
            try datapath.install(ep)
        } catch {
            teardown(ep)
            _ = try? store.deleteEndpoint(named: ep.name)
            _ = try? await policy.publish()
            throw error
        }
        dns?.configure(ep)
        await services?.endpointsChanged()
        logger.info("endpoint created", metadata: ["endpoint": "\(ep.name)", "id": "\(ep.id)", "ipv4": "\(ep.ipv4)", "labels": "\(ep.labels)"])
        return ep
    }

    /// Changes an endpoint's labels at run time: selection and policy follow in the next
    /// revision, published before this returns; the endpoint's plumbing and flows stay.
    /// If the publish fails the labels go back, and the error says why.
    public func relabel(_ name: String, _ change: EndpointLabelRequest) async throws(MeshError) -> Endpoint {
        let ep = try get(name)
        let labels = try ep.labels.changed(set: change.set, remove: change.remove)
        guard labels != ep.labels else { return ep }
        try store.setLabels(labels, ofEndpoint: name)
        do {
            try await policy.publish()
        } catch {
            // Undo, unless a relabel that came in while this one waited changed them again.
            try? store.setLabels(ep.labels, ofEndpoint: name, ifCurrently: labels)
            throw error
        }
        let relabelled = try get(name)
        dns?.configure(relabelled)
        await services?.endpointsChanged()
        logger.info("endpoint relabelled", metadata: ["endpoint": "\(name)", "from": "\(ep.labels)", "to": "\(labels)"])
        return relabelled
    }

    public func delete(_ name: String) async throws(MeshError) {
        let ep = try get(name)
        try store.deleteEndpoint(named: name)
        // Out of every service first: no new connection may pick it while it goes.
        await services?.endpointsChanged()
        teardown(ep)
        try await policy.publish()
        logger.info("endpoint deleted", metadata: ["endpoint": "\(name)", "id": "\(ep.id)"])
    }

    /// Brings the kernel in line with the store after a (re)start: re-creates any missing
    /// plumbing, re-registers and re-attaches every endpoint (atomic replace, so flows
    /// continue), and removes leftovers that no stored endpoint owns.
    public func reconcile() async throws(MeshError) {
        let eps = try store.endpoints()
        // Policy first: a re-created endpoint must meet its policy with its first packet.
        try await policy.publish()
        var ifindexes = Set<UInt32>()
        for ep in eps {
            if !Plumbing.isIntact(ep) {
                logger.warning("endpoint plumbing missing, re-creating", metadata: ["endpoint": "\(ep.name)"])
                Plumbing.remove(ep)
                try plumb(ep)
            } else {
                try Cgroup2.create(ep.cgroup)
                try datapath.install(ep)
            }
            ifindexes.insert(UInt32(Plumbing.ifindex(ep.interface)))
        }
        let names = Set(eps.map(\.netns)), interfaces = Set(eps.map(\.interface))
        for ns in Plumbing.nodeNetns(prefix: settings.netnsPrefix) where !names.contains(ns) {
            logger.warning("removing leftover netns", metadata: ["netns": "\(ns)"])
            do { try Netlink.deleteNetns(ns) } catch {
                logger.warning("cannot remove leftover netns", metadata: ["netns": "\(ns)", "error": "\(error.message)"])
            }
        }
        for ifname in Plumbing.nodeInterfaces(prefix: settings.interfacePrefix) where !interfaces.contains(ifname) {
            logger.warning("removing leftover interface", metadata: ["interface": "\(ifname)"])
            do { try Netlink.deleteLink(ifname) } catch {
                logger.warning("cannot remove leftover interface", metadata: ["interface": "\(ifname)", "error": "\(error.message)"])
            }
        }
        datapath.prune(keepIfindexes: ifindexes, keepEndpointIDs: Set(eps.map { UInt32($0.id) }))
        for ep in eps { dns?.configure(ep) }
        await services?.endpointsChanged()
        logger.info("reconciled endpoints", metadata: ["count": "\(eps.count)"])
    }

    private func plumb(_ ep: Endpoint) throws(MeshError) {
        try Plumbing.create(ep)
        try Cgroup2.create(ep.cgroup)
        try datapath.install(ep)
    }

    private func teardown(_ ep: Endpoint) {
        let ifindex = Plumbing.ifindex(ep.interface)
        Cgroup2.remove(ep.cgroup)
        datapath.uninstall(endpointID: UInt32(ep.id), ipv4NetworkOrder: ep.ipv4.networkOrder, ifindex: ifindex > 0 ? ifindex : nil)
        datapath.conntrackForget(endpointID: UInt32(ep.id))
        Plumbing.remove(ep)
        NodeDNS.unconfigure(netns: ep.netns)
    }
}
