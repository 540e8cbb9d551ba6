import XCTest
@testable import MeshModel

/// Builders for test documents, so that each test spells out only the part it is about.
enum TestDocs {
    static func cnp(_ name: String = "web", namespace: String? = nil, spec: PolicyTree) -> PolicyTree {
        document("cilium.io/v2", "CiliumNetworkPolicy", name: name, namespace: namespace, body: [("spec", spec)])
    }

    static func cnp(_ name: String = "web", namespace: String? = nil, specs: [PolicyTree]) -> PolicyTree {
        document("cilium.io/v2", "CiliumNetworkPolicy", name: name, namespace: namespace, body: [("specs", .list(specs))])
    }

    static func np(_ name: String = "web", namespace: String? = nil, spec: PolicyTree) -> PolicyTree {
        document("networking.k8s.io/v1", "NetworkPolicy", name: name, namespace: namespace, body: [("spec", spec)])
    }

    static func document(_ apiVersion: String, _ kind: String, name: String, namespace: String?,
                         body: [(String, PolicyTree)]) -> PolicyTree {
        var metadata: [(String, PolicyTree)] = [("name", .string(name))]
        if let namespace { metadata.append(("namespace", .string(namespace))) }
        return .map([("apiVersion", .string(apiVersion)), ("kind", .string(kind)), ("metadata", .map(metadata))] + body)
    }
}

func parse(_ documents: PolicyTree..., source: String = "test.yaml") throws(MeshError) -> [Policy] {
    try PolicyParser.parse(documents: documents, source: source)
}

/// A selector of endpoints in `namespace` only, as policies write them by default.
func selector(_ labels: [String: String] = [:], in namespace: String = "default",
              _ expressions: [EndpointSelector.Requirement] = []) -> EndpointSelector {
    EndpointSelector(matchLabels: labels, matchExpressions: expressions, namespaces: .names([namespace]))
}

func endpoint(_ labels: [String: String]) -> Labels {
    do { return try Labels(labels) } catch {
        XCTFail("test labels \(labels) are invalid: \(error)")
        return Labels()
    }
}

/// Realistic documents of both kinds, each asserted down to the exact Policy values.
final class PolicyParserTests: XCTestCase {
    // MARK: CiliumNetworkPolicy

    func testCiliumIngressFromEndpointsOnOnePortStaysInsideThePolicysNamespace() throws {
        let doc = TestDocs.cnp("web-from-frontend", namespace: "shop", spec: [
            "description": "frontend may call web on :80",
            "endpointSelector": ["matchLabels": ["app": "web"]],
            "ingress": [
                ["fromEndpoints": [["matchLabels": ["app": "frontend"]]],
                 "toPorts": [["ports": [["port": "80", "protocol": "TCP"]]]]],
            ],
        ])
        XCTAssertEqual(try parse(doc), [
            Policy(name: "web-from-frontend", namespace: "shop", kind: .ciliumNetworkPolicy,
                   subject: selector(["app": "web"], in: "shop"), enforceIngress: true, enforceEgress: false,
                   rules: [PolicyRule(direction: .ingress, action: .allow, path: "spec.ingress[0]",
                                      peers: [.endpoints(selector(["app": "frontend"], in: "shop"))],
                                      ports: [PortRange(proto: .tcp, from: 80, to: 80)])]),
        ])
    }

    func testCiliumEgressToCIDRsEntitiesAndDNSOverUDP() throws {
        let doc = TestDocs.cnp("api-egress", spec: [
            "endpointSelector": ["matchLabels": ["app": "api", "env": "prod"]],
            "egress": [
                ["toCIDR": ["10.20.0.0/16"],
                 "toCIDRSet": [["cidr": "192.168.0.0/16", "except": ["192.168.10.0/24", "192.168.11.0/24"]]],
                 "toPorts": [["ports": [["port": 5432, "protocol": "TCP"]]]]],
                ["toEntities": ["world", "host"],
                 "toPorts": [["ports": [["port": 53, "protocol": "UDP"], ["port": "53", "protocol": "TCP"]]]]],
            ],
        ])
        let policy = try XCTUnwrap(try parse(doc).first)
        XCTAssertEqual(policy.key, "default/api-egress")
        XCTAssertEqual(policy.subject, selector(["app": "api", "env": "prod"]))
        XCTAssertFalse(policy.enforceIngress)
        XCTAssertTrue(policy.enforceEgress)
        XCTAssertEqual(policy.rules, [
            PolicyRule(direction: .egress, action: .allow, path: "spec.egress[0]",
                       peers: [.cidr(cidr("10.20.0.0/16"), except: []),
                               .cidr(cidr("192.168.0.0/16"), except: [cidr("192.168.10.0/24"), cidr("192.168.11.0/24")])],
                       ports: [PortRange(proto: .tcp, from: 5432, to: 5432)]),
            PolicyRule(direction: .egress, action: .allow, path: "spec.egress[1]",
                       peers: [.entity(.world), .entity(.host)],
                       ports: [PortRange(proto: .udp, from: 53, to: 53), PortRange(proto: .tcp, from: 53, to: 53)]),
        ])
    }

    func testCiliumSpecsGiveOnePolicyPerEntryNamedWithItsIndex() throws {
        let doc = TestDocs.cnp("tiers", namespace: "shop", specs: [
            ["endpointSelector": ["matchLabels": ["tier": "db"]],
             "ingress": [["fromEndpoints": [["matchLabels": ["tier": "app"]]]]]],
            ["endpointSelector": ["matchLabels": ["tier": "app"]],
             "egress": [["toEndpoints": [["matchLabels": ["tier": "db"]]],
                         "toPorts": [["ports": [["port": "5432"]]]]]]],
        ])
        XCTAssertEqual(try parse(doc), [
            Policy(name: "tiers#0", namespace: "shop", kind: .ciliumNetworkPolicy,
                   subject: selector(["tier": "db"], in: "shop"), enforceIngress: true, enforceEgress: false,
                   rules: [PolicyRule(direction: .ingress, action: .allow, path: "specs[0].ingress[0]",
                                      peers: [.endpoints(selector(["tier": "app"], in: "shop"))], ports: [])]),
            Policy(name: "tiers#1", namespace: "shop", kind: .ciliumNetworkPolicy,
                   subject: selector(["tier": "app"], in: "shop"), enforceIngress: false, enforceEgress: true,
                   rules: [PolicyRule(direction: .egress, action: .allow, path: "specs[1].egress[0]",
                                      peers: [.endpoints(selector(["tier": "db"], in: "shop"))],
                                      ports: [PortRange(proto: .any, from: 5432, to: 5432)])]),
        ])
    }

    func testCiliumDenySectionsBecomeDenyRulesListedAfterTheirAllowSection() throws {
        // Keys deliberately out of order: rules come out ingress, ingressDeny, egress, egressDeny.
        let doc = TestDocs.cnp("lockdown", spec: [
            "egressDeny": [["toCIDR": ["169.254.169.254/32"]]],
            "ingressDeny": [["fromEntities": ["world"], "toPorts": [["ports": [["port": "22", "protocol": "TCP"]]]]]],
            "endpointSelector": [:],
            "ingress": [["fromEntities": ["all"]]],
        ])
        let policy = try XCTUnwrap(try parse(doc).first)
        XCTAssertTrue(policy.enforceIngress)
        XCTAssertTrue(policy.enforceEgress, "an egressDeny section alone enables egress enforcement")
        XCTAssertEqual(policy.subject, selector())
        XCTAssertEqual(policy.rules, [
            PolicyRule(direction: .ingress, action: .allow, path: "spec.ingress[0]", peers: [.entity(.all)], ports: []),
            PolicyRule(direction: .ingress, action: .deny, path: "spec.ingressDeny[0]", peers: [.entity(.world)],
                       ports: [PortRange(proto: .tcp, from: 22, to: 22)]),
            PolicyRule(direction: .egress, action: .deny, path: "spec.egressDeny[0]",
                       peers: [.cidr(cidr("169.254.169.254/32"), except: [])], ports: []),
        ])
    }

    func testCiliumPortsOnlyRuleAllowsEveryPeerAndPortRangesAreKept() throws {
        let doc = TestDocs.cnp("ports-only", spec: [
            "endpointSelector": ["matchLabels": ["app": "media"]],
            "ingress": [
                ["toPorts": [
                    ["ports": [["port": "30000", "endPort": 30100, "protocol": "udp"],
                               ["protocol": "Tcp"]]],
                    ["ports": [["port": 8443, "endPort": "8443"]]],
                ]],
            ],
        ])
        XCTAssertEqual(try parse(doc).first?.rules, [
            PolicyRule(direction: .ingress, action: .allow, path: "spec.ingress[0]", peers: [.entity(.all)],
                       ports: [PortRange(proto: .udp, from: 30000, to: 30100),
                               PortRange(proto: .tcp, from: 1, to: 65535),
                               PortRange(proto: .any, from: 8443, to: 8443)]),
        ])
    }

    func testCiliumICMPTypesByNumberOrNameAreICMPPortsAndIPv6OnesMatchNothing() throws {
        let doc = TestDocs.cnp("pings", spec: [
            "endpointSelector": ["matchLabels": ["app": "web"]],
            "ingress": [
                ["fromEndpoints": [["matchLabels": ["app": "probe"]]],
                 "icmps": [["fields": [["type": 8, "family": "IPv4"], ["type": "TimeExceeded"]]]]],
                ["icmps": [["fields": [["type": "EchoRequest", "family": "IPv6"]]]]],
                ["toPorts": [["ports": [["port": "80", "protocol": "TCP"]]]], "icmps": [["fields": [["type": "0"]]]]],
            ],
        ])
        XCTAssertEqual(try parse(doc).first?.rules, [
            PolicyRule(direction: .ingress, action: .allow, path: "spec.ingress[0]",
                       peers: [.endpoints(selector(["app": "probe"]))],
                       ports: [PortRange(proto: .icmp, from: 8, to: 8), PortRange(proto: .icmp, from: 11, to: 11)]),
            // ICMPv6 only: no IPv4 traffic matches (no ports would mean every protocol).
            PolicyRule(direction: .ingress, action: .allow, path: "spec.ingress[1]", peers: [], ports: []),
            PolicyRule(direction: .ingress, action: .allow, path: "spec.ingress[2]", peers: [.entity(.all)],
                       ports: [PortRange(proto: .tcp, from: 80, to: 80), PortRange(proto: .icmp, from: 0, to: 0)]),
        ])
        for (bad, message) in [(PolicyTree.int(300), "300 is not an ICMP type (0-255)"),
                               (.string("Ping"), "\"Ping\" is not an ICMPv4 type")] {
            let doc = TestDocs.cnp(spec: ["endpointSelector": [:], "ingress": [["icmps": [["fields": [["type": bad]]]]]]])
            let error = assertMeshError(mentioning: ["spec.ingress[0].icmps[0].fields[0].type", message]) { _ = try parse(doc) }
            XCTAssertNotNil(error)
        }
    }

    func testCiliumEmptyRuleEnablesDefaultDenyAndAnEmptySectionDoesNot() throws {
        // As Cilium reads it: `ingress: [{}]` closes ingress, `egress: []` is no section.
        let doc = TestDocs.cnp("default-deny", namespace: "shop", spec: [
            "endpointSelector": [:],
            "ingress": [[:]],
            "egress": [],
            "egressDeny": [],
        ])
        XCTAssertEqual(try parse(doc), [
            Policy(name: "default-deny", namespace: "shop", kind: .ciliumNetworkPolicy, subject: selector(in: "shop"),
                   enforceIngress: true, enforceEgress: false,
                   rules: [PolicyRule(direction: .ingress, action: .allow, path: "spec.ingress[0]", peers: [], ports: [])]),
        ])
    }

    func testCiliumEmptyPeerAndPortListsReadAsLeftOut() throws {
        let doc = TestDocs.cnp("empty-lists", spec: [
            "endpointSelector": [:],
            "ingress": [
                // Every peer on :80, as with no peer field at all.
                ["fromEndpoints": [], "fromCIDR": [], "toPorts": [["ports": [["port": "80", "protocol": "TCP"]]]]],
                // web on every port, as with no toPorts.
                ["fromEndpoints": [["matchLabels": ["app": "web"]]], "toPorts": [], "icmps": []],
                // Nothing at all: only closes ingress, as `- {}`.
                ["fromEntities": [], "toPorts": []],
            ],
        ])
        XCTAssertEqual(try parse(doc).first?.rules, [
            PolicyRule(direction: .ingress, action: .allow, path: "spec.ingress[0]", peers: [.entity(.all)],
                       ports: [PortRange(proto: .tcp, from: 80, to: 80)]),
            PolicyRule(direction: .ingress, action: .allow, path: "spec.ingress[1]",
                       peers: [.endpoints(selector(["app": "web"]))], ports: []),
            PolicyRule(direction: .ingress, action: .allow, path: "spec.ingress[2]", peers: [], ports: []),
        ])
    }

    func testCiliumOperatorsInAnyCaseAndKubernetesOnesAsSpelled() throws {
        let doc = TestDocs.cnp("operators", spec: [
            "endpointSelector": ["matchExpressions": [
                ["key": "app", "operator": "in", "values": ["web"]],
                ["key": "tier", "operator": "NOTIN", "values": ["db"]],
                ["key": "team", "operator": "exists"],
                ["key": "legacy", "operator": "doesnotexist"],
            ]],
        ])
        XCTAssertEqual(try parse(doc).first?.subject, selector(in: "default", [
            .init(key: "app", op: .in, values: ["web"]), .init(key: "tier", op: .notIn, values: ["db"]),
            .init(key: "team", op: .exists, values: []), .init(key: "legacy", op: .doesNotExist, values: []),
        ]))
        let np = TestDocs.np(spec: ["podSelector": ["matchExpressions": [["key": "app", "operator": "in", "values": ["web"]]]]])
        XCTAssertNotNil(assertMeshError(mentioning: ["spec.podSelector.matchExpressions[0].operator: ", "\"in\""]) { _ = try parse(np) })
    }

    func testCiliumAuthenticationRequiredOnAllowRulesOfEitherDirection() throws {
        let doc = TestDocs.cnp("secure", spec: [
            "endpointSelector": ["matchLabels": ["app": "db"]],
            "ingress": [
                ["fromEndpoints": [["matchLabels": ["app": "web"]]], "authentication": ["mode": "required"],
                 "toPorts": [["ports": [["port": "5432", "protocol": "TCP"]]]]],
                ["fromEndpoints": [["matchLabels": ["app": "backup"]]], "authentication": ["mode": "disabled"]],
            ],
        ])
        let rules = try parse(doc).first?.rules ?? []
        XCTAssertEqual(rules.map(\.authentication), [.required, nil], "disabled is no requirement")

        let egress = TestDocs.cnp(spec: ["endpointSelector": [:],
                                         "egress": [["toEndpoints": [["matchLabels": ["app": "db"]]], "authentication": ["mode": "required"]]]])
        let egressRule = try XCTUnwrap(try parse(egress).first?.rules.first)
        XCTAssertEqual(egressRule.direction, .egress)
        XCTAssertEqual(egressRule.authentication, .required)
        let egressDeny = TestDocs.cnp(spec: ["endpointSelector": [:],
                                             "egressDeny": [["toEntities": ["world"], "authentication": ["mode": "required"]]]])
        assertMeshError(mentioning: ["spec.egressDeny[0].authentication.mode", "allow rules"]) { _ = try parse(egressDeny) }
        let deny = TestDocs.cnp(spec: ["endpointSelector": [:],
                                       "ingressDeny": [["fromEntities": ["world"], "authentication": ["mode": "required"]]]])
        assertMeshError(mentioning: ["spec.ingressDeny[0].authentication.mode", "allow rules"]) { _ = try parse(deny) }
        let mode = TestDocs.cnp(spec: ["endpointSelector": [:],
                                       "ingress": [["fromEntities": ["all"], "authentication": ["mode": "test-always-fail"]]]])
        assertMeshError(mentioning: ["spec.ingress[0].authentication.mode", "\"test-always-fail\"", "required or disabled"]) {
            _ = try parse(mode)
        }
        let typo = TestDocs.cnp(spec: ["endpointSelector": [:], "ingress": [["fromEntities": ["all"], "authentication": ["mod": "required"]]]])
        assertMeshError(mentioning: ["spec.ingress[0].authentication", "mode"]) { _ = try parse(typo) }
    }

    func testCiliumClusterAndWorldEntities() throws {
        let doc = TestDocs.cnp("entities", spec: [
            "endpointSelector": [:],
            "egress": [["toEntities": ["cluster", "world-ipv4", "world-ipv6"]], ["toEntities": ["world-ipv6"]]],
        ])
        XCTAssertEqual(try parse(doc).first?.rules, [
            PolicyRule(direction: .egress, action: .allow, path: "spec.egress[0]", peers: [.entity(.cluster), .entity(.world)], ports: []),
            // IPv6 only: no IPv4 peer, so the rule allows nothing here.
            PolicyRule(direction: .egress, action: .allow, path: "spec.egress[1]", peers: [], ports: []),
        ])
    }

    func testFieldsTheAPIServerWouldPruneAreIgnoredWithAWarning() throws {
        let doc = PolicyTree.map([
            ("apiVersion", "cilium.io/v2"), ("kind", "CiliumNetworkPolicy"),
            ("description", "L3-L4 policy as older Cilium examples wrote it"),
            ("metadata", ["name": "rule1", "uid": "1234", "resourceVersion": "7", "finalizers": ["x"]]),
            ("sepc", ["endpointSelector": [:]]),
            ("spec", ["endpointSelector": ["matchLabels": ["org": "empire"]], "ingress": [[:]]]),
            ("status", ["ok": true]),
        ])
        let (policies, warnings) = try PolicyParser.read(documents: [doc], source: "rule1.yaml")
        XCTAssertEqual(policies.map(\.name), ["rule1"])
        XCTAssertEqual(policies.first?.enforceIngress, true)
        // Server-written fields are dropped silently; the others are named, with a guess.
        XCTAssertEqual(warnings, [
            "rule1.yaml: document 1 (CiliumNetworkPolicy rule1): description: unknown field \"description\" ignored, as the Kubernetes API server would drop it",
            "rule1.yaml: document 1 (CiliumNetworkPolicy rule1): sepc: unknown field \"sepc\" ignored, as the Kubernetes API server would drop it; did you mean \"spec\"?",
        ])
    }

    func testCiliumSelectorsStripSourcePrefixesAndReadTheNamespaceLabel() throws {
        let doc = TestDocs.cnp("from-monitoring", namespace: "shop", spec: [
            "endpointSelector": ["matchLabels": ["k8s:app": "web", "k8s:io.kubernetes.pod.namespace": "shop"]],
            "ingress": [
                ["fromEndpoints": [
                    ["matchLabels": ["k8s:io.kubernetes.pod.namespace": "monitoring", "any:app": "prometheus"]],
                    ["matchExpressions": [
                        ["key": "io.kubernetes.pod.namespace", "operator": "In", "values": ["ci", "staging"]],
                        ["key": "k8s:role", "operator": "NotIn", "values": ["untrusted"]],
                        ["key": "team", "operator": "Exists"],
                        ["key": "quarantine", "operator": "DoesNotExist", "values": []],
                    ]],
                ]],
            ],
        ])
        let policy = try XCTUnwrap(try parse(doc).first)
        XCTAssertEqual(policy.subject, selector(["app": "web"], in: "shop"))
        XCTAssertEqual(policy.rules.first?.peers, [
            .endpoints(selector(["app": "prometheus"], in: "monitoring")),
            .endpoints(EndpointSelector(
                matchExpressions: [.init(key: "role", op: .notIn, values: ["untrusted"]),
                                   .init(key: "team", op: .exists, values: []),
                                   .init(key: "quarantine", op: .doesNotExist, values: [])],
                namespaces: .selector(EndpointSelector(matchExpressions: [
                    .init(key: "kubernetes.io/metadata.name", op: .in, values: ["ci", "staging"]),
                ])))),
        ])
    }

    func testParsedSelectorsMatchEndpointsOnlyInTheNamespacesTheyAllow() throws {
        let doc = TestDocs.cnp("from-monitoring", namespace: "shop", spec: [
            "endpointSelector": ["matchLabels": ["app": "web"]],
            "ingress": [
                ["fromEndpoints": [
                    [:],
                    ["matchLabels": ["io.kubernetes.pod.namespace": "monitoring", "app": "prometheus"]],
                    ["matchExpressions": [["key": "io.kubernetes.pod.namespace", "operator": "NotIn", "values": ["shop"]],
                                          ["key": "trusted", "operator": "Exists"]]],
                ]],
            ],
        ])
        let policy = try XCTUnwrap(try parse(doc).first)
        XCTAssertTrue(policy.subject.matches(endpoint(["app": "web", "namespace": "shop"])))
        XCTAssertFalse(policy.subject.matches(endpoint(["app": "web"])), "web in namespace default is not selected")
        XCTAssertFalse(policy.subject.matches(endpoint(["app": "db", "namespace": "shop"])))

        guard case .endpoints(let sameNamespace) = policy.rules[0].peers[0],
              case .endpoints(let prometheus) = policy.rules[0].peers[1],
              case .endpoints(let trustedElsewhere) = policy.rules[0].peers[2] else {
            return XCTFail("expected three endpoint peers, got \(policy.rules[0].peers)")
        }
        XCTAssertTrue(sameNamespace.matches(endpoint(["app": "anything", "namespace": "shop"])))
        XCTAssertFalse(sameNamespace.matches(endpoint(["app": "anything", "namespace": "other"])))
        XCTAssertTrue(prometheus.matches(endpoint(["app": "prometheus", "namespace": "monitoring"])))
        XCTAssertFalse(prometheus.matches(endpoint(["app": "prometheus", "namespace": "shop"])))
        XCTAssertTrue(trustedElsewhere.matches(endpoint(["trusted": "yes", "namespace": "ci"])))
        XCTAssertTrue(trustedElsewhere.matches(endpoint(["trusted": "", "namespace": "default"])))
        XCTAssertFalse(trustedElsewhere.matches(endpoint(["trusted": "yes", "namespace": "shop"])))
        XCTAssertFalse(trustedElsewhere.matches(endpoint(["namespace": "ci"])))
    }

    // MARK: NetworkPolicy

    func testNetworkPolicyPeersOfEveryKindAndPortsDefaultingToTCP() throws {
        let doc = TestDocs.np("db-access", namespace: "shop", spec: [
            "podSelector": ["matchLabels": ["app": "db"]],
            "ingress": [
                ["from": [
                    ["podSelector": ["matchLabels": ["app": "api"]]],
                    ["namespaceSelector": ["matchLabels": ["kubernetes.io/metadata.name": "ops"]]],
                    ["namespaceSelector": ["matchExpressions": [["key": "kubernetes.io/metadata.name", "operator": "In", "values": ["ci"]]]],
                     "podSelector": ["matchLabels": ["app": "migrator"]]],
                    ["ipBlock": ["cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]]],
                 ],
                 "ports": [["port": 5432], ["port": "9000", "endPort": 9010, "protocol": "TCP"], ["protocol": "UDP"]]],
            ],
        ])
        let opsNamespace = EndpointSelector(matchLabels: ["kubernetes.io/metadata.name": "ops"])
        let ciNamespace = EndpointSelector(matchExpressions: [.init(key: "kubernetes.io/metadata.name", op: .in, values: ["ci"])])
        XCTAssertEqual(try parse(doc), [
            Policy(name: "db-access", namespace: "shop", kind: .networkPolicy, subject: selector(["app": "db"], in: "shop"),
                   enforceIngress: true, enforceEgress: false,
                   rules: [PolicyRule(
                       direction: .ingress, action: .allow, path: "spec.ingress[0]",
                       peers: [.endpoints(selector(["app": "api"], in: "shop")),
                               .endpoints(EndpointSelector(namespaces: .selector(opsNamespace))),
                               .endpoints(EndpointSelector(matchLabels: ["app": "migrator"], namespaces: .selector(ciNamespace))),
                               .cidr(cidr("10.0.0.0/8"), except: [cidr("10.96.0.0/12")])],
                       ports: [PortRange(proto: .tcp, from: 5432, to: 5432),
                               PortRange(proto: .tcp, from: 9000, to: 9010),
                               PortRange(proto: .udp, from: 1, to: 65535)])]),
        ])

        guard case .endpoints(let migrator) = try parse(doc)[0].rules[0].peers[2] else { return XCTFail() }
        XCTAssertTrue(migrator.matches(endpoint(["app": "migrator", "namespace": "ci"])))
        XCTAssertFalse(migrator.matches(endpoint(["app": "migrator", "namespace": "shop"])))
    }

    func testNetworkPolicyEgressOnlyWithRulesWithoutPeersOrPorts() throws {
        let doc = TestDocs.np("egress-only", spec: [
            "podSelector": [:],
            "policyTypes": ["Egress"],
            "egress": [
                ["to": [["ipBlock": ["cidr": "0.0.0.0/0"]]], "ports": [["port": 443, "protocol": "TCP"]]],
                ["ports": [["port": 53, "protocol": "UDP"]]],
                ["to": [["podSelector": [:]]]],
            ],
        ])
        XCTAssertEqual(try parse(doc), [
            Policy(name: "egress-only", namespace: "default", kind: .networkPolicy, subject: selector(),
                   enforceIngress: false, enforceEgress: true, rules: [
                       PolicyRule(direction: .egress, action: .allow, path: "spec.egress[0]",
                                  peers: [.cidr(cidr("0.0.0.0/0"), except: [])], ports: [PortRange(proto: .tcp, from: 443, to: 443)]),
                       PolicyRule(direction: .egress, action: .allow, path: "spec.egress[1]",
                                  peers: [.entity(.all)], ports: [PortRange(proto: .udp, from: 53, to: 53)]),
                       PolicyRule(direction: .egress, action: .allow, path: "spec.egress[2]",
                                  peers: [.endpoints(selector())], ports: []),
                   ]),
        ])
    }

    func testNetworkPolicyDefaultDenyBothWays() throws {
        let doc = TestDocs.np("deny-all", namespace: "shop", spec: ["podSelector": [:], "policyTypes": ["Ingress", "Egress"]])
        XCTAssertEqual(try parse(doc), [
            Policy(name: "deny-all", namespace: "shop", kind: .networkPolicy, subject: selector(in: "shop"),
                   enforceIngress: true, enforceEgress: true, rules: []),
        ])
    }

    func testNetworkPolicyTypesDefaultToIngressPlusEgressWhenThereAreEgressRules() throws {
        let withEgress = TestDocs.np("a", spec: ["podSelector": [:], "egress": [["to": [["podSelector": [:]]]]]])
        let emptyEgress = TestDocs.np("b", spec: ["podSelector": [:], "egress": []])
        let ingressOnly = TestDocs.np("c", spec: ["podSelector": [:], "ingress": [[:]]])
        let policies = try parse(withEgress, emptyEgress, ingressOnly)
        XCTAssertEqual(policies.map(\.enforceIngress), [true, true, true])
        // As Kubernetes defaults it: an empty egress list does not add Egress.
        XCTAssertEqual(policies.map(\.enforceEgress), [true, false, false])
        XCTAssertEqual(policies[2].rules, [PolicyRule(direction: .ingress, action: .allow, path: "spec.ingress[0]",
                                                      peers: [.entity(.all)], ports: [])])
    }

    // MARK: Files

    func testAFileOfSeveralDocumentsSkipsEmptyOnesAndKeepsOrder() throws {
        let policies = try parse(
            .null,
            TestDocs.np("web", namespace: "shop", spec: ["podSelector": [:]]),
            .null,
            TestDocs.cnp("web", namespace: "staging", spec: ["endpointSelector": [:]]),
            TestDocs.cnp("api", namespace: "shop", specs: [["endpointSelector": [:]], ["endpointSelector": [:]]]))
        XCTAssertEqual(policies.map(\.key), ["shop/web", "staging/web", "shop/api#0", "shop/api#1"])
        XCTAssertEqual(policies.map(\.kind), [.networkPolicy, .ciliumNetworkPolicy, .ciliumNetworkPolicy, .ciliumNetworkPolicy])
        XCTAssertEqual(try parse(.null, .null), [])
    }

    func testKeyOrderDoesNotChangeTheResult() throws {
        let a = TestDocs.cnp("x", spec: [
            "endpointSelector": ["matchLabels": ["app": "web"]],
            "ingress": [["fromEntities": ["world"]]], "egress": [["toEntities": ["host"]]],
        ])
        let b: PolicyTree = [
            "spec": ["egress": [["toEntities": ["host"]]], "ingress": [["fromEntities": ["world"]]],
                     "endpointSelector": ["matchLabels": ["app": "web"]]],
            "metadata": ["name": "x"], "kind": "CiliumNetworkPolicy", "apiVersion": "cilium.io/v2",
        ]
        XCTAssertNotEqual(a, b)
        XCTAssertEqual(try parse(a), try parse(b))
    }

    func testParsedPoliciesSurviveAJSONRoundTrip() throws {
        let policies = try parse(
            TestDocs.cnp("p", spec: ["endpointSelector": [:], "egress": [["toCIDRSet": [["cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]]]]]]),
            TestDocs.np("q", spec: ["podSelector": [:], "ingress": [["from": [["namespaceSelector": [:]]]]]]))
        let data = try JSONEncoder().encode(policies)
        XCTAssertEqual(try JSONDecoder().decode([Policy].self, from: data), policies)
    }

    // MARK: Errors

    func testErrorsNameTheFileTheDocumentItsKindAndNameAndThePath() {
        let good = TestDocs.cnp("ok", spec: ["endpointSelector": [:]])
        let bad = TestDocs.cnp("web", spec: [
            "endpointSelector": [:],
            "ingress": [["toPorts": [["ports": [["port": "http"]]]]]],
        ])
        let error = assertMeshError(mentioning: []) { _ = try parse(good, bad, source: "web.yaml") }
        XCTAssertEqual(error?.message, "web.yaml: document 2 (CiliumNetworkPolicy web): spec.ingress[0].toPorts[0].ports[0].port: \"http\" is not a port number; named ports are not supported, give the number (1-65535)")
    }

    func testErrorsLeaveOutKindAndNameThatCannotBeRead() {
        let error = assertMeshError(mentioning: []) { _ = try parse(["metadata": ["name": 7]], source: "f.yaml") }
        XCTAssertEqual(error?.message, "f.yaml: document 1: missing required field \"apiVersion\"")
        XCTAssertNotNil(error?.hint)
    }

    func testUnknownFieldsSuggestTheNearestAllowedOne() {
        let doc = TestDocs.cnp(spec: ["endpointSelector": [:], "ingress": [["fromEndpoint": [[:]]]]])
        let error = assertMeshError(mentioning: ["spec.ingress[0].fromEndpoint", "did you mean \"fromEndpoints\"", "fromCIDRSet"]) {
            _ = try parse(doc)
        }
        XCTAssertNotNil(error)
    }

    func testLabelKeysWithDotsAreQuotedInPaths() {
        let doc = TestDocs.cnp(spec: ["endpointSelector": ["matchLabels": ["app.kubernetes.io/name": "-web"]]])
        assertMeshError(mentioning: ["spec.endpointSelector.matchLabels[\"app.kubernetes.io/name\"]", "\"-web\""]) {
            _ = try parse(doc)
        }
    }

    // MARK: The tree

    func testTreeEqualityRespectsMapOrderAndTypes() {
        XCTAssertEqual(PolicyTree.map([("a", 1), ("b", "x")]), ["a": 1, "b": "x"])
        XCTAssertNotEqual(PolicyTree.map([("a", 1), ("b", "x")]), ["b": "x", "a": 1])
        XCTAssertNotEqual(PolicyTree.int(80), .string("80"))
        XCTAssertNotEqual(PolicyTree.list([]), .map([]))
        XCTAssertEqual(PolicyTree.list([true, .null]), [true, .null])
        XCTAssertEqual(PolicyTree.map([("a", ["b": 1])])["a"]?["b"], 1)
    }
}
