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
public actor WorkloadIdentities: Service {
    let ca: CertificateAuthority
    let store: Store
    let nodeName: String
    let logger: Logger
    let dir: String

    struct Held {
        var spiffeID: String
        var certificate: Certificate
        var rotations: Int
        /// The CA's generation it was issued under: a new intermediate or root re-issues it.
        var generation: Int
    }
    private var held: [String: Held] = [:]
    nonisolated let counters = NIOLockedValueBox((rotations: 0, failures: 0))

    public init(ca: CertificateAuthority, store: Store, stateDir: String, nodeName: String, logger: Logger) throws(MeshError) {
        self.ca = ca
        self.store = store
        self.nodeName = nodeName
        self.logger = logger
        dir = stateDir + "/trust/svids"
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw MeshError(.internalError, "cannot create \(dir): \(error.localizedDescription)")
        }
    }

    var lifetime: TimeInterval { ca.settings.svidTTL }

    public func certificatePath(_ endpoint: String) -> String { "\(dir)/\(endpoint).crt" }
    public func keyPath(_ endpoint: String) -> String { "\(dir)/\(endpoint).key" }

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
        for ep in endpoints {
            let id = ca.spiffeID(namespace: ep.labels.namespace, serviceAccount: ep.serviceAccount)
            if held[ep.name] == nil, let kept = load(ep.name, id: id, intermediate: intermediate, generation: generation) { held[ep.name] = kept }
            if let h = held[ep.name], h.spiffeID == id, h.generation == generation, h.certificate.issuer == intermediate.subject,
               h.certificate.notValidAfter.timeIntervalSinceNow > lifetime / 2 {
                continue
            }
            do {
                let issued = try ca.issueSVID(spiffeID: id, lifetime: lifetime)
                try CertificateAuthority.write(issued, cert: certificatePath(ep.name), key: keyPath(ep.name), chain: [intermediate])
                let rotated = held[ep.name] != nil
                held[ep.name] = Held(spiffeID: id, certificate: issued.certificate, rotations: (held[ep.name]?.rotations ?? 0) + (rotated ? 1 : 0),
                                     generation: generation)
                if rotated { counters.withLockedValue { $0.rotations += 1 } }
                logger.info(rotated ? "workload certificate rotated" : "workload certificate issued",
                            metadata: ["endpoint": "\(ep.name)", "spiffe_id": "\(id)", "not_after": "\(issued.certificate.notValidAfter)"])
            } catch {
                counters.withLockedValue { $0.failures += 1 }
                logger.error("cannot issue a workload certificate", metadata: ["endpoint": "\(ep.name)", "error": "\(error.message)"])
            }
        }
        // Endpoints gone: their certificates and keys go (also those a run before this one left).
        let names = Set(endpoints.map(\.name))
        for name in held.keys where !names.contains(name) { held[name] = nil }
        for file in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
            let name = file.replacingOccurrences(of: ".crt", with: "").replacingOccurrences(of: ".key", with: "")
            if !names.contains(name) { unlink("\(dir)/\(file)") }
        }
    }

    /// A certificate left by an earlier run, if it is still this endpoint's and good.
    private func load(_ endpoint: String, id: String, intermediate: Certificate, generation: Int) -> Held? {
        guard let cert = try? CertificateAuthority.readCertificate(certificatePath(endpoint)),
              let key = try? CertificateAuthority.readKey(keyPath(endpoint)),
              cert.publicKey == Certificate.PublicKey(key.publicKey), CertificateAuthority.signs(intermediate, cert),
              let san = try? cert.extensions.subjectAlternativeNames,
              san.contains(where: { if case .uniformResourceIdentifier(let u) = $0 { u == id } else { false } }) else { return nil }
        return Held(spiffeID: id, certificate: cert, rotations: 0, generation: generation)
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
                     rotatesAt: h.certificate.notValidAfter.addingTimeInterval(-lifetime / 2), rotations: h.rotations)
        }
    }

    /// Expiry of every certificate the node holds, for the metrics.
    public func expiries() -> [(kind: String, endpoint: String, notAfter: Date)] {
        [("root", "", ca.root.notValidAfter), ("intermediate", "", ca.currentIntermediate.notValidAfter)] +
            held.map { ("svid", $0.key, $0.value.certificate.notValidAfter) }
    }
}
