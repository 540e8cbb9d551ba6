import Foundation
import MeshModel
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import SwiftASN1
import X509

/// TLS for the mTLS tunnels between nodes (swift-nio-ssl): contexts made from the
/// certificate files meshd keeps, made again when meshd says the files changed (the
/// certificate generation), and the peer's chain checked here with swift-certificates, so
/// that a refusal can say why (expired, unknown CA, no SPIFFE ID of the trust domain).
final class TunnelTLS: Sendable {
    private struct Cached {
        var generation: UInt64
        var context: NIOSSLContext
    }

    private let contexts = NIOLockedValueBox<[String: Cached]>([:])
    private let bundles = NIOLockedValueBox<(key: String, roots: [Certificate])?>(nil)

    /// The listener's context: the node's certificate; a client certificate is required.
    func serverContext(_ t: ProxyTunnelConfig) throws -> NIOSSLContext {
        try context(key: "node:" + t.nodeCertificatePath, generation: t.certificateGeneration) {
            var c = TLSConfiguration.makeServerConfiguration(
                certificateChain: try NIOSSLCertificate.fromPEMFile(t.nodeCertificatePath).map { .certificate($0) },
                privateKey: .privateKey(try NIOSSLPrivateKey(file: t.nodeKeyPath, format: .pem)))
            c.minimumTLSVersion = .tlsv13
            c.certificateVerification = .noHostnameVerification
            c.trustRoots = .file(t.trustBundlePath)
            return c
        }
    }

    /// A client context presenting `workload`'s SVID.
    func clientContext(_ t: ProxyTunnelConfig, workload: TunnelWorkload) throws -> NIOSSLContext {
        try context(key: "svid:" + workload.certificatePath, generation: t.certificateGeneration) {
            var c = TLSConfiguration.makeClientConfiguration()
            c.certificateChain = try NIOSSLCertificate.fromPEMFile(workload.certificatePath).map { .certificate($0) }
            c.privateKey = .privateKey(try NIOSSLPrivateKey(file: workload.keyPath, format: .pem))
            c.minimumTLSVersion = .tlsv13
            c.certificateVerification = .noHostnameVerification
            c.trustRoots = .file(t.trustBundlePath)
            return c
        }
    }

    private func context(key: String, generation: UInt64, make: () throws -> TLSConfiguration) throws -> NIOSSLContext {
        if let c = contexts.withLockedValue({ $0[key] }), c.generation == generation { return c.context }
        let made = try NIOSSLContext(configuration: try make())
        contexts.withLockedValue { $0[key] = Cached(generation: generation, context: made) }
        return made
    }

    /// The roots of the trust bundle, read again when the generation moves.
    func roots(_ t: ProxyTunnelConfig) throws -> [Certificate] {
        let key = "\(t.trustBundlePath)#\(t.certificateGeneration)"
        if let b = bundles.withLockedValue({ $0 }), b.key == key { return b.roots }
        let pem = try String(contentsOfFile: t.trustBundlePath, encoding: .utf8)
        let roots = try PEMDocument.parseMultiple(pemString: pem).map { try Certificate(pemDocument: $0) }
        bundles.withLockedValue { $0 = (key, roots) }
        return roots
    }

    /// What the peer's chain said: its SPIFFE ID, or why it was refused.
    struct PeerCheck: Sendable {
        var spiffeID: String?
        var refusal: TunnelRefusal?
    }

    /// A NIOSSL custom verification callback: `chain` must end at a root of `roots`, every
    /// certificate of it be valid now, and the leaf carry exactly one SPIFFE ID of the trust
    /// domain (`expected`, when given). The outcome is left in `result` for the handler.
    static func verifier(roots: [Certificate], trustDomain: String, expected: String?,
                         result: NIOLockedValueBox<PeerCheck>) -> NIOSSLCustomVerificationCallback {
        { chain, promise in
            let refuse = { (reason: TunnelRefusal) in
                result.withLockedValue { $0.refusal = reason }
                promise.succeed(.failed)
            }
            guard let certificates = try? chain.map({ try Certificate(derEncoded: try $0.toDERBytes()) }),
                  let leaf = certificates.first else { return refuse(.handshake) }
            let now = Date()
            if certificates.contains(where: { $0.notValidAfter < now || $0.notValidBefore > now }) { return refuse(.expired) }
            let ids = spiffeIDs(leaf).filter { $0.hasPrefix("spiffe://\(trustDomain)/") }
            guard ids.count == 1, let id = ids.first else { return refuse(.badIdentity) }
            if let expected, id != expected { return refuse(.identityMismatch) }
            let intermediates = CertificateStore(certificates.dropFirst())
            Task {
                var verifier = Verifier(rootCertificates: CertificateStore(roots)) {
                    RFC5280Policy(validationTime: now)
                    SPIFFEPolicy()
                }
                switch await verifier.validate(leaf: leaf, intermediates: intermediates) {
                case .validCertificate:
                    result.withLockedValue { $0.spiffeID = id }
                    promise.succeed(.certificateVerified)
                case .couldNotValidate:
                    refuse(.unknownCA)
                }
            }
        }
    }

    static func spiffeIDs(_ c: Certificate) -> [String] {
        guard let names = try? c.extensions.subjectAlternativeNames else { return [] }
        return names.compactMap { if case .uniformResourceIdentifier(let u) = $0, u.hasPrefix("spiffe://") { u } else { nil } }
    }

    /// Why NIOSSL failed a handshake that the verification callback did not refuse.
    static func classify(_ error: any Error) -> TunnelRefusal {
        let text = String(describing: error)
        if text.contains("PEER_DID_NOT_RETURN_A_CERTIFICATE") || text.contains("CERTIFICATE_REQUIRED") { return .noClientCertificate }
        return .handshake
    }
}

/// SVIDs carry their SPIFFE ID in a critical subject alternative name, which the RFC 5280
/// policy does not claim; the ID itself is checked before the chain (TunnelTLS.verifier).
struct SPIFFEPolicy: VerifierPolicy {
    let verifyingCriticalExtensions: [ASN1ObjectIdentifier] = [.X509ExtensionID.subjectAlternativeName]

    func chainMeetsPolicyRequirements(chain: UnverifiedCertificateChain) async -> PolicyEvaluationResult { .meetsPolicy }
}
