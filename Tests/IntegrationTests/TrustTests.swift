import Foundation
import XCTest

/// The node's certificate authority and its endpoints' workload certificates, checked
/// with OpenSSL, which shares no code with swift-certificates: chains, SPIFFE IDs,
/// lifetimes, key files, rotation, an operator's root.
final class TrustTests: XCTestCase {
    var node: TestNode!

    override func tearDown() { node?.destroy() }

    var trust: String { node.dir + "/state/trust" }

    func openssl(_ args: String...) -> Run.Result { Run.run("/usr/bin/openssl", args) }

    func svids() throws -> [[String: Any]] {
        let out = try node.ctlOK("identity", "svids", "-o", "json")
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]])
    }

    func mode(_ path: String) -> Int {
        ((try? FileManager.default.attributesOfItem(atPath: path))?[.posixPermissions] as? Int) ?? -1
    }

    /// An ECDSA P-256 root CA made by OpenSSL, in `dir`: (certificate, key).
    func opensslRoot(_ dir: String, _ name: String) throws -> (String, String) {
        let cert = "\(dir)/\(name).crt", key = "\(dir)/\(name).key"
        let r = openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                        "-subj", "/O=Operator/CN=\(name)", "-days", "30", "-addext", "basicConstraints=critical,CA:TRUE",
                        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        guard r.status == 0 else { throw TestFailure("openssl req: \(r.stderr)") }
        return (cert, key)
    }

    func testEndpointsGetSVIDsThatChainToTheNodesRootAndNameTheirAccount() throws {
        node = try TestNode()
        try node.start()
        try node.ctlOK("endpoint", "create", "web", "--labels", "app=web,namespace=shop", "--service-account", "frontend")
        try node.ctlOK("endpoint", "create", "db", "--labels", "app=db")
        try node.waitFor("two workload certificates") { (try? svids().count) == 2 }
        let web = "\(trust)/svids/web.crt", root = "\(trust)/root.crt", inter = "\(trust)/intermediate.crt"

        let verify = openssl("verify", "-CAfile", root, "-untrusted", inter, web)
        XCTAssertEqual(verify.status, 0, verify.stdout + verify.stderr)
        XCTAssertTrue(verify.stdout.contains(": OK"), verify.stdout)
        XCTAssertTrue(openssl("x509", "-in", web, "-noout", "-ext", "subjectAltName").stdout.contains("URI:spiffe://cluster.local/ns/shop/sa/frontend"))
        XCTAssertTrue(openssl("x509", "-in", "\(trust)/svids/db.crt", "-noout", "-ext", "subjectAltName").stdout
            .contains("URI:spiffe://cluster.local/ns/default/sa/default"))
        XCTAssertTrue(openssl("x509", "-in", web, "-noout", "-ext", "extendedKeyUsage").stdout.contains("TLS Web Client Authentication"))
        // 24 hours: good for the next 23.9, not for 24.1.
        XCTAssertEqual(openssl("x509", "-in", web, "-noout", "-checkend", "86000").status, 0)
        XCTAssertNotEqual(openssl("x509", "-in", web, "-noout", "-checkend", "86800").status, 0)
        // The node's intermediate is a CA that can sign only end certificates.
        XCTAssertTrue(openssl("x509", "-in", inter, "-noout", "-ext", "basicConstraints").stdout.contains("CA:TRUE, pathlen:0"))
        // Every private key is the owner's alone, and matches its certificate.
        for key in ["\(trust)/root.key", "\(trust)/intermediate.key", "\(trust)/svids/web.key", "\(trust)/svids/db.key"] {
            XCTAssertEqual(mode(key), 0o600, key)
        }
        XCTAssertEqual(openssl("pkey", "-in", "\(trust)/svids/web.key", "-pubout").stdout, openssl("x509", "-in", web, "-noout", "-pubkey").stdout)
        // Another CA's root does not vouch for it.
        let (other, _) = try opensslRoot(node.dir, "other")
        XCTAssertNotEqual(openssl("verify", "-CAfile", other, "-untrusted", inter, web).status, 0)
        // The expiry of every certificate is a metric.
        let expiry = try XCTUnwrap(try node.metric("mesh_trust_certificate_expiry_timestamp_seconds", ["kind": "svid", "endpoint": "web"]))
        XCTAssertEqual(expiry, Date().timeIntervalSince1970 + 86400, accuracy: 120)
        XCTAssertNotNil(try node.metric("mesh_trust_certificate_expiry_timestamp_seconds", ["kind": "root", "endpoint": ""]))

        // A restart keeps the root and the certificates that are still good.
        let rootBefore = openssl("x509", "-in", root, "-noout", "-fingerprint").stdout
        let serial = try XCTUnwrap(try svids().first { $0["endpoint"] as? String == "web" }?["serial"] as? String)
        node.stop()
        try node.start()
        try node.waitFor("the certificates after the restart") { (try? svids().count) == 2 }
        XCTAssertEqual(openssl("x509", "-in", root, "-noout", "-fingerprint").stdout, rootBefore)
        XCTAssertEqual(try svids().first { $0["endpoint"] as? String == "web" }?["serial"] as? String, serial)

        try node.ctlOK("endpoint", "delete", "web")
        try node.waitFor("web's certificate removed") { !FileManager.default.fileExists(atPath: web) && !FileManager.default.fileExists(atPath: "\(trust)/svids/web.key") }
        let bad = node.ctl("endpoint", "create", "x", "--service-account", "Not_A_Name")
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("service account \"Not_A_Name\""), bad.stderr)
    }

    // Certificates of a few seconds' life are replaced at half of it, so the one on disk
    // is always valid, with half its life ahead when it is written.
    func testSVIDsRotateAtHalfLifeAndAreNeverExpired() throws {
        node = try TestNode()
        try node.start(["--svid-ttl", "6"])
        try node.ctlOK("endpoint", "create", "web", "--labels", "app=web")
        try node.waitFor("web's certificate") { (try? svids().count) == 1 }
        var serials = Set<String>()
        let end = Date().addingTimeInterval(10)
        while Date() < end {
            if let s = try svids().first?["serial"] as? String { serials.insert(s) }
            let web = "\(trust)/svids/web.crt"
            XCTAssertEqual(openssl("x509", "-in", web, "-noout", "-checkend", "0").status, 0, "the certificate on disk has expired")
            let v = openssl("verify", "-CAfile", "\(trust)/root.crt", "-untrusted", "\(trust)/intermediate.crt", web)
            XCTAssertEqual(v.status, 0, v.stdout + v.stderr)
            Thread.sleep(forTimeInterval: 0.5)
        }
        // 10 s at a 3 s half-life: three rotations or more.
        XCTAssertGreaterThanOrEqual(serials.count, 3, "\(serials)")
        XCTAssertGreaterThanOrEqual(try node.metric("mesh_trust_svid_rotations_total") ?? 0, 2)
    }

    // The operator's root signs the node's intermediate; a key that is not the root's is
    // refused before anything starts.
    func testAnOperatorsRootIsUsedAndAForeignKeyRefused() throws {
        node = try TestNode()
        let (cert, key) = try opensslRoot(node.dir, "operator")
        try node.start(["--trust-root-cert", cert, "--trust-root-key", key])
        try node.ctlOK("endpoint", "create", "web", "--labels", "app=web")
        try node.waitFor("web's certificate") { (try? svids().count) == 1 }
        let v = openssl("verify", "-CAfile", cert, "-untrusted", "\(trust)/intermediate.crt", "\(trust)/svids/web.crt")
        XCTAssertEqual(v.status, 0, v.stdout + v.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(trust)/root.key"), "the operator's key is not copied")
        node.stop()

        let (_, otherKey) = try opensslRoot(node.dir, "stranger")
        XCTAssertThrowsError(try node.start(["--trust-root-cert", cert, "--trust-root-key", otherKey])) { error in
            XCTAssertTrue("\(error)".contains("is not the key of trust-root-cert"), "\(error)")
        }

        // A CA certificate that is not self-signed (an intermediate of the operator's root)
        // cannot anchor the tunnels' chains: refused at start, with the reason.
        let mid = node.dir + "/mid"
        try "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
            .write(toFile: mid + ".ext", atomically: true, encoding: .utf8)
        for args in [["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", mid + ".key",
                      "-out", mid + ".csr", "-subj", "/CN=operator intermediate"],
                     ["x509", "-req", "-in", mid + ".csr", "-CA", cert, "-CAkey", key, "-CAcreateserial", "-days", "1",
                      "-extfile", mid + ".ext", "-out", mid + ".crt"]] {
            let r = Run.run("/usr/bin/openssl", args)
            XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        }
        XCTAssertThrowsError(try node.start(["--trust-root-cert", mid + ".crt", "--trust-root-key", mid + ".key"])) { error in
            XCTAssertTrue("\(error)".contains("is not self-signed"), "\(error)")
        }
    }

    // Two cluster members given the same operator root: each signs with an intermediate
    // of its own, and a workload of either is vouched for by that one root.
    func testClusterMembersWithOneOperatorRootVouchForEachOthersWorkloads() throws {
        let fabric = try ClusterFabric()
        defer { fabric.destroy() }
        let keys = NSTemporaryDirectory() + "\(fabric.name)-root"
        try FileManager.default.createDirectory(atPath: keys, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: keys) }
        let (cert, key) = try opensslRoot(keys, "cluster")
        let a = try fabric.addNode(podCIDR: "10.201.1.0/28", extra: ["--trust-root-cert", cert, "--trust-root-key", key])
        let b = try fabric.addNode(podCIDR: "10.201.2.0/28", extra: ["--trust-root-cert", cert, "--trust-root-key", key])
        for (n, ep) in [(a, "web"), (b, "db")] {
            try n.ctlOK("endpoint", "create", ep, "--labels", "app=\(ep)")
            let t = n.dir + "/state/trust"
            try n.waitFor("\(ep)'s certificate") { FileManager.default.fileExists(atPath: "\(t)/svids/\(ep).crt") }
            // Verified with the chain the file carries, as a peer would in a handshake.
            let v = openssl("verify", "-CAfile", cert, "-untrusted", "\(t)/svids/\(ep).crt", "\(t)/svids/\(ep).crt")
            XCTAssertEqual(v.status, 0, v.stdout + v.stderr)
        }
        XCTAssertNotEqual(openssl("x509", "-in", a.dir + "/state/trust/intermediate.crt", "-noout", "-fingerprint").stdout,
                          openssl("x509", "-in", b.dir + "/state/trust/intermediate.crt", "-noout", "-fingerprint").stdout,
                          "each node signs with an intermediate of its own")
        XCTAssertFalse(b.meshdLog.contains("asked the cluster root's holder"), "with the operator's root no node asks another to sign")
    }

    // Without an operator's root, the first member's root becomes the cluster's: the
    // second member keeps its own keys and gets its intermediate signed by that root
    // through etcd, and its workloads' certificates are re-issued under it.
    func testTheFirstMembersRootSignsTheOtherMembersIntermediates() throws {
        let fabric = try ClusterFabric()
        defer { fabric.destroy() }
        let a = try fabric.addNode(podCIDR: "10.201.1.0/28")
        let b = try fabric.addNode(podCIDR: "10.201.2.0/28")
        try b.ctlOK("endpoint", "create", "db", "--labels", "app=db")
        let ta = a.dir + "/state/trust", tb = b.dir + "/state/trust"
        try b.waitFor("node B's certificates under node A's root") {
            openssl("verify", "-CAfile", "\(ta)/root.crt", "-untrusted", "\(tb)/svids/db.crt", "\(tb)/svids/db.crt").status == 0
        }
        XCTAssertEqual(openssl("x509", "-in", "\(tb)/root.crt", "-noout", "-fingerprint").stdout,
                       openssl("x509", "-in", "\(ta)/root.crt", "-noout", "-fingerprint").stdout, "B keeps the cluster's root")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(tb)/root.key"), "B holds no root key")
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(ta)/root.key"), "the root's key stays on A")
        XCTAssertEqual(mode("\(tb)/intermediate.key"), 0o600)
        XCTAssertTrue(b.meshdLog.contains("signed by the cluster root"), b.meshdLog.suffix(2000).description)
        // A restart of B keeps all of it, without asking again.
        b.stop()
        try b.start(fabric.clusterArgs(2))
        Thread.sleep(forTimeInterval: 1)
        let v = openssl("verify", "-CAfile", "\(ta)/root.crt", "-untrusted", "\(tb)/svids/db.crt", "\(tb)/svids/db.crt")
        XCTAssertEqual(v.status, 0, v.stdout + v.stderr)
        XCTAssertFalse(b.meshdLog.contains("asked the cluster root's holder"), "the restarted node (a fresh log) asked again")
    }
}
