import XCTest
@testable import Agent
import Datapath
import MeshModel

/// What the policy engine gives the kernel when it keeps the revision in force: the next
/// revision as changes. Applied to the old revision's entries they must give exactly the
/// new one's, whatever changed; lists out of the compiler's order give none (the engine
/// then publishes the whole revision).
final class PolicyChangesTests: XCTestCase {
    func compile(_ endpoints: [PolicyCompiler.EndpointInfo]) throws -> PolicyCompiler.Result {
        let yaml = """
            apiVersion: cilium.io/v2
            kind: CiliumNetworkPolicy
            metadata: {name: p}
            spec:
              endpointSelector: {matchLabels: {app: server}}
              ingress:
              - fromEndpoints: [{matchLabels: {app: client}}]
                toPorts: [{ports: [{port: "8080", protocol: TCP}, {port: "9000", endPort: 9100, protocol: ANY}]}]
              - fromCIDR: [198.18.0.0/24, 198.18.7.1/32]
              egressDeny:
              - toEndpoints: [{matchLabels: {app: db}}]
            """
        let policies = try PolicyParser.parse(documents: try YAMLTree.documents(yaml, source: "t.yaml"), source: "t.yaml")
        return PolicyCompiler.compile(policies: policies, endpoints: endpoints, hostAddresses: [IPv4Address("169.254.1.1")!])
    }

    func endpoint(_ id: Int, _ app: String) throws -> PolicyCompiler.EndpointInfo {
        .init(id: id, name: "e\(id)", labels: try Labels(["app": app]), ipv4: IPv4Address("10.200.0.\(id)")!)
    }

    /// The old revision's entries with the changes applied, by kernel key.
    func applied<T: Hashable, K: Hashable>(_ old: [T], changed: [T], gone: [T], key: (T) -> K) -> Set<T> {
        var byKey = Dictionary(old.map { (key($0), $0) }, uniquingKeysWith: { a, _ in a })
        for e in gone { byKey[key(e)] = nil }
        for e in changed { byKey[key(e)] = e }
        return Set(byKey.values)
    }

    func testChangesTurnTheRevisionInForceIntoTheNextOne() throws {
        let steps: [[PolicyCompiler.EndpointInfo]] = [
            [try endpoint(1, "server"), try endpoint(2, "client"), try endpoint(3, "db")],
            [try endpoint(1, "server"), try endpoint(2, "other"), try endpoint(3, "db")], // a client relabelled out
            [try endpoint(1, "server"), try endpoint(2, "other"), try endpoint(3, "db"), try endpoint(4, "server")], // a subject created
            [try endpoint(2, "client"), try endpoint(3, "client"), try endpoint(4, "server")], // a subject deleted, two clients
            [],
        ]
        var old = try compile([])
        for (i, eps) in steps.enumerated() {
            let new = try compile(eps)
            let c = try XCTUnwrap(PolicyEngine.changes(from: old, to: new), "step \(i)")
            let wantIPCache = Set(new.ipcache.map(PolicyEngine.datapathEntry)), wantPolicy = Set(new.entries.map(PolicyEngine.datapathEntry))
            let wantEnforcement = Set(new.enforcement.map(PolicyEngine.datapathEntry))
            XCTAssertEqual(applied(old.ipcache.map(PolicyEngine.datapathEntry), changed: c.ipcache, gone: c.ipcacheGone,
                                   key: { "\($0.address)/\($0.prefixLength)" }), wantIPCache, "step \(i): ipcache")
            XCTAssertEqual(applied(old.entries.map(PolicyEngine.datapathEntry), changed: c.policy, gone: c.policyGone,
                                   key: { "\($0.endpointID) \($0.direction) \($0.identity) \($0.proto) \($0.portPrefix)/\($0.portPrefixLength)" }),
                           wantPolicy, "step \(i): policy")
            XCTAssertEqual(applied(old.enforcement.map(PolicyEngine.datapathEntry), changed: c.enforcement, gone: c.enforcementGone,
                                   key: \.endpointID), wantEnforcement, "step \(i): enforcement")
            // Nothing is sent that did not change.
            XCTAssertTrue(Set(c.policy).isDisjoint(with: Set(old.entries.map(PolicyEngine.datapathEntry))), "step \(i): unchanged entries sent")
            XCTAssertTrue(Set(c.ipcache).isDisjoint(with: Set(old.ipcache.map(PolicyEngine.datapathEntry))), "step \(i): unchanged ipcache sent")
            old = new
        }
        // The same revision again: no change at all.
        XCTAssertEqual(PolicyEngine.changes(from: old, to: old)?.isEmpty, true)
    }

    func testListsOutOfTheCompilersOrderGiveNoChanges() throws {
        let a = try compile([try endpoint(1, "server"), try endpoint(2, "client")])
        var shuffled = a
        shuffled.entries.reverse()
        XCTAssertGreaterThan(a.entries.count, 1)
        XCTAssertNil(PolicyEngine.changes(from: a, to: shuffled))
        XCTAssertNil(PolicyEngine.changes(from: shuffled, to: a))
        var twice = a
        twice.ipcache.append(a.ipcache.last!)
        XCTAssertNil(PolicyEngine.changes(from: a, to: twice), "a key twice")
    }
}
