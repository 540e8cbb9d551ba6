import Datapath
import Foundation
import Hummingbird
import MeshModel
import NIOCore
import NIOPosix

/// `meshctl apply`, services, namespaces and the load balancer's maps.
enum ServiceRoutes {
    static func add(to router: Router<BasicRequestContext>, policy: PolicyEngine, services: ServiceManager, cluster: ClusterAgent?) {
        router.post(RouterPath(APIPath.apply)) { request, _ in
            try await APIServer.respond(status: .ok) {
                let req = try await APIServer.decoded(PolicyApplyRequest.self, from: request, limit: 64 << 20, what: "a file to apply",
                                                      expected: "an apply request")
                if !req.dryRun { try cluster?.requireStore("apply \(req.source)") }
                let result = try await apply(req, policy: policy, services: services)
                if let cluster, !req.dryRun { try await shareApplied(req.yaml, cluster: cluster, services: services) }
                return result
            }
        }
        router.get(RouterPath(APIPath.services)) { _, _ in try await APIServer.respond { try await services.views() } }
        router.get("/v1/services/:namespace/:name") { _, ctx in
            try await APIServer.respond { try await services.view("\(ctx.parameters.get("namespace") ?? "")/\(ctx.parameters.get("name") ?? "")") }
        }
        router.delete("/v1/services/:namespace/:name") { _, ctx in
            try await APIServer.respond {
                try cluster?.requireStore("delete a service")
                let key = try await services.deleteService("\(ctx.parameters.get("namespace") ?? "")/\(ctx.parameters.get("name") ?? "")")
                try await cluster?.documentDeleted(kind: "Service", key: key)
                return ["deleted": key]
            }
        }
        router.get("/v1/httproutes") { _, _ in try await APIServer.respond { await services.routeViews() } }
        router.get("/v1/httproutes/:namespace/:name") { _, ctx in
            try await APIServer.respond { try await services.routeView("\(ctx.parameters.get("namespace") ?? "")/\(ctx.parameters.get("name") ?? "")") }
        }
        router.delete("/v1/httproutes/:namespace/:name") { _, ctx in
            try await APIServer.respond {
                try cluster?.requireStore("delete a route")
                let key = try await services.deleteRoute("\(ctx.parameters.get("namespace") ?? "")/\(ctx.parameters.get("name") ?? "")")
                try await cluster?.documentDeleted(kind: "HTTPRoute", key: key)
                return ["deleted": key]
            }
        }
        router.get("/v1/gateways") { _, _ in try await APIServer.respond { await services.gatewayViews() } }
        router.get("/v1/gateways/:namespace/:name") { _, ctx in
            try await APIServer.respond { try await services.gatewayView("\(ctx.parameters.get("namespace") ?? "")/\(ctx.parameters.get("name") ?? "")") }
        }
        router.get("/v1/tlsroutes") { _, _ in try await APIServer.respond { await services.tlsRouteViews() } }
        router.get("/v1/tlsroutes/:namespace/:name") { _, ctx in
            try await APIServer.respond { try await services.tlsRouteView("\(ctx.parameters.get("namespace") ?? "")/\(ctx.parameters.get("name") ?? "")") }
        }
        for (kind, path) in [("Gateway", "gateways"), ("TLSRoute", "tlsroutes")] {
            router.delete(RouterPath(stringLiteral: "/v1/\(path)/:namespace/:name")) { _, ctx in
                try await APIServer.respond {
                    try cluster?.requireStore("delete a \(kind)")
                    let key = try await services.deleteGatewayDocument(
                        kind: kind, "\(ctx.parameters.get("namespace") ?? "")/\(ctx.parameters.get("name") ?? "")")
                    try await cluster?.documentDeleted(kind: kind, key: key)
                    return ["deleted": key]
                }
            }
        }
        router.get(RouterPath(APIPath.namespaces)) { _, _ in try await APIServer.respond { try await services.namespaceViews() } }
        router.get("/v1/namespaces/:name") { _, ctx in
            try await APIServer.respond { try await services.namespaceView(ctx.parameters.get("name") ?? "") }
        }
        router.delete("/v1/namespaces/:name") { _, ctx in
            try await APIServer.respond {
                try cluster?.requireStore("delete a namespace")
                let name = try await services.deleteNamespace(ctx.parameters.get("name") ?? "")
                try await cluster?.documentDeleted(kind: "Namespace", key: name)
                return ["deleted": name]
            }
        }
        router.get(RouterPath(APIPath.bpfLB)) { _, _ in
            try await APIServer.respondOffPool { try services.kernelRows() }
        }
    }

    /// What a cluster member applied becomes the cluster's: each document in etcd, a
    /// Service with the cluster IP this node gave it.
    static func shareApplied(_ yaml: String, cluster: ClusterAgent, services: ServiceManager) async throws(MeshError) {
        var ips: [String: String] = [:]
        for v in (try? await services.views()) ?? [] { ips["\(v.namespace)/\(v.name)"] = v.clusterIP.description }
        do { try await cluster.documentsApplied(yaml: yaml, clusterIPs: ips) } catch {
            throw MeshError(.unavailable, "applied on this node, but not stored in the cluster: \(error.message)",
                            hint: "apply it again once etcd answers; until then the next resync may undo it here")
        }
    }

    /// A file of any supported kinds, whole or not at all: everything is parsed first;
    /// services and namespaces are checked and committed, then the policies published; if
    /// that fails, the services and namespaces are put back as they were.
    static func apply(_ req: PolicyApplyRequest, policy: PolicyEngine, services: ServiceManager) async throws -> ApplyResult {
        let start = ContinuousClock.now
        let manifest = try await NIOThreadPool.singleton.runIfActive { () throws -> Manifest in
            try Manifest.read(documents: try YAMLTree.documents(req.yaml, source: req.source), source: req.source)
        }
        let (serviceChanges, undo) = try await services.apply(services: manifest.services, namespaces: manifest.namespaces,
                                                              routes: manifest.routes,
                                                              gatewayDocuments: manifest.gateways.map(GatewayDocument.gateway)
                                                                  + manifest.tlsRoutes.map(GatewayDocument.tlsRoute),
                                                              source: req.source, dryRun: req.dryRun)
        var changes: [String] = []
        var policyResult: PolicyApplyResult?
        if !manifest.policyDocuments.isEmpty {
            do {
                let result = try await policy.apply(trees: manifest.policyDocuments.map(\.tree), parsed: manifest.policies, warnings: [],
                                                    text: manifest.policyDocuments.count == 1 && manifest.services.isEmpty && manifest.namespaces.isEmpty && manifest.routes.isEmpty
                                                        && manifest.gateways.isEmpty && manifest.tlsRoutes.isEmpty ? req.yaml : nil,
                                                    dryRun: req.dryRun, start: start)
                policyResult = result
                changes += result.documents.map { "policy/\($0) \(req.dryRun ? "valid (dry run)" : "applied")" }
            } catch {
                if !req.dryRun { await services.revert(undo) }
                throw error
            }
        }
        return ApplyResult(changes: serviceChanges + changes, policy: policyResult, dryRun: req.dryRun, warnings: manifest.warnings)
    }
}
