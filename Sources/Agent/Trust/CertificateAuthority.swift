import Crypto
import Foundation
import MeshABI
import MeshModel
import SwiftASN1
import X509

/// Where trust comes from: the trust domain of SPIFFE IDs, how long workload
/// certificates live, and an operator's root (or none: the node makes one).
public struct TrustSettings: Sendable, Equatable {
    /// `spiffe://<trustDomain>/ns/<namespace>/sa/<account>`.
    public var trustDomain: String
    /// Lifetime of a workload's certificate (SVID).
    public var svidTTL: TimeInterval
    /// An operator's root certificate and key (PEM files); nil: generated at first start.
    public var rootCertFile: String?
    public var rootKeyFile: String?
    /// `mtls: strict`: this node's endpoints accept other nodes' endpoints only through the
    /// proxy's mTLS tunnel; otherwise only where an ingress rule requires authentication.
    public var mtlsStrict: Bool = false
    /// The proxy's tunnel listener, the same on every node.
    public var tunnelPort: UInt16 = UInt16(MESH_TUNNEL_DEFAULT_PORT)
}

/// The node's certificate authority, on swift-certificates and swift-crypto: a root
/// (made at first start, or the operator's), and an intermediate of the node's own signed
/// by it, which signs the node's workload certificates, so that a node's compromise does
/// not give away the root. Every private key is made here, never leaves the node, and is
/// written `0600` in `<state>/trust/`.
///
/// Hand-written only in the sense of choosing the profile (extensions, lifetimes, names):
/// the X.509 encoding and signatures are swift-certificates' and swift-crypto's.
public final class CertificateAuthority: @unchecked Sendable { // `intermediate` behind `lock`
    public struct Issued: Sendable {
        public var certificate: Certificate
        public var key: P256.Signing.PrivateKey
    }

    public let settings: TrustSettings
    let dir: String
    let nodeName: String
    private let lock = NSLock()
    private var rootCert: Certificate
    /// nil: the root is another's (the operator's without its key, or the cluster's, whose
    /// key stays on the node that made it).
    private var rootKey: P256.Signing.PrivateKey?
    private var intermediate: Issued
    /// Bumped whenever the intermediate or root changes: certificates issued before are
    /// re-issued.
    private var generationNumber = 0

    /// A root lives ten years; a node's intermediate thirty days, renewed with a third left.
    static let rootLifetime: TimeInterval = 10 * 365 * 86400
    static let intermediateLifetime: TimeInterval = 30 * 86400

    public init(settings: TrustSettings, stateDir: String, nodeName: String) throws(MeshError) {
        self.settings = settings
        self.nodeName = nodeName
        dir = stateDir + "/trust"
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw MeshError(.internalError, "cannot create \(dir): \(error.localizedDescription)")
        }
        var (root, key) = try Self.loadRoot(settings: settings, dir: dir)
        let interCert = dir + "/intermediate.crt", interKey = dir + "/intermediate.key"
        if let cert = try? Self.readCertificate(interCert), let ikey = try? Self.readKey(interKey),
           Self.signs(root, cert), cert.publicKey == Certificate.PublicKey(ikey.publicKey),
           cert.notValidAfter.timeIntervalSinceNow > Self.intermediateLifetime / 3 {
            intermediate = Issued(certificate: cert, key: ikey)
        } else {
            if key == nil, settings.rootCertFile == nil {
                // The cluster's root, adopted earlier, but no good intermediate from it any
                // more: start again from a root of the node's own (the cluster re-signs).
                unlink(dir + "/root.crt")
                (root, key) = try Self.loadRoot(settings: settings, dir: dir)
            }
            guard let key else {
                throw MeshError(.invalidArgument, "the node has no intermediate certificate and the root's key is not here to sign one",
                                hint: "give --trust-root-key with --trust-root-cert")
            }
            let ikey = P256.Signing.PrivateKey()
            intermediate = Issued(certificate: try Self.issueIntermediate(root: root, rootKey: key, node: nodeName, publicKey: .init(ikey.publicKey)),
                                  key: ikey)
            try Self.write(intermediate, cert: interCert, key: interKey)
        }
        rootCert = root
        rootKey = key
    }

    public var root: Certificate { lock.withLock { rootCert } }
    public var holdsRootKey: Bool { lock.withLock { rootKey != nil } }
    public var generation: Int { lock.withLock { generationNumber } }

    /// Whether `issuer` signed `cert`.
    static func signs(_ issuer: Certificate, _ cert: Certificate) -> Bool {
        cert.issuer == issuer.subject && issuer.publicKey.isValidSignature(cert.signature, for: cert)
    }

    /// A request for an intermediate signed by another node's root: the key stays here.
    public func intermediateRequest() throws(MeshError) -> (pem: String, key: P256.Signing.PrivateKey) {
        let key = P256.Signing.PrivateKey()
        do {
            let csr = try CertificateSigningRequest(version: .v1, subject: try DistinguishedName {
                OrganizationName("SwiftMesh")
                CommonName("SwiftMesh node \(nodeName)")
            }, privateKey: .init(key), attributes: .init(), signatureAlgorithm: .ecdsaWithSHA256)
            return (try csr.serializeAsPEM().pemString, key)
        } catch {
            throw MeshError(.internalError, "making a certificate request failed: \(error)")
        }
    }

    /// Signs another node's intermediate request with this node's root key.
    public func signIntermediate(requestPEM: String, node: String) throws(MeshError) -> String {
        let (root, key) = lock.withLock { (rootCert, rootKey) }
        guard let key else { throw MeshError(.permissionDenied, "this node does not hold the root's key") }
        let csr: CertificateSigningRequest
        do { csr = try CertificateSigningRequest(pemEncoded: requestPEM) } catch {
            throw MeshError(.invalidArgument, "node \(node)'s certificate request does not parse: \(error)")
        }
        guard csr.publicKey.isValidSignature(csr.signature, for: csr) else {
            throw MeshError(.invalidArgument, "node \(node)'s certificate request is not signed by its own key")
        }
        return try Self.pem(try Self.issueIntermediate(root: root, rootKey: key, node: node, publicKey: csr.publicKey))
    }

    /// Takes the cluster's root and an intermediate it signed for this node's `key`: the
    /// node's own root key goes (it vouches for nothing any more), and every workload
    /// certificate is issued again.
    public func adopt(root: Certificate, intermediatePEM: String, key: P256.Signing.PrivateKey) throws(MeshError) {
        let cert: Certificate
        do { cert = try Certificate(pemEncoded: intermediatePEM) } catch { throw MeshError(.invalidArgument, "not a PEM certificate: \(error)") }
        guard Self.signs(root, cert), cert.publicKey == Certificate.PublicKey(key.publicKey) else {
            throw MeshError(.invalidArgument, "the intermediate offered is not the cluster root's signature on this node's key")
        }
        try Self.write(Issued(certificate: cert, key: key), cert: dir + "/intermediate.crt", key: dir + "/intermediate.key")
        try Self.writeFile(dir + "/root.crt", try Self.pem(root) + "\n", mode: 0o644)
        unlink(dir + "/root.key")
        lock.withLock {
            rootCert = root
            rootKey = nil
            intermediate = Issued(certificate: cert, key: key)
            generationNumber += 1
        }
    }

    /// The node's intermediate now (renewed by `renewIfDue`).
    public var currentIntermediate: Certificate { lock.withLock { intermediate.certificate } }

    public var trustDomain: String { settings.trustDomain }

    public func spiffeID(namespace: String, serviceAccount: String) -> String {
        ProxyTunnelConfig.workloadSPIFFEID(trustDomain: settings.trustDomain, namespace: namespace, serviceAccount: serviceAccount)
    }

    /// A workload certificate: a key made here, the SPIFFE ID as its only URI name, usable
    /// by TLS servers and clients, signed by the node's intermediate.
    public func issueSVID(spiffeID: String, lifetime: TimeInterval) throws(MeshError) -> Issued {
        let key = P256.Signing.PrivateKey()
        let issuer = lock.withLock { intermediate }
        let now = Date()
        do {
            let cert = try Certificate(
                version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
                // A minute back: a peer whose clock runs a little behind accepts it at once.
                notValidBefore: now.addingTimeInterval(-60), notValidAfter: now.addingTimeInterval(lifetime),
                issuer: issuer.certificate.subject, subject: try DistinguishedName { OrganizationName("SwiftMesh") },
                signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.notCertificateAuthority)
                    Critical(KeyUsage(digitalSignature: true, keyEncipherment: true))
                    try ExtendedKeyUsage([.serverAuth, .clientAuth])
                    Critical(SubjectAlternativeNames([.uniformResourceIdentifier(spiffeID)]))
                    AuthorityKeyIdentifier(keyIdentifier: try Self.keyID(issuer.certificate))
                    SubjectKeyIdentifier(hash: .init(key.publicKey))
                },
                issuerPrivateKey: .init(issuer.key))
            return Issued(certificate: cert, key: key)
        } catch {
            throw MeshError(.internalError, "issuing a certificate for \(spiffeID) failed: \(error)")
        }
    }

    /// Renews the node's intermediate once a third of its life is left. Returns whether it did.
    @discardableResult
    public func renewIfDue(node: String) throws(MeshError) -> Bool {
        let (root, key) = lock.withLock { (rootCert, rootKey) }
        guard let key, currentIntermediate.notValidAfter.timeIntervalSinceNow < Self.intermediateLifetime / 3 else { return false }
        let ikey = P256.Signing.PrivateKey()
        let fresh = Issued(certificate: try Self.issueIntermediate(root: root, rootKey: key, node: node, publicKey: .init(ikey.publicKey)), key: ikey)
        try Self.write(fresh, cert: dir + "/intermediate.crt", key: dir + "/intermediate.key")
        lock.withLock {
            intermediate = fresh
            generationNumber += 1
        }
        return true
    }

    // MARK: making and keeping certificates

    static func loadRoot(settings: TrustSettings, dir: String) throws(MeshError) -> (Certificate, P256.Signing.PrivateKey?) {
        if let certFile = settings.rootCertFile {
            let cert: Certificate
            do { cert = try readCertificate(certFile) } catch {
                throw MeshError(.invalidArgument, "trust-root-cert \(certFile): \(error.message)")
            }
            guard let basic = try? cert.extensions.basicConstraints, case .isCertificateAuthority = basic else {
                throw MeshError(.invalidArgument, "trust-root-cert \(certFile) is not a CA certificate (basicConstraints CA:TRUE)")
            }
            // The tunnels' TLS (BoringSSL) anchors a chain only at a self-signed root.
            guard cert.issuer == cert.subject, cert.publicKey.isValidSignature(cert.signature, for: cert) else {
                throw MeshError(.invalidArgument, "trust-root-cert \(certFile) is not self-signed (its issuer is \(cert.issuer))",
                                hint: "give the root itself; an intermediate of another CA cannot anchor the mesh's chains")
            }
            var key: P256.Signing.PrivateKey?
            if let keyFile = settings.rootKeyFile {
                do { key = try readKey(keyFile) } catch { throw MeshError(.invalidArgument, "trust-root-key \(keyFile): \(error.message)") }
                guard cert.publicKey == Certificate.PublicKey(key!.publicKey) else {
                    throw MeshError(.invalidArgument, "trust-root-key \(keyFile) is not the key of trust-root-cert \(certFile)")
                }
            }
            return (cert, key)
        }
        let certPath = dir + "/root.crt", keyPath = dir + "/root.key"
        if FileManager.default.fileExists(atPath: certPath), !FileManager.default.fileExists(atPath: keyPath) {
            // The cluster's root, adopted: its key is on the node that made it.
            do { return (try readCertificate(certPath), nil) } catch {
                throw MeshError(.internalError, "the cluster root in \(certPath) is unreadable: \(error.message)")
            }
        }
        if FileManager.default.fileExists(atPath: certPath) {
            do throws(MeshError) {
                let cert = try readCertificate(certPath), key = try readKey(keyPath)
                guard cert.publicKey == Certificate.PublicKey(key.publicKey) else {
                    throw MeshError(.internalError, "\(keyPath) is not the key of \(certPath)")
                }
                return (cert, key)
            } catch {
                throw MeshError(.internalError, "the node's root in \(dir) is unreadable: \(error.message)",
                                hint: "move \(dir) away to make a new root (every workload certificate changes)")
            }
        }
        let made = try makeRoot()
        try write(made, cert: certPath, key: keyPath)
        return (made.certificate, made.key)
    }

    /// A new self-signed root: its key made here, ten years, CA for one level below it.
    static func makeRoot() throws(MeshError) -> Issued {
        let key = P256.Signing.PrivateKey()
        let now = Date()
        do {
            let name = try DistinguishedName {
                OrganizationName("SwiftMesh")
                CommonName("SwiftMesh root CA \(String(UUID().uuidString.prefix(8)).lowercased())")
            }
            let cert = try Certificate(
                version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
                notValidBefore: now.addingTimeInterval(-60), notValidAfter: now.addingTimeInterval(rootLifetime),
                issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 1))
                    Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                    SubjectKeyIdentifier(hash: .init(key.publicKey))
                },
                issuerPrivateKey: .init(key))
            return Issued(certificate: cert, key: key)
        } catch {
            throw MeshError(.internalError, "making a root certificate failed: \(error)")
        }
    }

    /// Moves this node (the root's holder) to `new`: its root and key, and an intermediate
    /// the new root signs; every certificate issued before is issued again.
    public func switchRoot(to new: Issued) throws(MeshError) {
        let ikey = P256.Signing.PrivateKey()
        let inter = Issued(certificate: try Self.issueIntermediate(root: new.certificate, rootKey: new.key, node: nodeName,
                                                                  publicKey: .init(ikey.publicKey)), key: ikey)
        try Self.write(new, cert: dir + "/root.crt", key: dir + "/root.key")
        try Self.write(inter, cert: dir + "/intermediate.crt", key: dir + "/intermediate.key")
        lock.withLock {
            rootCert = new.certificate
            rootKey = new.key
            intermediate = inter
            generationNumber += 1
        }
    }

    /// The first 16 hex digits of the SHA-256 of `cert`'s DER: enough to tell roots apart.
    public static func fingerprint(_ cert: Certificate) -> String {
        var serializer = DER.Serializer()
        guard (try? serializer.serialize(cert)) != nil else { return "?" }
        return SHA256.hash(data: serializer.serializedBytes).prefix(8).map { String(format: "%02x", $0) }.joined()
    }

    public static func summary(_ cert: Certificate) -> CertificateSummary {
        CertificateSummary(subject: "\(cert.subject)", fingerprint: fingerprint(cert), notAfter: cert.notValidAfter)
    }

    static func issueIntermediate(root: Certificate, rootKey: P256.Signing.PrivateKey, node: String,
                                  publicKey: Certificate.PublicKey) throws(MeshError) -> Certificate {
        let now = Date()
        do {
            return try Certificate(
                version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: publicKey,
                notValidBefore: now.addingTimeInterval(-60), notValidAfter: min(now.addingTimeInterval(intermediateLifetime), root.notValidAfter),
                issuer: root.subject,
                subject: try DistinguishedName {
                    OrganizationName("SwiftMesh")
                    CommonName("SwiftMesh node \(node)")
                },
                signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                    Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                    SubjectKeyIdentifier(hash: publicKey)
                    AuthorityKeyIdentifier(keyIdentifier: try keyID(root))
                },
                issuerPrivateKey: .init(rootKey))
        } catch {
            throw MeshError(.internalError, "issuing an intermediate certificate for node \(node) failed: \(error)")
        }
    }

    static func keyID(_ cert: Certificate) throws -> ArraySlice<UInt8> {
        if let ski = try cert.extensions.subjectKeyIdentifier { return ski.keyIdentifier }
        return SubjectKeyIdentifier(hash: cert.publicKey).keyIdentifier
    }

    static func pem(_ cert: Certificate) throws(MeshError) -> String {
        do { return try cert.serializeAsPEM().pemString } catch { throw MeshError(.internalError, "encoding a certificate: \(error)") }
    }

    /// The certificate, then the key (0600), each through a temporary file and a rename:
    /// a reader never sees half a file, nor a key wider open than its owner.
    static func write(_ issued: Issued, cert: String, key: String, chain: [Certificate] = []) throws(MeshError) {
        let certText = try ([issued.certificate] + chain).map { (c: Certificate) throws(MeshError) -> String in try pem(c) }.joined(separator: "\n") + "\n"
        try writeFile(key, issued.key.pemRepresentation + "\n", mode: 0o600)
        try writeFile(cert, certText, mode: 0o644)
    }

    static func writeFile(_ path: String, _ text: String, mode: mode_t) throws(MeshError) {
        let tmp = path + ".tmp"
        unlink(tmp)
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw MeshError(.internalError, "cannot write \(tmp): \(String(cString: strerror(errno)))") }
        let bytes = Array(text.utf8)
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        fchmod(fd, mode)
        close(fd)
        guard written == bytes.count, rename(tmp, path) == 0 else {
            unlink(tmp)
            throw MeshError(.internalError, "cannot write \(path): \(String(cString: strerror(errno)))")
        }
    }

    static func readCertificate(_ path: String) throws(MeshError) -> Certificate {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw MeshError(.invalidArgument, "cannot read \(path)") }
        // The first certificate of the file: a workload's file holds its chain after it.
        let end = "-----END CERTIFICATE-----"
        let first = text.range(of: end).map { String(text[..<$0.upperBound]) } ?? text
        do { return try Certificate(pemEncoded: first) } catch { throw MeshError(.invalidArgument, "not a PEM certificate: \(error)") }
    }

    static func readKey(_ path: String) throws(MeshError) -> P256.Signing.PrivateKey {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw MeshError(.invalidArgument, "cannot read \(path)") }
        do { return try P256.Signing.PrivateKey(pemRepresentation: text) } catch {
            throw MeshError(.invalidArgument, "not a PEM ECDSA P-256 private key: \(error)")
        }
    }
}
