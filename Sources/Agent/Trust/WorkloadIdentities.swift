import Crypto
import Foundation
import Logging
import MeshModel
import NIOConcurrencyHelpers
import ServiceLifecycle
import X509

/// Every local endpoint's X.509 SVID: `spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/ACCOUNT`,
/// issued by the node's intermediate, kept as `<state>/trust/svids/<endpoint>.crt` (the
/// certificate, then the intermediate) and `.key` (`0600`), and rotated once half its
/// life has passed, so a certificate in use always has the other half left. A restart
/// keeps certificates that are still good.
///
/// The node itself has one too, `spiffe://TRUST-DOMAIN/swiftmesh/node/NODE`, in
/// `<state>/trust/node.crt` and `node.key`: the proxy's mTLS tunnel listener presents it.
/// `<state>/trust/bundle.pem` holds the roots peers' chains must end at.
public actor WorkloadIdentities: Service {
    let ca: CertificateAuthority
    let store: Store
    let nodeName: String
    let logger: Logger
    nonisolated let dir: String

    struct Held {
        var spiffeID: String
        var certificate: Certificate
        var rotations: Int
        /// The CA's generation it was issued under: a new intermediate or root re-issues it.
        var generation: Int
        /// Half its life before it expires: from then on it is replaced.
        var rotateAt: Date

        init(spiffeID: String, certificate: Certificate, rotations: Int, generation: Int, lifetime: TimeInterval) {
            self.spiffeID = spiffeID
            self.certificate = certificate
            self.rotations = rotations
            self.generation = generation
            rotateAt = certificate.notValidAfter.addingTimeInterval(-lifetime / 2)
        }
    }
    private var held: [String: Held] = [:]
    private var nodeHeld: Held?
    private var bundle: String?
    /// Roots trusted besides the node's own: in a cluster, the cluster's root and, while a
    /// root roll runs, the next or the previous one.
    private var extraRoots: [Certificate] = []
    nonisolated let counters = NIOLockedValueBox((rotations: 0, failures: 0))
    public nonisolated let nodeCertificatePath: String
    public nonisolated let nodeKeyPath: String
    public nonisolated let bundlePath: String
    /// Called after a sync that wrote a certificate or the bundle, so that the proxy's new
    /// TLS connections read the files again.
    private var onChange: (@Sendable () -> Void)?
    public func setOnChange(_ f: @escaping @Sendable () -> Void) { onChange = f }

    public init(ca: CertificateAuthority, store: Store, stateDir: String, nodeName: String, logger: Logger) throws(MeshError) {
        self.ca = ca
        self.store = store
        self.nodeName = nodeName
        self.logger = logger
        dir = stateDir + "/trust/svids"
        nodeCertificatePath = stateDir + "/trust/node.crt"
        nodeKeyPath = stateDir + "/trust/node.key"
        bundlePath = stateDir + "/trust/bundle.pem"
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw MeshError(.internalError, "cannot create \(dir): \(error.localizedDescription)")
        }
    }

    var lifetime: TimeInterval { ca.settings.svidTTL }

    public nonisolated func certificatePath(_ endpoint: String) -> String { "\(dir)/\(endpoint).crt" }
    public nonisolated func keyPath(_ endpoint: String) -> String { "\(dir)/\(endpoint).key" }

    /// Issues, rotates and removes certificates so that every endpoint has a good one.
    public func sync() {
        let endpoints: [Endpoint]
        do { endpoints = try store.endpoints() } catch {
            logger.error("cannot list endpoints for their certificates", metadata: ["error": "\(error.message)"])
            return
        }
        do { try ca.renewIfDue(node: nodeName) } catch {
            logger.error("cannot renew the node's intermediate certificate", metadata: ["error": "\(error.message)"])
        }
        let intermediate = ca.currentIntermediate, generation = ca.generation
        var changed = writeBundle()
        // Every endpoint change comes here (a thousand endpoints, one relabelled): a
        // certificate that is good needs no more than this look.
        let now = Date()
        for ep in endpoints {
            let id = ca.spiffeID(namespace: ep.labels.namespace, serviceAccount: ep.serviceAccount)
            if let g = goodUntil[ep.name], g.id == id, g.generation == generation, now < g.rotateAt { continue }
            changed = keep(&held[ep.name], id: id, name: ep.name, cert: certificatePath(ep.name), key: keyPath(ep.name),
                           intermediate: intermediate, generation: generation) || changed
            goodUntil[ep.name] = held[ep.name].map { ($0.spiffeID, $0.generation, $0.rotateAt) }
        }
        let nodeID = ProxyTunnelConfig.nodeSPIFFEID(trustDomain: ca.trustDomain, node: nodeName)
        changed = keep(&nodeHeld, id: nodeID, name: "node \(nodeName)", cert: nodeCertificatePath, key: nodeKeyPath,
                       intermediate: intermediate, generation: generation) || changed
        // Endpoints gone: their certificates and keys go (also those a run before this one
        // left, which the first sync's look at the folder finds).
        let names = Set(endpoints.map(\.name))
        let gone = held.keys.filter { !names.contains($0) }
        for name in gone {
            held[name] = nil
            goodUntil[name] = nil
        }
        if !gone.isEmpty || !folderChecked {
            for file in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
                let name = file.hasSuffix(".crt") || file.hasSuffix(".key") ? String(file.dropLast(4)) : file
                if !names.contains(name) { unlink("\(dir)/\(file)") }
            }
            folderChecked = true
        }
        if changed { onChange?() }
    }

    /// Whether the folder has been cleared of files no endpoint owns since this started.
    private var folderChecked = false
    /// Each held certificate's SPIFFE ID, CA generation and rotation time, apart (a Held
    /// is a whole certificate to copy, and a sync looks at every endpoint's): one that is
    /// still this identity's, from the intermediate in force (a new one is a new
    /// generation) and short of its half-life is kept without another look.
    private var goodUntil: [String: (id: String, generation: Int, rotateAt: Date)] = [:]

    /// Keeps one certificate good: the one held (or left by an earlier run) while it is
    /// this name's, from the current intermediate, with more than half its life left;
    /// otherwise a new one. Returns whether it wrote one.
    private func keep(_ h: inout Held?, id: String, name: String, cert: String, key: String, intermediate: Certificate,
                      generation: Int) -> Bool {
        if h == nil, let kept = load(cert: cert, key: key, id: id, intermediate: intermediate, generation: generation) { h = kept }
        if let h, h.spiffeID == id, h.generation == generation, h.certificate.issuer == intermediate.subject, Date() < h.rotateAt {
            return false
        }
        do {
            let issued = try ca.issueSVID(spiffeID: id, lifetime: lifetime)
            try CertificateAuthority.write(issued, cert: cert, key: key, chain: [intermediate])
            let rotated = h != nil
            h = Held(spiffeID: id, certificate: issued.certificate, rotations: (h?.rotations ?? 0) + (rotated ? 1 : 0), generation: generation,
                     lifetime: lifetime)
            if rotated { counters.withLockedValue { $0.rotations += 1 } }
            logger.info(rotated ? "workload certificate rotated" : "workload certificate issued",
                        metadata: ["endpoint": "\(name)", "spiffe_id": "\(id)", "not_after": "\(issued.certificate.notValidAfter)"])
            return true
        } catch {
            counters.withLockedValue { $0.failures += 1 }
            logger.error("cannot issue a workload certificate", metadata: ["endpoint": "\(name)", "error": "\(error.message)"])
            return false
        }
    }

    /// Trusts `roots` besides the node's own root from now on (the bundle is written, and
    /// the proxy told, before this returns). Returns the bundle's roots.
    @discardableResult
    public func setExtraRoots(_ roots: [Certificate]) -> [Certificate] {
        extraRoots = roots
        sync()
        return bundleRoots
    }

    /// The roots peers' chains may end at: the node's own, then the others it was given.
    public var bundleRoots: [Certificate] {
        var roots = [ca.root]
        for r in extraRoots where !roots.contains(r) { roots.append(r) }
        return roots
    }

    /// The trust bundle: the roots every chain of the cluster may end at. Returns whether
    /// it changed (a new cluster root adopted, a roll's root added or dropped).
    private func writeBundle() -> Bool {
        guard let pems = try? bundleRoots.map({ (c: Certificate) throws(MeshError) -> String in try CertificateAuthority.pem(c) }) else {
            return false
        }
        let pem = pems.joined(separator: "\n") + "\n"
        guard pem != bundle else { return false }
        do {
            try CertificateAuthority.writeFile(bundlePath, pem, mode: 0o644)
            bundle = pem
            return true
        } catch {
            logger.error("cannot write the trust bundle", metadata: ["path": "\(bundlePath)", "error": "\(error.message)"])
            return false
        }
    }

    /// A certificate left by an earlier run, if it is still this endpoint's and good.
    private func load(cert certPath: String, key keyPath: String, id: String, intermediate: Certificate, generation: Int) -> Held? {
        guard let cert = try? CertificateAuthority.readCertificate(certPath),
              let key = try? CertificateAuthority.readKey(keyPath),
              cert.publicKey == Certificate.PublicKey(key.publicKey), CertificateAuthority.signs(intermediate, cert),
              let san = try? cert.extensions.subjectAlternativeNames,
              san.contains(where: { if case .uniformResourceIdentifier(let u) = $0 { u == id } else { false } }) else { return nil }
        return Held(spiffeID: id, certificate: cert, rotations: 0, generation: generation, lifetime: lifetime)
    }

    public func run() async throws {
        // Often enough that a certificate is replaced close to its half-life: a tenth of
        // its life, between half a second and half a minute.
        let tick = min(max(lifetime / 10, 0.5), 30)
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await self.sync()
                try? await Task.sleep(for: .seconds(tick))
            }
        }
    }

    public func views() -> [SVIDView] {
        held.sorted { $0.key < $1.key }.map { name, h in
            SVIDView(endpoint: name, spiffeID: h.spiffeID, serial: "\(h.certificate.serialNumber)",
                     notBefore: h.certificate.notValidBefore, notAfter: h.certificate.notValidAfter,
                     rotatesAt: h.rotateAt, rotations: h.rotations)
        }
    }

    /// Expiry of every certificate the node holds, for the metrics.
    public func expiries() -> [(kind: String, endpoint: String, notAfter: Date)] {
        [("root", "", ca.root.notValidAfter), ("intermediate", "", ca.currentIntermediate.notValidAfter)] +
            (nodeHeld.map { [("node", "", $0.certificate.notValidAfter)] } ?? []) +
            held.map { ("svid", $0.key, $0.value.certificate.notValidAfter) }
    }
}
