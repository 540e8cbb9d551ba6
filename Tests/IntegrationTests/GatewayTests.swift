import Foundation
import XCTest

/// The ingress gateway on real traffic: a Gateway's listeners on the node, clients in the
/// node's own netns (outside the mesh) with curl, certificates made here with openssl.
final class GatewayTests: XCTestCase {
    var node: TestNode!
    var traffic: Traffic { Traffic(node: node) }
    var background: [Traffic.Background] = []
    var certs = ""

    override func tearDown() {
        for b in background { kill(b.pid, SIGKILL) }
        node?.destroy()
    }

    /// A CA, and for each name a certificate it signs for that DNS name, in the layout meshd
    /// reads (`default/NAME-tls/tls.crt`, `tls.key`).
    func makeCertificates(_ names: [String]) throws {
        let ca = certs + "/ca"
        try FileManager.default.createDirectory(atPath: ca, withIntermediateDirectories: true)
        try Run.checked("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
                        "-subj", "/CN=gateway-test-ca", "-keyout", ca + "/ca.key", "-out", ca + "/ca.crt")
        for name in names {
            let dir = certs + "/default/\(name.split(separator: ".")[0])-tls"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try Run.checked("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
                            "-subj", "/CN=\(name)", "-addext", "subjectAltName=DNS:\(name)", "-CA", ca + "/ca.crt",
                            "-CAkey", ca + "/ca.key", "-keyout", dir + "/tls.key", "-out", dir + "/tls.crt")
        }
    }

    /// curl in the node's netns: the status (0 when no HTTP answer came), the body, curl's
    /// error and the HTTP version spoken ("2" or "1.1"; over TLS curl asks for HTTP/2 first).
    func curl(_ url: String, resolve: String? = nil, headers: [String] = [], options: [String] = [])
        -> (status: Int, body: String, error: String, version: String) {
        var args = ["curl", "-sS", "--max-time", "5", "--cacert", certs + "/ca/ca.crt", "-o", "-", "-w", "\n%{http_code} %{http_version}"]
        if let resolve { args += ["--resolve", resolve] }
        for h in headers { args += ["-H", h] }
        let r = Run.run("/usr/bin/nsenter", ["--net=/run/netns/\(node.netns)"] + args + options + [url])
        let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false)
        let last = (lines.last ?? "").split(separator: " ")
        return (Int(last.first ?? "") ?? 0, lines.dropLast().joined(separator: "\n"), r.stderr, last.count > 1 ? String(last[1]) : "")
    }

    var proxyLog: String {
        "\nproxy log:\n" + ((try? String(contentsOfFile: node.dir + "/state/mesh-proxy.log", encoding: .utf8)) ?? "").suffix(2000)
    }

    func server(of body: String) -> String {
        ((try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any])?["server"] as? String ?? ""
    }

    func gatewayCount(_ result: String) throws -> Double {
        var sum = 0.0
        for line in try node.scrape().split(separator: "\n") where line.hasPrefix("mesh_gateway_connections_total{")
            && line.contains("result=\"\(result)\"") {
            sum += Double(line.split(separator: " ").last ?? "") ?? 0
        }
        return sum
    }

    static let gateway = """
    apiVersion: gateway.networking.k8s.io/v1
    kind: Gateway
    metadata: {name: public}
    spec:
      gatewayClassName: swiftmesh
      listeners:
      - {name: http, port: 8080, protocol: HTTP}
      - name: shop-https
        port: 8443
        protocol: HTTPS
        hostname: shop.example.com
        tls: {certificateRefs: [{kind: Secret, name: shop-tls}]}
      - name: api-https
        port: 8443
        protocol: HTTPS
        hostname: api.example.com
        tls: {mode: Terminate, certificateRefs: [{name: api-tls}]}
      - name: passthrough
        port: 9443
        protocol: TLS
        tls: {mode: Passthrough}
    ---
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {name: shop}
    spec:
      parentRefs:
      - {name: public, sectionName: shop-https}
      - {name: public, sectionName: http}
      hostnames: [shop.example.com]
      rules:
      - matches: [{path: {type: PathPrefix, value: /store}}]
        backendRefs: [{name: shop, port: 80}]
    ---
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {name: api}
    spec:
      parentRefs: [{name: public}]
      hostnames: [api.example.com]
      rules:
      - matches: [{path: {type: PathPrefix, value: /v1}}]
        backendRefs: [{name: api, port: 80}]
    ---
    apiVersion: gateway.networking.k8s.io/v1alpha2
    kind: TLSRoute
    metadata: {name: vault}
    spec:
      parentRefs: [{name: public, sectionName: passthrough}]
      hostnames: [vault.example.com]
      rules:
      - backendRefs: [{name: vault, port: 443}]
    """

    static func service(_ name: String, port: Int = 80) -> String {
        """
        apiVersion: v1
        kind: Service
        metadata: {name: \(name)}
        spec:
          selector: {app: \(name)}
          ports:
          - {name: http, port: \(port), targetPort: 8080}
        """
    }

    /// The node with shop, api and vault (which ends TLS itself) serving, their Services and
    /// the Gateway with its routes.
    func startGateway() throws {
        node = try TestNode(podCIDR: "10.206.0.0/27")
        certs = node.dir + "/gateway-certs"
        try makeCertificates(["shop.example.com", "api.example.com", "vault.example.com"])
        try node.start(["--gateway-certs", certs])
        try node.waitFor("the proxy to be connected") { try node.metric("mesh_proxy_up") == 1 }
        for name in ["shop", "api", "vault"] {
            try node.ctlOK("endpoint", "create", name, "--labels", "app=\(name)", "--ports", "http=8080")
            var args = ["http-server", "--port", "8080", "--name", name]
            // vault's certificate is a file the gateway never reads: only vault can end its TLS.
            if name == "vault" { args += ["--tls-cert", certs + "/default/vault-tls/tls.crt", "--tls-key", certs + "/default/vault-tls/tls.key"] }
            background.append(try traffic.start(in: name, args, waitReady: true))
        }
        try node.apply([Self.service("shop"), Self.service("api"), Self.service("vault", port: 443), Self.gateway]
            .joined(separator: "\n---\n"))
        var last = (status: 0, body: "", error: "", version: "")
        do {
            try node.waitFor("the gateway to listen") {
                last = curl("https://shop.example.com:8443/store", resolve: "shop.example.com:8443:127.0.0.1")
                return last.status == 200
            }
        } catch {
            throw TestFailure("\(error)\nlast curl: \(last)\(proxyLog)")
        }
    }

    func testTheGatewayServesEachHostnameWithItsCertificateRoutesByHTTPRouteAndRefusesTheRest() throws {
        try startGateway()
        // The right certificate per SNI: curl checks it names the host it asked for.
        let shop = curl("https://shop.example.com:8443/store/cart", resolve: "shop.example.com:8443:127.0.0.1")
        XCTAssertEqual(shop.status, 200, shop.error)
        XCTAssertEqual(server(of: shop.body), "shop")
        let api = curl("https://api.example.com:8443/v1/items", resolve: "api.example.com:8443:127.0.0.1")
        XCTAssertEqual(api.status, 200, api.error)
        XCTAssertEqual(server(of: api.body), "api")
        let shown = node.inNode("/bin/sh", "-c", "openssl s_client -connect 127.0.0.1:8443 -servername api.example.com </dev/null 2>/dev/null"
                                + " | openssl x509 -noout -subject")
        XCTAssertTrue(shown.stdout.contains("CN = api.example.com"), shown.stdout + shown.stderr)

        // ALPN: HTTP/2 to a client that offers it (curl does, first), HTTP/1.1 to one that
        // does not; both routed alike. Two requests on one HTTP/2 connection are each routed.
        XCTAssertEqual(shop.version, "2", "the gateway offers h2 by ALPN")
        let h1 = curl("https://shop.example.com:8443/store/cart", resolve: "shop.example.com:8443:127.0.0.1", options: ["--http1.1"])
        XCTAssertEqual(h1.status, 200, h1.error)
        XCTAssertEqual(h1.version, "1.1")
        XCTAssertEqual(server(of: h1.body), "shop")
        let two = node.inNode("curl", "-sS", "--max-time", "5", "--cacert", certs + "/ca/ca.crt", "--http2",
                              "--resolve", "shop.example.com:8443:127.0.0.1", "-o", "/dev/null", "-o", "/dev/null",
                              "-w", "%{http_code} %{http_version} %{num_connects}\n",
                              "https://shop.example.com:8443/store/a", "https://shop.example.com:8443/admin")
        XCTAssertEqual(two.stdout, "200 2 1\n404 2 0\n", "one HTTP/2 connection, each request routed on its own: \(two.stderr)")

        // What no route names: another path, a route's path under another host, an unknown SNI.
        XCTAssertEqual(curl("https://shop.example.com:8443/admin", resolve: "shop.example.com:8443:127.0.0.1").status, 404)
        XCTAssertEqual(curl("https://api.example.com:8443/store", resolve: "api.example.com:8443:127.0.0.1").status, 404)
        let before = try gatewayCount("no_listener")
        let unknown = curl("https://other.example.com:8443/store", resolve: "other.example.com:8443:127.0.0.1")
        XCTAssertEqual(unknown.status, 0, "no listener takes other.example.com: the connection is closed before TLS")
        try node.waitFor("the refusal to be counted") { try gatewayCount("no_listener") > before }

        // Plain HTTP: the Host header picks the routes.
        let plain = curl("http://127.0.0.1:8080/store", headers: ["Host: shop.example.com"])
        XCTAssertEqual(plain.status, 200, plain.error)
        XCTAssertEqual(server(of: plain.body), "shop")
        XCTAssertEqual(curl("http://127.0.0.1:8080/v1/items", headers: ["Host: api.example.com"]).status, 200,
                       "api's route names no listener: it takes every one its hostname fits, the plain one included")
        XCTAssertEqual(curl("http://127.0.0.1:8080/store", headers: ["Host: www.example.com"]).status, 404)

        // The backend saw the request come from the node, not from the client's address.
        let peer = ((try? JSONSerialization.jsonObject(with: Data(shop.body.utf8))) as? [String: Any])?["peer"] as? String ?? ""
        XCTAssertFalse(peer.hasPrefix("127."), "the gateway connects to backends from the node's address: \(peer)")

        // From outside the mesh the Service's own address leads nowhere: the gateway is the way in.
        let vip = try XCTUnwrap(try node.json("get", "service", "shop", "-o", "json")["clusterIP"] as? String)
        XCTAssertEqual(curl("http://\(vip):80/store").status, 0, "a client outside the mesh reached the Service's VIP directly")

        // reserved:ingress: a backend whose policy takes the gateway alone still gets its
        // requests, while the node itself (the host identity, same address) is refused.
        let shopIP = try XCTUnwrap(try node.json("get", "endpoint", "shop", "-o", "json")["ipv4"] as? String)
        XCTAssertEqual(curl("http://\(shopIP):8080/").status, 200, "no policy yet: the node reaches shop")
        _ = try node.apply("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: shop-from-gateway}
        spec:
          endpointSelector: {matchLabels: {app: shop}}
          ingress:
          - fromEntities: [ingress]
        """)
        let viaGateway = curl("https://shop.example.com:8443/store", resolve: "shop.example.com:8443:127.0.0.1")
        XCTAssertEqual(viaGateway.status, 200, viaGateway.error + proxyLog)
        XCTAssertEqual(curl("http://\(shopIP):8080/", options: ["--max-time", "2"]).status, 0,
                       "the host is not the gateway: shop's policy takes reserved:ingress only")

        // Connections through the gateway are counted, and the routes show on the Gateway.
        XCTAssertGreaterThan(try gatewayCount("accepted"), 0)
        let view = try node.ctlOK("get", "gateways")
        XCTAssertTrue(view.contains("shop-https") && view.contains("default/shop"), view)
    }

    func testTLSPassthroughRelaysTheConnectionUnopenedToTheTLSRouteBackend() throws {
        try startGateway()
        // vault ends TLS itself: curl's check of vault.example.com's certificate can only pass
        // if the bytes reached vault untouched.
        let vault = curl("https://vault.example.com:9443/secret", resolve: "vault.example.com:9443:127.0.0.1")
        XCTAssertEqual(vault.status, 200, vault.error + proxyLog)
        XCTAssertEqual(server(of: vault.body), "vault")
        let before = try gatewayCount("no_route")
        let other = curl("https://shop.example.com:9443/store", resolve: "shop.example.com:9443:127.0.0.1")
        XCTAssertEqual(other.status, 0, "no TLSRoute takes shop.example.com on the passthrough listener")
        try node.waitFor("the refusal to be counted") { try gatewayCount("no_route") > before }
        let routes = try node.ctlOK("get", "tlsroutes")
        XCTAssertTrue(routes.contains("default/public/passthrough"), routes)
    }
}
