import Foundation
import MeshModel
import SwiftASN1
import X509

/// The ingress Gateway's certificates: files an operator puts in place, laid out as the
/// Kubernetes Secrets a Gateway's `certificateRefs` name (`NAMESPACE/NAME/tls.crt`,
/// `tls.key`). meshd checks each pair before the proxy is told of it, so that a missing,
/// unreadable or mismatched pair shows in `meshctl get gateways` as the listener's problem
/// instead of failing TLS handshakes.
enum GatewayCertificates {
    static func files(_ ref: Gateway.CertificateRef, directory: String) -> ProxyCertificateFiles {
        let base = "\(directory)/\(ref.namespace)/\(ref.name)"
        return ProxyCertificateFiles(certificate: base + "/tls.crt", key: base + "/tls.key")
    }

    /// The pair's files if they read as a PEM chain and a private key of its first certificate.
    static func check(_ ref: Gateway.CertificateRef, directory: String) -> Result<ProxyCertificateFiles, MeshError> {
        let f = files(ref, directory: directory)
        func read(_ path: String) throws(MeshError) -> String {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw MeshError.invalid("cannot read \(path)", hint: "put the PEM certificate chain in tls.crt and its key in tls.key")
            }
            return text
        }
        do throws(MeshError) {
            let certText = try read(f.certificate)
            let keyText = try read(f.key)
            let leaf: Certificate
            do {
                let chain = try PEMDocument.parseMultiple(pemString: certText).filter { $0.discriminator == "CERTIFICATE" }
                guard let first = chain.first else { throw MeshError.invalid("\(f.certificate) holds no CERTIFICATE block") }
                leaf = try Certificate(derEncoded: first.derBytes)
            } catch let e as MeshError {
                throw e
            } catch {
                throw MeshError.invalid("\(f.certificate) is not a PEM certificate: \(error)")
            }
            let key: Certificate.PrivateKey
            do { key = try Certificate.PrivateKey(pemEncoded: keyText) } catch {
                throw MeshError.invalid("\(f.key) is not a PEM private key (PKCS#8, EC or RSA): \(error)")
            }
            guard key.publicKey == leaf.publicKey else {
                throw MeshError.invalid("\(f.key) is not the key of the certificate in \(f.certificate)")
            }
            return .success(f)
        } catch {
            return .failure(error)
        }
    }
}
