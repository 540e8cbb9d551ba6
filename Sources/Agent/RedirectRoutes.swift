import Datapath
import Foundation
import Hummingbird
import MeshModel
import NIOCore

/// `/v1/config` (run-time settings) and `/v1/bpf/sockmap`.
enum RedirectRoutes {
    static func add(to router: Router<BasicRequestContext>, control: RedirectControl, store: Store) {
        router.get(RouterPath(RuntimeConfig.path)) { _, _ in try await APIServer.respond { try control.get() } }
        router.put("/v1/config/:key") { request, ctx in
            try await APIServer.respond {
                let req = try await APIServer.decoded(ConfigSetRequest.self, from: request, limit: 1 << 16, what: "a setting",
                                                      expected: "{\"value\": ...}")
                return try control.set(ctx.parameters.get("key") ?? "", req.value)
            }
        }
        router.get("/v1/bpf/sockmap") { _, _ in
            try await APIServer.respond {
                let endpoints = try store.endpoints()
                let byIP = Dictionary(endpoints.map { ($0.ipv4.value, $0.name) }) { a, _ in a }
                let names = Dictionary(endpoints.map { ($0.id, $0.name) }) { a, _ in a }
                return try control.redirect.sockets().sorted { ($0.ageSeconds, $0.localPort) < ($1.ageSeconds, $1.localPort) }.map { s in
                    BPFSocketRow(local: "\(byIP[s.localIP] ?? IPv4Address(s.localIP).description):\(s.localPort)",
                                 remote: "\(byIP[s.remoteIP] ?? IPv4Address(s.remoteIP).description):\(s.remotePort)",
                                 client: names[Int(s.clientEndpoint)] ?? "\(s.clientEndpoint)",
                                 server: names[Int(s.serverEndpoint)] ?? "\(s.serverEndpoint)",
                                 mode: s.mode, fallback: s.fallback, revision: Int(s.revision), ageSeconds: s.ageSeconds)
                }
            }
        }
    }
}
