import Datapath
import Foundation
import Logging
import MeshABI
import MeshModel
import ServiceLifecycle

/// `meshd`'s core: brings the node up in order, then runs its services until SIGTERM.
///
/// Shutting down (SIGTERM) or dying (SIGKILL) leaves the BPF programs attached and the
/// maps pinned, so traffic and counters carry on; the next start adopts them.
public enum Daemon {
    public static func run(config: NodeConfig, logger: Logger) async throws {
        guard geteuid() == 0 else {
            throw MeshError(.permissionDenied, "meshd must run as root: it loads BPF programs and creates network namespaces")
        }
        var config = config
        if config.podCIDR == nil, let range = try config.clusterPodRange(), let cluster = try config.resolveCluster() {
            config.podCIDR = try await PodCIDRAllocation.obtain(range: range.range, size: range.size, node: config.nodeName,
                                                                stateDir: config.stateDir, cluster: cluster, logger: logger).description
        }
        let settings = try config.resolve(cgroup2Root: try Cgroup2.mountPoint())
        // A congestion control this kernel lacks stops the start before anything changes.
        if let cc = settings.localCongestionControl { _ = try RedirectControl.checkedCC(cc) }
        let startedAt = Date()
        var logger = logger
        logger[metadataKey: "node"] = "\(settings.nodeName)"

        let store = try Store(directory: settings.stateDir)
        let lock = try lockStateDir(settings.stateDir)
        defer { close(lock) }
        try Cgroup2.create(settings.cgroup)
        let datapath = try MeshDatapath.load(settings: settings, nodeID: nodeID(settings.nodeName))
        try prepareNodeNetwork(settings, logger: logger)

        let redirect: SocketRedirect
        do { redirect = try SocketRedirect(pinDir: settings.bpffs, cgroup: settings.cgroup, nodeID: nodeID(settings.nodeName), sizes: settings.mapSizes) } catch {
            throw MeshError(.datapath, "loading socket redirection failed: \(error)")
        }
        let lb: ServiceLB
        do { lb = try ServiceLB(pinDir: settings.bpffs, cgroup: settings.cgroup, nodeID: nodeID(settings.nodeName), sizes: settings.mapSizes) } catch {
            throw MeshError(.datapath, "loading the service load balancer failed: \(error)")
        }
        // An upgrade that changed a map's layout gets that map anew, empty; the
        // reconcile below writes endpoints, policy and services back from the store.
        for replaced in datapath.replacedMaps + redirect.replacedMaps + lb.replacedMaps {
            logger.warning("pinned BPF map had another layout (a meshd of another version made it): replaced with an empty one",
                           metadata: ["map": "\(replaced)"])
        }
        let redirectControl = try RedirectControl(redirect: redirect, store: store, settings: settings, logger: logger)
        // Configured first: the programs never see an unwritten config map.
        do { try redirect.attach() } catch { throw MeshError(.datapath, "attaching socket redirection failed: \(error)") }
        // A cluster member allocates label sets' identities in etcd (one number on every
        // node), and CIDRs' in its own store; a node on its own, everything in its store.
        let cluster = settings.cluster.map { ClusterAgent(settings: $0, node: settings, store: store, logger: logger) }
        let localIdentities = StoreIdentityAllocator(store: store, grace: settings.identityGrace)
        let identities: any IdentityAllocator = if let cluster {
            await cluster.makeAllocator(local: localIdentities, grace: settings.identityGrace)
        } else {
            localIdentities
        }
        let policy = try PolicyEngine(store: store, datapath: datapath, identities: identities, logger: logger)
        let dns: NodeDNS? = settings.dns ? NodeDNS(settings: settings, logger: logger) : nil
        try dns?.prepare()
        let services = try ServiceManager(settings: settings, store: store, lb: lb, policy: policy, dns: dns, logger: logger)
        let manager = EndpointManager(settings: settings, store: store, datapath: datapath, policy: policy, services: services,
                                      dns: dns, logger: logger)
        // Workload certificates: the node's CA (its root, or the operator's) and an SVID
        // per endpoint, issued as endpoints come and rotated at half-life.
        let ca = try CertificateAuthority(settings: settings.trust, stateDir: settings.stateDir, nodeName: settings.nodeName)
        let workloads = try WorkloadIdentities(ca: ca, store: store, stateDir: settings.stateDir, nodeName: settings.nodeName, logger: logger)
        await services.addOnLocalChange { Task { await workloads.sync() } }
        if let cluster, settings.proxy != nil {
            // Between nodes, flows that must prove their peer travel in the proxies' mTLS
            // tunnels: the proxy needs the certificate files, and the other nodes need to
            // know which of this node's endpoints take connections only that way.
            await policy.setTunnelSetup(PolicyEngine.TunnelSetup(
                trustDomain: settings.trust.trustDomain, bundlePath: workloads.bundlePath,
                nodeCertificatePath: workloads.nodeCertificatePath, nodeKeyPath: workloads.nodeKeyPath,
                nodeName: settings.nodeName, port: settings.trust.tunnelPort,
                certificatePath: { workloads.certificatePath($0) }, keyPath: { workloads.keyPath($0) },
                strict: settings.trust.mtlsStrict))
            await policy.setOnTunnelledChange { Task { await cluster.localEndpointsChanged() } }
        }
        if let cluster {
            // The other nodes' endpoints are peers from the first publish on: a restart
            // never drops them from the kernel's view, not even for one revision.
            await cluster.attach(policy: policy, services: services)
            try await cluster.join()
            await services.addOnLocalChange { Task { await cluster.localEndpointsChanged() } }
            if settings.trust.rootCertFile == nil { await cluster.establishTrust(ca: ca, workloads: workloads) }
        }
        try await manager.reconcile()
        // After the reconcile wrote the backends: services never see a half-built node.
        do { try lb.attach() } catch { throw MeshError(.datapath, "attaching the service load balancer failed: \(error)") }

        try prepareSocket(settings.apiSocket, access: settings.apiAccess)
        let metrics = MetricsCollector(datapath: datapath, manager: manager, policy: policy, redirect: redirect, lb: lb,
                                       services: services.names, nodeName: settings.nodeName)
        await policy.setOnEnforced { metrics.observeEnforced($0) }
        try? datapath.setOptionalEvents(verdicts: false, loadBalancing: false)
        let hubLogger = logger
        let proxy = settings.proxy.map {
            ProxySupervisor(binary: $0.binary, controlPath: settings.stateDir + "/proxy.sock", port: $0.port,
                            logPath: settings.stateDir + "/mesh-proxy.log", logger: logger)
        }
        let hub = EventHub { interest, on in
            do {
                switch interest {
                case .verdicts: try datapath.setOptionalEvents(verdicts: on, loadBalancing: nil)
                case .loadBalancing: try datapath.setOptionalEvents(verdicts: nil, loadBalancing: on)
                case .l7: proxy?.setEvents(on)
                }
            } catch {
                hubLogger.warning("cannot switch optional datapath events", metadata: ["events": "\(interest)", "error": "\(error)"])
            }
        }
        var running: [any Service] = [
            APIServer.make(settings: settings, manager: manager, policy: policy, datapath: datapath, redirect: redirectControl,
                           lb: lb, services: services, store: store, hub: hub, proxy: proxy, cluster: cluster, workloads: workloads,
                           startedAt: startedAt, logger: logger),
            MetricsServer.make(settings: settings, metrics: metrics, proxy: proxy, cluster: cluster, workloads: workloads, logger: logger),
            DatapathEventService(datapath: datapath, metrics: metrics, hub: hub, logger: logger),
        ]
        if let proxy {
            proxy.onEvent = { hub.publish(.l7($0)) }
            await workloads.setOnChange { proxy.certificatesChanged() }
            await policy.setOnProxyConfig { proxy.update($0) }
            await services.setOnRoutes { proxy.updateRoutes($0) }
            running.append(proxy)
        }
        if let dns { running.append(dns) }
        if let cluster { running.append(cluster) }
        running.append(workloads)
        logger.info("meshd ready", metadata: [
            "api": "\(settings.apiSocket)", "metrics": "http://\(settings.metricsHost):\(settings.metricsPort)/metrics",
            "pod_cidr": "\(settings.podCIDR)", "service_cidr": "\(settings.serviceCIDR)", "dns": "\(settings.dns ? "on" : "off")", "bpffs": "\(settings.bpffs)", "cgroup": "\(settings.cgroup)",
        ])
        let group = ServiceGroup(configuration: .init(services: running.map { .init(service: $0) },
                                                      gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        defer { unlink(settings.apiSocket) }
        try await group.run()
        logger.info("meshd stopped; the datapath stays attached and pinned")
    }

    /// One meshd per state folder: a second would fight the first over the same maps and
    /// namespaces. The lock is an flock, so a killed meshd never leaves it held.
    static func lockStateDir(_ dir: String) throws(MeshError) -> Int32 {
        let path = dir + "/meshd.lock"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw MeshError(.internalError, "cannot open \(path): \(String(cString: strerror(errno)))") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let holder = (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
            close(fd)
            throw MeshError(.unavailable, "another meshd (pid \(holder)) is running with state dir \(dir)",
                            hint: "stop it first, or give this one its own --state-dir and --node-name")
        }
        ftruncate(fd, 0)
        let pid = "\(getpid())\n"
        _ = pid.withCString { write(fd, $0, strlen($0)) }
        return fd
    }

    /// A stable 32-bit id for the node name (FNV-1a), stamped into datapath events.
    static func nodeID(_ name: String) -> UInt32 {
        FNV1a.hash32(name)
    }

    /// Forwarding on, and `unreachable` routes for the pod and service CIDRs: the /32
    /// routes of live endpoints win, and nothing addressed to the rest of the pod CIDR, or
    /// to a VIP from a process the load balancer does not see (outside every endpoint's
    /// cgroup), can leak to an uplink.
    static func prepareNodeNetwork(_ s: NodeSettings, logger: Logger) throws(MeshError) {
        try Netlink.setUp("lo")
        try Netlink.sysctl("net/ipv4/ip_forward", "1")
        for cidr in [s.podCIDR, s.serviceCIDR] {
            try Netlink.addRoute(cidr, device: nil, unreachable: true, replace: true)
            logger.info("installed unreachable route", metadata: ["cidr": "\(cidr)"])
        }
        if s.proxy != nil {
            // What the datapath marks for the proxy is delivered here (mesh_abi.h).
            try Netlink.routeMarkedLocally(mark: UInt32(MESH_MARK_TO_PROXY), mask: UInt32(MESH_MARK_MASK),
                                           table: UInt32(MESH_PROXY_ROUTE_TABLE), priority: UInt32(MESH_PROXY_RULE_PRIORITY))
        }
    }

    /// A missing folder for the API socket is made root's, 0700 (0750 and the API group's
    /// with --api-group); a socket left by a killed meshd is replaced.
    static func prepareSocket(_ path: String, access: APIAccess) throws(MeshError) {
        let dir = (path as NSString).deletingLastPathComponent
        if !FileManager.default.fileExists(atPath: dir) {
            do {
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                                        attributes: [.posixPermissions: access.group == nil ? 0o700 : 0o750])
            } catch {
                throw MeshError(.internalError, "cannot create the API socket folder \(dir): \(error.localizedDescription)")
            }
            if let group = access.group { chown(dir, 0, group.gid) }
        }
        unlink(path)
    }

    /// The socket itself: 0660, root's and the API group's (root's own group without one),
    /// whatever the umask was. Returns what failed, if anything.
    static func lockDownSocket(_ path: String, access: APIAccess) -> String? {
        // Never through a symlink someone put in the socket's place: chmod has no
        // no-follow form on Linux, so check what is there, and chown with lchown.
        var st = stat()
        guard lstat(path, &st) == 0, st.st_mode & S_IFMT == S_IFSOCK else { return "\(path) is not the API socket" }
        if lchown(path, 0, access.group?.gid ?? 0) != 0 { return "chown \(path): \(String(cString: strerror(errno)))" }
        if chmod(path, 0o660) != 0 { return "chmod \(path): \(String(cString: strerror(errno)))" }
        return nil
    }
}
