import XCTest
@testable import MeshModel

/// The compiler's output judged the way the kernel reads it: an ipcache longest-prefix
/// match for the peer's identity, then two longest-match lookups in the policy entries
/// (the peer's own and the any-peer ones), a deny in either winning (bpf/lib/policy.h).
/// The expected verdicts are written from the policies' documented meaning.
final class PolicyCompilerTests: XCTestCase {
    struct Kernel {
        let result: PolicyCompiler.Result

        func identity(of address: String) -> UInt32 {
            let ip = IPv4Address(address)!
            let hit = result.ipcache.filter { $0.prefix.contains(ip) }.max { $0.prefix.prefixLength < $1.prefix.prefixLength }
            return hit?.identity ?? PolicyCompiler.worldIdentity
        }

        func lookup(_ ep: Int, _ dir: TrafficDirection, _ identity: UInt32, _ proto: UInt8, _ port: UInt16) -> PolicyCompiler.Entry? {
            result.entries.filter { e in
                guard e.endpointID == ep, e.direction == dir, e.identity == identity else { return false }
                if e.proto == 0 { return true }
                guard e.proto == proto else { return false }
                let mask: UInt16 = e.portPrefixLength == 0 ? 0 : ~UInt16(0) << (16 - e.portPrefixLength)
                return port & mask == e.portPrefix & mask
            }.max { ($0.proto == 0 ? -1 : $0.portPrefixLength) < ($1.proto == 0 ? -1 : $1.portPrefixLength) }
        }

        /// "allow" or "deny" for a new flow of endpoint `ep` in `dir` with peer `address`.
        func verdict(_ ep: Int, _ dir: TrafficDirection, peer address: String, _ proto: PortRange.L4Protocol = .tcp, port: UInt16) -> String {
            guard let e = result.enforcement.first(where: { $0.endpointID == ep }),
                  dir == .ingress ? e.ingress : e.egress else { return "allow" }
            let id = identity(of: address)
            let a = lookup(ep, dir, id, proto.number, port), b = lookup(ep, dir, PolicyCompiler.anyIdentity, proto.number, port)
            if a?.action == .deny || b?.action == .deny { return "deny" }
            return a != nil || b != nil ? "allow" : "deny"
        }
    }

    static let server = PolicyCompiler.EndpointInfo(id: 1, name: "server", labels: try! Labels(["app": "server"]), ipv4: IPv4Address("10.200.0.1")!)
    static let web = PolicyCompiler.EndpointInfo(id: 2, name: "web", labels: try! Labels(["app": "web"]), ipv4: IPv4Address("10.200.0.2")!)
    static let other = PolicyCompiler.EndpointInfo(id: 3, name: "other", labels: try! Labels(["app": "other"]), ipv4: IPv4Address("10.200.0.3")!)

    func compile(_ docs: PolicyTree..., endpoints: [PolicyCompiler.EndpointInfo] = [server, web, other],
                 identities: [PolicyCompiler.IdentityKey: UInt32] = [:]) throws -> Kernel {
        Kernel(result: PolicyCompiler.compile(policies: try PolicyParser.parse(documents: docs, source: "t.yaml"), endpoints: endpoints,
                                              hostAddresses: [IPv4Address("169.254.1.1")!], identities: identities))
    }

    func testPortRangesBecomeTheFewestAlignedBlocksCoveringExactlyTheRange() {
        // 8080-8090: 8080/13 (8080-8087), 8088/15 (8088-8089), 8090/16.
        XCTAssertEqual(PolicyCompiler.portBlocks(from: 8080, to: 8090).map { "\($0.0)/\($0.1)" }, ["8080/13", "8088/15", "8090/16"])
        XCTAssertEqual(PolicyCompiler.portBlocks(from: 0, to: 65535).count, 1)
        XCTAssertEqual(PolicyCompiler.portAtoms([PortRange(proto: .tcp, from: 1, to: 65535)]).count, 1, "every port is one block")
        for (from, to) in [(80, 80), (1, 1023), (1024, 65535), (30000, 30100), (443, 8443), (65534, 65535)] {
            let blocks = PolicyCompiler.portBlocks(from: UInt16(from), to: UInt16(to))
            var covered = Set<Int>()
            for (prefix, bits) in blocks {
                let size = 1 << (16 - bits)
                XCTAssertEqual(Int(prefix) % size, 0, "block \(prefix)/\(bits) is aligned")
                for p in Int(prefix)..<(Int(prefix) + size) { XCTAssertTrue(covered.insert(p).inserted, "blocks overlap at \(p)") }
            }
            XCTAssertEqual(covered, Set(from...to), "\(from)-\(to)")
        }
    }

    func testDenyBeatsAllowWhateverTheirOrderAndSpecificity() throws {
        let k = try compile(
            TestDocs.cnp("allow-web", spec: ["endpointSelector": ["matchLabels": ["app": "server"]],
                                             "ingress": [["fromEndpoints": [["matchLabels": ["app": "web"]]]]],
                                             "ingressDeny": [["fromEndpoints": [["matchLabels": ["app": "web"]]],
                                                              "toPorts": [["ports": [["port": "22", "protocol": "TCP"]]]]]]]),
            TestDocs.cnp("ssh-for-all", spec: ["endpointSelector": ["matchLabels": ["app": "server"]],
                                               "ingress": [["toPorts": [["ports": [["port": "20", "endPort": 23, "protocol": "TCP"]]]]]]]),
            TestDocs.cnp("no-dns", spec: ["endpointSelector": ["matchLabels": ["app": "server"]],
                                          "ingressDeny": [["toPorts": [["ports": [["port": "53"]]]]]]]))
        XCTAssertEqual(k.verdict(1, .ingress, peer: "10.200.0.2", port: 22), "deny", "web's deny on 22 beats its allow-all and the any-peer allow")
        XCTAssertEqual(k.verdict(1, .ingress, peer: "10.200.0.2", port: 80), "allow")
        XCTAssertEqual(k.verdict(1, .ingress, peer: "10.200.0.2", .udp, port: 53), "deny", "an any-peer deny beats web's allow-all")
        XCTAssertEqual(k.verdict(1, .ingress, peer: "10.200.0.3", port: 22), "allow", "other gets 20-23 from ssh-for-all")
        XCTAssertEqual(k.verdict(1, .ingress, peer: "10.200.0.3", port: 24), "deny", "and nothing else")
        XCTAssertEqual(k.verdict(2, .ingress, peer: "10.200.0.3", port: 22), "allow", "web itself is not selected")
        XCTAssertEqual(k.verdict(1, .egress, peer: "10.200.0.2", port: 22), "allow", "no egress section: egress open")
    }

    func testExceptCarvesARangeOutOfACIDRAndALongerCIDRCanAllowItAgain() throws {
        let k = try compile(TestDocs.cnp("out", spec: [
            "endpointSelector": ["matchLabels": ["app": "web"]],
            "egress": [["toCIDRSet": [["cidr": "192.0.0.0/8", "except": ["192.168.0.0/16"]]]],
                       ["toCIDR": ["192.168.7.0/24"], "toPorts": [["ports": [["port": "443", "protocol": "TCP"]]]]]],
        ]))
        XCTAssertEqual(k.verdict(2, .egress, peer: "192.0.2.1", port: 80), "allow")
        XCTAssertEqual(k.verdict(2, .egress, peer: "192.168.1.1", port: 80), "deny", "inside the except")
        XCTAssertEqual(k.verdict(2, .egress, peer: "192.168.7.9", port: 443), "allow", "a longer CIDR inside the except, on its port")
        XCTAssertEqual(k.verdict(2, .egress, peer: "192.168.7.9", port: 80), "deny")
        XCTAssertEqual(k.verdict(2, .egress, peer: "8.8.8.8", port: 80), "deny", "the world outside the CIDR")
        XCTAssertEqual(k.verdict(2, .egress, peer: "10.200.0.1", port: 80), "deny", "an endpoint is not a CIDR peer")
    }

    /// The memo keeps what a compile derives from each policy (CIDRs, their identity keys
    /// and numbers, port blocks, the CIDR part of the ipcache): every compile through one
    /// memo, over a run of changes, must equal a compile without it.
    func testAMemoNeverChangesWhatACompileGives() throws {
        typealias Key = PolicyCompiler.IdentityKey
        let host = IPv4Address("169.254.1.1")!
        let cidrs = TestDocs.cnp("cidrs", spec: [
            "endpointSelector": ["matchLabels": ["app": "server"]],
            "ingress": [["fromCIDRSet": [["cidr": "192.0.0.0/8", "except": ["192.168.0.0/16"]]],
                         "toPorts": [["ports": [["port": "8080", "endPort": 8090, "protocol": "TCP"]]]]],
                        // The /32s of an endpoint and of the host: their own entries win.
                        ["fromCIDR": ["10.200.0.2/32", "169.254.1.1/32", "198.18.0.7/32"]],
                        ["fromEndpoints": [["matchLabels": ["app": "web"]]]]],
            "egressDeny": [["toCIDR": ["203.0.113.0/24"], "toPorts": [["ports": [["port": "53"]]]]]],
        ])
        let peers = TestDocs.cnp("peers", spec: [
            "endpointSelector": ["matchLabels": ["app": "web"]],
            "ingress": [["fromEndpoints": [["matchLabels": ["app": "server"]]]], ["fromEntities": ["cluster"]]],
        ])
        var policies = try parse(cidrs, peers)
        var endpoints = [Self.server, Self.web, Self.other]
        var numbers = PolicyCompiler.filling([:], for: PolicyCompiler.identityKeys(policies: policies, endpoints: endpoints))
        let memo = PolicyCompiler.Memo()

        func check(_ step: String, file: StaticString = #filePath, line: UInt = #line) {
            // An allocator answers for every key in use.
            numbers = PolicyCompiler.filling(numbers, for: PolicyCompiler.identityKeys(policies: policies, endpoints: endpoints))
            let plain = PolicyCompiler.compile(policies: policies, endpoints: endpoints, hostAddresses: [host], identities: numbers)
            let memoised = PolicyCompiler.compile(policies: policies, endpoints: endpoints, hostAddresses: [host], identities: numbers, memo: memo)
            XCTAssertEqual(memoised.ipcache, plain.ipcache, "\(step): ipcache", file: file, line: line)
            XCTAssertEqual(memoised.entries, plain.entries, "\(step): policy entries", file: file, line: line)
            XCTAssertEqual(memoised.enforcement, plain.enforcement, "\(step): enforcement", file: file, line: line)
            XCTAssertEqual(memoised.identities, plain.identities, "\(step): identities", file: file, line: line)
            XCTAssertEqual(memoised.endpointIdentity, plain.endpointIdentity, "\(step): endpoint identities", file: file, line: line)
            XCTAssertEqual(memoised.rules, plain.rules, "\(step): rules", file: file, line: line)
            XCTAssertEqual(memoised.policyIDs, plain.policyIDs, "\(step): policy ids", file: file, line: line)
            XCTAssertEqual(memoised.l7, plain.l7, "\(step): L7 rules", file: file, line: line)
            XCTAssertEqual(memoised.authRules, plain.authRules, "\(step): ingress authentication rules", file: file, line: line)
            XCTAssertEqual(memoised.egressAuthRules, plain.egressAuthRules, "\(step): egress authentication rules", file: file, line: line)
            XCTAssertEqual(PolicyCompiler.identityKeys(policies: policies, endpoints: endpoints, memo: memo),
                           PolicyCompiler.identityKeys(policies: policies, endpoints: endpoints), "\(step): identity keys", file: file, line: line)
        }

        check("first compile")
        XCTAssertEqual(try compile(cidrs, peers).verdict(1, .ingress, peer: "10.200.0.2", port: 9999), "allow",
                       "web's endpoint entry, not its CIDR's port range, decides")
        check("again, nothing changed")
        endpoints[2].labels = try Labels(["app": "web"])
        check("other relabelled into web's label set")
        endpoints.append(.init(id: 9, name: "x", labels: try Labels(["app": "x"]), ipv4: IPv4Address("198.18.0.7")!))
        check("an endpoint on a CIDR rule's /32")
        // The allocator released a CIDR's number and gave it another (its grace passed).
        numbers[Key.cidr(try IPv4CIDR(parsing: "192.0.0.0/8"))] = Key.Scope.local.range.lowerBound + 5_000
        check("a CIDR renumbered")
        policies = try parse(cidrs, TestDocs.cnp("peers", spec: [
            "endpointSelector": ["matchLabels": ["app": "web"]],
            "egress": [["toCIDR": ["192.0.2.0/24", "10.200.0.1/32"]]],
        ]))
        check("a policy changed, with new CIDRs")
        policies = try parse(cidrs)
        check("a policy deleted")
        endpoints.removeFirst()
        check("the only subject deleted")
    }

    /// A compile through a memo remakes only the groups an endpoint change touches (see
    /// PolicyCompiler.LastCompile). Hundreds of random changes (endpoints created, deleted
    /// and relabelled, here and on other nodes; label sets renumbered; now and then a
    /// policy changed), each compiled with the memo and without: every part of the two
    /// results must be equal. The generator is seeded: a failure names its step and seed.
    func testAMemoAgreesWithAFullCompileThroughRandomEndpointChanges() throws {
        typealias Key = PolicyCompiler.IdentityKey
        for seed: UInt64 in [1, 2, 3, 4] {
            var rng = SplitMix(seed)
            let apps = ["web", "db", "cache", "api", "batch"], tiers = ["front", "back"]
            func labels() throws -> Labels {
                var l = ["app": apps[rng.below(apps.count)]]
                if rng.below(2) == 0 { l["tier"] = tiers[rng.below(tiers.count)] }
                if rng.below(4) == 0 { l["namespace"] = "prod" }
                return try Labels(l)
            }
            func selector() -> PolicyTree {
                rng.below(3) == 0 ? ["matchLabels": ["tier": .string(tiers[rng.below(tiers.count)])]]
                    : ["matchLabels": ["app": .string(apps[rng.below(apps.count)])]]
            }
            func rule(egress: Bool) -> PolicyTree {
                var r: [(String, PolicyTree)] = []
                switch rng.below(6) {
                case 0, 1: r.append((egress ? "toEndpoints" : "fromEndpoints", [selector()]))
                case 2: r.append((egress ? "toCIDR" : "fromCIDR", [.string("198.18.\(rng.below(4)).0/24"), .string("10.200.0.\(rng.below(20) + 1)/32")]))
                case 3: r.append((egress ? "toEntities" : "fromEntities", [.string(["cluster", "world", "all", "host"][rng.below(4)])]))
                case 4:
                    r.append((egress ? "toEndpoints" : "fromEndpoints", [selector()]))
                    r.append((egress ? "toCIDR" : "fromCIDR", ["198.18.9.0/24"]))
                default: break
                }
                switch rng.below(4) {
                case 0: r.append(("toPorts", [["ports": [["port": .string("\(8000 + rng.below(4))"), "protocol": "TCP"]]]]))
                case 1: r.append(("toPorts", [["ports": [["port": "80", "protocol": "TCP"]], "rules": ["http": [["method": "GET"]]]]]))
                case 2: r.append(("toPorts", [["ports": [["port": "5000", "endPort": 5100, "protocol": "ANY"]]]]))
                default: break
                }
                if rng.below(6) == 0 { r.append(("authentication", ["mode": "required"])) }
                return .map(r)
            }
            func policy(_ name: String) -> PolicyTree {
                var spec: [(String, PolicyTree)] = [("endpointSelector", selector())]
                spec.append(("ingress", .list((0..<(1 + rng.below(3))).map { _ in rule(egress: false) })))
                if rng.below(2) == 0 { spec.append(("egress", .list((0..<(1 + rng.below(2))).map { _ in rule(egress: true) }))) }
                if rng.below(3) == 0 { spec.append(("ingressDeny", [["fromEndpoints": [selector()], "toPorts": [["ports": [["port": "8001"]]]]]])) }
                return TestDocs.cnp(name, spec: .map(spec))
            }
            var docs = (0..<4).map { policy("p\($0)") }
            var policies = try PolicyParser.parse(documents: docs, source: "t.yaml")
            var endpoints: [PolicyCompiler.EndpointInfo] = []
            var nextID = 1
            func newEndpoint() throws {
                let local = rng.below(4) != 0
                let id = local ? nextID : -nextID
                endpoints.append(.init(id: id, name: "e\(nextID)", labels: try labels(),
                                       ipv4: IPv4Address("10.200.\(nextID / 250).\(nextID % 250 + 1)")!, local: local,
                                       tunnel: !local && rng.below(2) == 0))
                nextID += 1
            }
            for _ in 0..<12 { try newEndpoint() }
            var numbers: [Key: UInt32] = [:]
            let memo = PolicyCompiler.Memo()
            for step in 0..<250 {
                var what: String
                switch rng.below(10) {
                case 0, 1, 2, 3:
                    let i = rng.below(endpoints.count)
                    endpoints[i].labels = try labels()
                    what = "relabel \(endpoints[i].name)"
                case 4, 5:
                    try newEndpoint()
                    what = "create \(endpoints.last!.name)"
                case 6:
                    what = "delete \(endpoints.remove(at: rng.below(endpoints.count)).name)"
                    if endpoints.isEmpty { try newEndpoint() }
                case 7:
                    // The allocator gives a label set in use another number.
                    let ep = endpoints[rng.below(endpoints.count)]
                    numbers[.labels(ep.labels)] = Key.Scope.global.range.lowerBound + 40_000 + UInt32(step)
                    what = "renumber \(ep.labels)"
                case 8:
                    let i = rng.below(docs.count)
                    docs[i] = policy("p\(i)")
                    policies = try PolicyParser.parse(documents: docs, source: "t.yaml")
                    what = "change a policy"
                default:
                    what = "nothing"
                }
                numbers = PolicyCompiler.filling(numbers, for: PolicyCompiler.identityKeys(policies: policies, endpoints: endpoints))
                let host = [IPv4Address("169.254.1.1")!]
                let plain = PolicyCompiler.compile(policies: policies, endpoints: endpoints, hostAddresses: host, identities: numbers)
                let memoised = PolicyCompiler.compile(policies: policies, endpoints: endpoints, hostAddresses: host, identities: numbers, memo: memo)
                let at = "seed \(seed), step \(step) (\(what))"
                func same<T: Equatable>(_ a: [T], _ b: [T], _ part: String) -> Bool {
                    guard a != b else { return true }
                    let i = (0..<min(a.count, b.count)).first { a[$0] != b[$0] } ?? min(a.count, b.count)
                    XCTFail("\(at): \(part) differ at \(i) of \(a.count) (memo) and \(b.count) (full): " +
                            "\(i < a.count ? "\(a[i])" : "none") against \(i < b.count ? "\(b[i])" : "none")")
                    return false
                }
                guard same(memoised.entries, plain.entries, "policy entries"), same(memoised.ipcache, plain.ipcache, "ipcache"),
                      same(memoised.enforcement, plain.enforcement, "enforcement"), same(memoised.rules, plain.rules, "rules"),
                      same(memoised.l7, plain.l7, "L7 rules"), same(memoised.authRules, plain.authRules, "authentication rules"),
                      same(memoised.egressAuthRules, plain.egressAuthRules, "egress authentication rules") else { return }
                XCTAssertEqual(memoised.identities, plain.identities, "\(at): identities")
            }
        }
    }

    /// A small seeded generator: the same seed, the same run.
    struct SplitMix {
        var state: UInt64
        init(_ seed: UInt64) { state = seed }
        mutating func below(_ n: Int) -> Int {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return Int((z ^ (z >> 31)) % UInt64(n))
        }
    }

    func testIdentitiesAreTheAllocatorsAndStayWhenOtherLabelSetsComeAndGo() throws {
        typealias Key = PolicyCompiler.IdentityKey
        let given: [Key: UInt32] = [.labels(Self.server.labels): 900, .labels(Self.web.labels): 300]
        let aa = PolicyCompiler.EndpointInfo(id: 4, name: "aa", labels: try Labels(["app": "aa"]), ipv4: IPv4Address("10.200.0.4")!)
        let policy = TestDocs.cnp("p", spec: ["endpointSelector": ["matchLabels": ["app": "server"]],
                                              "ingress": [["fromEndpoints": [["matchLabels": ["app": "web"]]]]]])
        let before = try compile(policy, endpoints: [Self.server, Self.web], identities: given)
        let after = try compile(policy, endpoints: [aa, Self.server, Self.web, Self.other], identities: given)
        for k in [before, after] {
            XCTAssertEqual(k.result.endpointIdentity[1], 900)
            XCTAssertEqual(k.result.endpointIdentity[2], 300)
            XCTAssertEqual(k.identity(of: "10.200.0.2"), 300, "the ipcache carries the allocator's number")
            XCTAssertTrue(k.result.entries.contains { $0.endpointID == 1 && $0.identity == 300 && $0.action == .allow })
        }
        // Label sets the allocator has no number for are numbered past the highest given,
        // never onto a given one.
        XCTAssertEqual(Set([after.result.endpointIdentity[3], after.result.endpointIdentity[4]]), [901, 902])
        XCTAssertEqual(PolicyCompiler.identityKeys(policies: [], endpoints: [Self.server, Self.web, aa]).count, 3)
    }

    func testAuthenticationMarksTheEntriesItCoversAndIsNeverOpenedByAnotherAllow() throws {
        let remote = PolicyCompiler.EndpointInfo(id: -1, name: "n2/web", labels: Self.web.labels, ipv4: IPv4Address("10.201.0.2")!,
                                                 local: false, tunnel: true)
        let k = try compile(TestDocs.cnp("secure", spec: [
            "endpointSelector": ["matchLabels": ["app": "server"]],
            "ingress": [
                ["fromEndpoints": [["matchLabels": ["app": "web"]]], "authentication": ["mode": "required"],
                 "toPorts": [["ports": [["port": "5432", "protocol": "TCP"]]]]],
                // A broader L4 allow for everyone on 5432-5433 must not lift the requirement on 5432.
                ["fromEntities": ["all"], "toPorts": [["ports": [["port": "5432", "endPort": 5433, "protocol": "TCP"]]]]],
            ],
        ]), endpoints: [Self.server, Self.web, Self.other, remote])
        func entry(_ identity: UInt32, _ port: UInt16) -> PolicyCompiler.Entry? { k.lookup(1, .ingress, identity, 6, port) }
        let web = k.identity(of: "10.200.0.2")
        XCTAssertEqual(entry(web, 5432)?.auth, true)
        XCTAssertEqual(entry(web, 5432)?.action, .allow)
        XCTAssertEqual(entry(PolicyCompiler.anyIdentity, 5433)?.auth, false, "the other rule's own port needs no proof")
        XCTAssertEqual(k.identity(of: "10.201.0.2"), web, "the remote endpoint shares its label set's identity")
        XCTAssertEqual(k.result.ipcache.first { $0.prefix.network == IPv4Address("10.201.0.2")! }?.tunnel, true)
        XCTAssertEqual(k.result.ipcache.first { $0.prefix.network == IPv4Address("10.200.0.2")! }?.tunnel, false,
                       "a local endpoint is never reached through a tunnel")
        // What the proxy checks a tunnelled peer against.
        XCTAssertEqual(k.result.authRules.map(\.endpoint), [IPv4Address("10.200.0.1")!])
        let rule = try XCTUnwrap(k.result.authRules.first?.rules.first)
        XCTAssertTrue(rule.covers(identity: web, port: 5432))
        XCTAssertFalse(rule.covers(identity: web, port: 5433))
        XCTAssertFalse(rule.covers(identity: k.identity(of: "10.200.0.3"), port: 5432), "other is not named")

        // A deny over the same peer and port wins and carries no requirement.
        let denied = try compile(TestDocs.cnp("secure", spec: [
            "endpointSelector": ["matchLabels": ["app": "server"]],
            "ingress": [["fromEndpoints": [["matchLabels": ["app": "web"]]], "authentication": ["mode": "required"]]],
            "ingressDeny": [["fromEndpoints": [["matchLabels": ["app": "web"]]], "toPorts": [["ports": [["port": "22"]]]]]],
        ]))
        let deny = denied.lookup(1, .ingress, denied.identity(of: "10.200.0.2"), 6, 22)
        XCTAssertEqual(deny?.action, .deny)
        XCTAssertEqual(deny?.auth, false)
    }

    func testTheIngressEntityIsTheGatewaysIdentityAloneNotTheHosts() throws {
        let k = try compile(TestDocs.cnp("from-gateway", spec: [
            "endpointSelector": ["matchLabels": ["app": "server"]],
            "ingress": [["fromEntities": ["ingress"], "toPorts": [["ports": [["port": "8080", "protocol": "TCP"]]]]]],
        ]))
        XCTAssertEqual(k.lookup(1, .ingress, PolicyCompiler.ingressIdentity, 6, 8080)?.action, .allow)
        XCTAssertNotEqual(k.lookup(1, .ingress, PolicyCompiler.hostIdentity, 6, 8080)?.action, .allow, "the host is not the gateway")
        XCTAssertEqual(k.result.identities[PolicyCompiler.ingressIdentity]?.description, "reserved:ingress")
        XCTAssertNotEqual(PolicyCompiler.ingressIdentity, PolicyCompiler.hostIdentity)
    }

    func testEgressAuthenticationMarksTheSourcesEntriesAndListsItsRulesApart() throws {
        let remote = PolicyCompiler.EndpointInfo(id: -1, name: "n2/server", labels: Self.server.labels, ipv4: IPv4Address("10.201.0.1")!,
                                                 local: false)
        let k = try compile(TestDocs.cnp("prove-server", spec: [
            "endpointSelector": ["matchLabels": ["app": "web"]],
            "egress": [
                ["toEndpoints": [["matchLabels": ["app": "server"]]], "authentication": ["mode": "required"],
                 "toPorts": [["ports": [["port": "5432", "protocol": "TCP"]]]]],
                ["toEndpoints": [["matchLabels": ["app": "server"]]], "toPorts": [["ports": [["port": "80", "protocol": "TCP"]]]]],
            ],
        ]), endpoints: [Self.server, Self.web, Self.other, remote])
        let server = k.identity(of: "10.200.0.1")
        XCTAssertEqual(k.identity(of: "10.201.0.1"), server)
        XCTAssertEqual(k.lookup(2, .egress, server, 6, 5432)?.auth, true)
        XCTAssertEqual(k.lookup(2, .egress, server, 6, 80)?.auth, false, "the other rule's port goes in the clear")
        XCTAssertEqual(k.lookup(2, .egress, server, 6, 80)?.action, .allow)
        // The source's rules are what the proxy reads; the destination's ingress list (what
        // makes other nodes tunnel to it) stays empty.
        XCTAssertEqual(k.result.authRules, [])
        XCTAssertEqual(k.result.egressAuthRules.map(\.endpoint), [IPv4Address("10.200.0.2")!])
        let rule = try XCTUnwrap(k.result.egressAuthRules.first?.rules.first)
        XCTAssertTrue(rule.covers(identity: server, port: 5432))
        XCTAssertFalse(rule.covers(identity: server, port: 80))
        XCTAssertFalse(rule.covers(identity: k.identity(of: "10.200.0.3"), port: 5432))
    }
}
