import Foundation
import MeshModel
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import SwiftASN1
import X509

/// TLS for the mTLS tunnels between nodes (swift-nio-ssl): contexts made from the
/// certificate files meshd keeps, made again when meshd says the files changed (the
/// certificate generation). BoringSSL verifies the peer's chain against the trust bundle;
/// the SPIFFE ID is read from the verified leaf here, and a refusal says why (expired,
/// unknown CA, no SPIFFE ID of the trust domain).
final class TunnelTLS: Sendable {
    private struct Cached {
        var generation: UInt64
        var context: NIOSSLContext
    }

    private let contexts = NIOLockedValueBox<[String: Cached]>([:])

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

    /// What the peer's certificate said: its SPIFFE ID, or why it was refused.
    struct PeerCheck: Sendable {
        var spiffeID: String?
        var refusal: TunnelRefusal?
    }

    /// The peer's identity, read once BoringSSL has verified its chain against the trust
    /// bundle (every certificate valid now, ending at a root of the bundle): the leaf must
    /// carry exactly one SPIFFE ID of the trust domain, `expected` when given.
    ///
    /// The chain is verified by BoringSSL during the handshake, on the event loop, not by a
    /// custom callback: swift-certificates' verifier is async, and its hop to a Task and
    /// back cost a third of the new connections per second on a proxy pinned to one core.
    static func identify(_ leaf: NIOSSLCertificate?, trustDomain: String, expected: String?) -> PeerCheck {
        guard let certificate = parsed(leaf) else {
            return PeerCheck(refusal: .handshake)
        }
        let ids = spiffeIDs(certificate).filter { $0.hasPrefix("spiffe://\(trustDomain)/") }
        guard ids.count == 1, let id = ids.first else { return PeerCheck(refusal: .badIdentity) }
        if let expected, id != expected { return PeerCheck(refusal: .identityMismatch) }
        return PeerCheck(spiffeID: id)
    }

    private static func parsed(_ leaf: NIOSSLCertificate?) -> Certificate? {
        guard let leaf else { return nil }
        return try? Certificate(derEncoded: try leaf.toDERBytes())
    }

    static func spiffeIDs(_ c: Certificate) -> [String] {
        guard let names = try? c.extensions.subjectAlternativeNames else { return [] }
        return names.compactMap { if case .uniformResourceIdentifier(let u) = $0, u.hasPrefix("spiffe://") { u } else { nil } }
    }

    /// Why a handshake failed. BoringSSL says only that verification failed, not why; the
    /// peer's leaf (still held by the failed connection) tells an expired certificate from
    /// one of another CA. An alert from the peer names its own reason.
    static func classify(_ error: any Error, peer leaf: NIOSSLCertificate?) -> TunnelRefusal {
        let text = String(describing: error)
        if text.contains("PEER_DID_NOT_RETURN_A_CERTIFICATE") || text.contains("CERTIFICATE_REQUIRED") { return .noClientCertificate }
        if text.contains("CERTIFICATE_VERIFY_FAILED") {
            let now = Date()
            if let c = parsed(leaf), c.notValidAfter < now || c.notValidBefore > now {
                return .expired
            }
            return .unknownCA
        }
        if text.contains("CERTIFICATE_EXPIRED") { return .expired }
        if text.contains("UNKNOWN_CA") { return .unknownCA }
        return .handshake
    }
}
