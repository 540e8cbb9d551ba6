import Datapath
import Foundation
import Hummingbird
import MeshModel
import NIOCore
import NIOPosix

/// `meshctl apply`, services, namespaces and the load balancer's maps.
enum ServiceRoutes {
    static func add(to router: Router<BasicRequestContext>, policy: PolicyEngine, services: ServiceManager) {
        router.post(RouterPath(APIPath.apply)) { request, _ in
            try await APIServer.respond(status: .ok) {
                let body = try await APIServer.body(of: request, limit: 64 << 20, what: "a file to apply")
                let req: PolicyApplyRequest
                do { req = try MeshJSON.decoder().decode(PolicyApplyRequest.self, from: Data(buffer: body)) } catch {
                    throw MeshError.invalid("request body is not an apply request: \(APIServer.describe(error))")
                }
                return try await apply(req, policy: policy, services: services)
            }
        }
        router.get(RouterPath(APIPath.services)) { _, _ in try await APIServer.respond { try await services.views() } }
        router.get("/v1/services/:namespace/:name") { _, ctx in
            try await APIServer.respond { try await services.view("\(ctx.parameters.get("namespace") ?? "")/\(ctx.parameters.get("name") ?? "")") }
        }
        router.delete("/v1/services/:namespace/:name") { _, ctx in
            try await APIServer.respond {
                ["deleted": try await services.deleteService("\(ctx.parameters.get("namespace") ?? "")/\(ctx.parameters.get("name") ?? "")")]
            }
        }
        router.get("/v1/httproutes") { _, _ in try await APIServer.respond { await services.routeViews() } }
        router.get("/v1/httproutes/:namespace/:name") { _, ctx in
            try await APIServer.respond { try await services.routeView("\(ctx.parameters.get("namespace") ?? "")/\(ctx.parameters.get("name") ?? "")") }
        }
        router.delete("/v1/httproutes/:namespace/:name") { _, ctx in
            try await APIServer.respond {
                ["deleted": try await services.deleteRoute("\(ctx.parameters.get("namespace") ?? "")/\(ctx.parameters.get("name") ?? "")")]
            }
        }
        router.get(RouterPath(APIPath.namespaces)) { _, _ in try await APIServer.respond { try await services.namespaceViews() } }
        router.get("/v1/namespaces/:name") { _, ctx in
            try await APIServer.respond { try await services.namespaceView(ctx.parameters.get("name") ?? "") }
        }
        router.delete("/v1/namespaces/:name") { _, ctx in
            try await APIServer.respond { ["deleted": try await services.deleteNamespace(ctx.parameters.get("name") ?? "")] }
        }
        router.get(RouterPath(APIPath.bpfLB)) { _, _ in
            try await APIServer.respondOffPool { try services.kernelRows() }
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
                                                              routes: manifest.routes, source: req.source, dryRun: req.dryRun)
        var changes: [String] = []
        var policyResult: PolicyApplyResult?
        if !manifest.policyDocuments.isEmpty {
            do {
                let result = try await policy.apply(trees: manifest.policyDocuments.map(\.tree), parsed: manifest.policies, warnings: [],
                                                    text: manifest.policyDocuments.count == 1 && manifest.services.isEmpty && manifest.namespaces.isEmpty && manifest.routes.isEmpty ? req.yaml : nil,
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
