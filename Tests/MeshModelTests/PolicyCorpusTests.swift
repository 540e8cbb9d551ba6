import XCTest
@testable import MeshModel

/// Malformed and contradictory policy documents, one per row. Each must be refused with
/// `invalid_argument`, a message naming where (the path) and what (the offending value),
/// and must sink a whole file when it shares one with a valid document.
final class PolicyCorpusTests: XCTestCase {
    struct Case {
        /// What is wrong, for failure messages.
        let what: String
        let documents: [PolicyTree]
        /// Fragments the message must contain: the path, and the offending value.
        let mentions: [String]
        let line: UInt
    }

    /// Collects cases one statement at a time, which keeps the literals quick to type-check.
    struct Corpus {
        var cases: [Case] = []

        mutating func add(_ what: String, _ document: PolicyTree, _ mentions: String..., line: UInt = #line) {
            cases.append(Case(what: what, documents: [document], mentions: mentions, line: line))
        }

        mutating func add(_ what: String, documents: [PolicyTree], _ mentions: String..., line: UInt = #line) {
            cases.append(Case(what: what, documents: documents, mentions: mentions, line: line))
        }

        /// A CiliumNetworkPolicy whose spec selects every endpoint and has `key: [item]`.
        mutating func cnpRule(_ what: String, _ key: String, _ item: PolicyTree, _ mentions: String..., line: UInt = #line) {
            let doc = TestDocs.cnp(spec: .map([("endpointSelector", .map([])), (key, .list([item]))]))
            cases.append(Case(what: what, documents: [doc], mentions: mentions, line: line))
        }

        /// A CiliumNetworkPolicy with one ingress rule allowing `ports` from everyone.
        mutating func cnpPorts(_ what: String, _ ports: PolicyTree, _ mentions: String..., line: UInt = #line) {
            let doc = TestDocs.cnp(spec: ["endpointSelector": [:], "ingress": [["toPorts": [["ports": ports]]]]])
            cases.append(Case(what: what, documents: [doc], mentions: mentions, line: line))
        }

        /// A CiliumNetworkPolicy whose endpointSelector is `selector`.
        mutating func cnpSelector(_ what: String, _ selector: PolicyTree, _ mentions: String..., line: UInt = #line) {
            let doc = TestDocs.cnp(namespace: "shop", spec: ["endpointSelector": selector])
            cases.append(Case(what: what, documents: [doc], mentions: mentions, line: line))
        }

        /// A NetworkPolicy whose spec is `podSelector: {}` plus `extra`.
        mutating func np(_ what: String, _ extra: [(String, PolicyTree)], _ mentions: String..., line: UInt = #line) {
            let doc = TestDocs.np(spec: .map([("podSelector", [:])] + extra))
            cases.append(Case(what: what, documents: [doc], mentions: mentions, line: line))
        }
    }

    static let corpus: [Case] = {
        var c = Corpus()
        let cnpHead: [(String, PolicyTree)] = [("apiVersion", "cilium.io/v2"), ("kind", "CiliumNetworkPolicy")]
        let okSpec: PolicyTree = ["endpointSelector": [:]]

        // The document itself.
        c.add("document is a list", ["apiVersion", "kind"], "must be a map", "a list")
        c.add("document is a string", "hello", "must be a map", "the string \"hello\"")
        c.add("missing apiVersion", ["kind": "CiliumNetworkPolicy", "metadata": ["name": "web"], "spec": okSpec],
              "missing required field \"apiVersion\"")
        c.add("missing kind", ["apiVersion": "cilium.io/v2", "metadata": ["name": "web"], "spec": okSpec],
              "missing required field \"kind\"")
        c.add("wrong apiVersion for the kind", TestDocs.document("cilium.io/v1", "CiliumNetworkPolicy", name: "web", namespace: nil, body: [("spec", okSpec)]),
              "apiVersion: ", "\"cilium.io/v1\"", "cilium.io/v2")
        c.add("NetworkPolicy under the Cilium apiVersion", TestDocs.document("cilium.io/v2", "NetworkPolicy", name: "web", namespace: nil, body: [("spec", ["podSelector": [:]])]),
              "apiVersion: ", "\"cilium.io/v2\"", "networking.k8s.io/v1")
        c.add("not a policy kind", TestDocs.document("v1", "Pod", name: "web", namespace: nil, body: [("spec", [:])]),
              "kind: ", "\"Pod\"", "CiliumNetworkPolicy (cilium.io/v2), NetworkPolicy (networking.k8s.io/v1)")
        c.add("clusterwide policies are not read", TestDocs.document("cilium.io/v2", "CiliumClusterwideNetworkPolicy", name: "web", namespace: nil, body: [("spec", okSpec)]),
              "kind: ", "\"CiliumClusterwideNetworkPolicy\"")
        c.add("kind is a number", ["apiVersion": "cilium.io/v2", "kind": 5], "kind: ", "the number 5")
        c.add("specs in a NetworkPolicy (pruned, so spec is missing)",
              TestDocs.document("networking.k8s.io/v1", "NetworkPolicy", name: "web", namespace: nil, body: [("specs", [])]),
              "missing required field \"spec\"")
        c.add("field given twice", .map(cnpHead + [("metadata", ["name": "web"]), ("spec", okSpec), ("spec", okSpec)]),
              "spec: ", "given twice")

        // Metadata.
        c.add("missing metadata", .map(cnpHead + [("spec", okSpec)]), "missing required field \"metadata\"")
        c.add("missing name", .map(cnpHead + [("metadata", ["namespace": "shop"]), ("spec", okSpec)]),
              "metadata: ", "missing required field \"name\"")
        c.add("name with capitals and underscore", TestDocs.cnp("Web_Server", spec: okSpec), "metadata.name: ", "\"Web_Server\"")
        c.add("name ending in a dash", TestDocs.cnp("web-", spec: okSpec), "metadata.name: ", "\"web-\"")
        c.add("name longer than 253", TestDocs.cnp(String(repeating: "a", count: 254), spec: okSpec),
              "metadata.name: ", String(repeating: "a", count: 254))
        c.add("name is a number", .map(cnpHead + [("metadata", ["name": 42]), ("spec", okSpec)]), "metadata.name: ", "the number 42")
        c.add("namespace with capitals", TestDocs.cnp(namespace: "Prod", spec: okSpec), "metadata.namespace: ", "\"Prod\"")
        c.add("labels is a list", .map(cnpHead + [("metadata", ["name": "web", "labels": ["app"]]), ("spec", okSpec)]),
              "metadata.labels: ", "expected a map, got a list")
        c.add("annotations is a string", .map(cnpHead + [("metadata", ["name": "web", "annotations": "none"]), ("spec", okSpec)]),
              "metadata.annotations: ", "the string \"none\"")
        c.add("misspelt namespace", .map(cnpHead + [("metadata", ["name": "web", "namepsace": "prod"]), ("spec", okSpec)]),
              "metadata.namepsace: ", "unknown field \"namepsace\" in metadata", "did you mean \"namespace\"")
        c.add("two documents with one name", documents: [TestDocs.cnp("web", spec: okSpec), TestDocs.cnp("web", spec: okSpec)],
              "document 2", "metadata.name: ", "\"web\"", "is already used by document")
        c.add("NetworkPolicy and CNP with one name", documents: [TestDocs.np("web", namespace: "shop", spec: ["podSelector": [:]]),
                                                                 TestDocs.cnp("web", namespace: "shop", spec: okSpec)],
              "metadata.name: ", "\"web\"", "namespace \"shop\"")

        // CiliumNetworkPolicy structure.
        c.add("spec and specs", .map(cnpHead + [("metadata", ["name": "web"]), ("spec", okSpec), ("specs", [okSpec])]),
              "specs: ", "\"spec\" and \"specs\" are both given")
        c.add("neither spec nor specs", .map(cnpHead + [("metadata", ["name": "web"])]), "\"spec\"", "\"specs\"")
        c.add("empty specs", TestDocs.cnp(specs: []), "specs: ", "empty")
        c.add("specs is a map", .map(cnpHead + [("metadata", ["name": "web"]), ("specs", okSpec)]), "specs: ", "expected a list, got a map")
        c.add("spec is a list", TestDocs.cnp(spec: [okSpec]), "spec: ", "expected a map, got a list")
        c.add("missing endpointSelector", TestDocs.cnp(spec: ["ingress": [[:]]]), "spec: ", "\"endpointSelector\"")
        c.add("second specs entry without endpointSelector", TestDocs.cnp(specs: [okSpec, ["egress": []]]),
              "specs[1]: ", "\"endpointSelector\"")
        c.add("misspelt section", TestDocs.cnp(spec: ["endpointSelector": [:], "ingres": []]),
              "spec.ingres: ", "\"ingres\"", "did you mean \"ingress\"")
        c.add("unsupported rule field", TestDocs.cnp(spec: ["endpointSelector": [:], "nodeSelector": [:]]),
              "spec.nodeSelector: ", "\"nodeSelector\" is not supported")
        c.add("section is a map", TestDocs.cnp(spec: ["endpointSelector": [:], "ingress": ["fromEntities": ["world"]]]),
              "spec.ingress: ", "expected a list, got a map")
        c.add("section left empty", TestDocs.cnp(spec: ["endpointSelector": [:], "egress": .null]),
              "spec.egress: ", "got an empty value")
        c.add("description is a number", TestDocs.cnp(spec: ["endpointSelector": [:], "description": 7]),
              "spec.description: ", "the number 7")
        c.cnpRule("misspelt peer field", "ingress", ["fromEndpoint": [[:]]],
                  "spec.ingress[0].fromEndpoint: ", "\"fromEndpoint\"", "did you mean \"fromEndpoints\"")
        c.cnpRule("ingress peer field in egress", "egress", ["fromEndpoints": [[:]]],
                  "spec.egress[0].fromEndpoints: ", "\"fromEndpoints\"", "toEndpoints")
        c.cnpRule("FQDN rules", "egress", ["toFQDNs": [["matchName": "example.com"]]],
                  "spec.egress[0].toFQDNs: ", "\"toFQDNs\" is not supported")
        c.cnpRule("rule item is a string", "ingress", "fromEntities: world",
                  "spec.ingress[0]: ", "expected a map, got the string \"fromEntities: world\"")

        // Ports.
        c.cnpPorts("named port", [["port": "http"]], "spec.ingress[0].toPorts[0].ports[0].port: ", "\"http\" is not a port number")
        c.cnpPorts("port too large", [["port": 70000]], "ports[0].port: ", "70000 is not a port number")
        c.cnpPorts("port too large as a string", [["port": "65536"]], "ports[0].port: ", "65536")
        c.cnpPorts("port zero", [["port": 0]], "ports[0].port: ", "0 is not a port number", "leave \"port\" out")
        c.cnpPorts("negative port", [["port": -1]], "ports[0].port: ", "-1")
        c.cnpPorts("port is a boolean", [["port": true]], "ports[0].port: ", "the boolean true")
        c.cnpPorts("endPort below port", [["port": 80, "endPort": 79]], "ports[0].endPort: ", "endPort 79 is less than port 80")
        c.cnpPorts("endPort without port", [["endPort": 90]], "ports[0].endPort: ", "needs a port")
        c.cnpPorts("endPort too large", [["port": 80, "endPort": 70000]], "ports[0].endPort: ", "70000")
        c.cnpPorts("SCTP", [["port": 80, "protocol": "SCTP"]], "ports[0].protocol: ", "\"SCTP\"", "TCP, UDP, ANY")
        c.cnpPorts("ICMP", [["protocol": "ICMP"]], "ports[0].protocol: ", "\"ICMP\"")
        c.cnpPorts("port field misspelt", [["prot": 80]], "ports[0].prot: ", "did you mean \"port\"")
        c.cnpPorts("ports is empty", [], "toPorts[0].ports: ", "empty")
        c.cnpRule("toPorts item without ports", "egress", ["toPorts": [["rules": [:]]]],
                  "spec.egress[0].toPorts[0]: ", "missing required field \"ports\"")

        // L7 rules.
        c.cnpRule("HTTP rule with a bad regular expression", "ingress",
                  ["toPorts": [["ports": [["port": "80"]], "rules": ["http": [["method": "GET", "path": "/public["]]]]]],
                  "spec.ingress[0].toPorts[0].rules.http[0].path: ", "not a valid regular expression")
        c.cnpRule("HTTP rule with a list for method", "ingress",
                  ["toPorts": [["ports": [["port": "80"]], "rules": ["http": [["method": ["GET"]]]]]]],
                  "rules.http[0].method: ", "expected a string, got a list")
        c.cnpRule("HTTP rule with an unknown field", "ingress",
                  ["toPorts": [["ports": [["port": "80"]], "rules": ["http": [["verb": "GET"]]]]]],
                  "rules.http[0].verb: ", "\"verb\"")
        c.cnpRule("Kafka rules", "ingress",
                  ["toPorts": [["ports": [["port": "9092"]], "rules": ["kafka": [["topic": "orders"]]]]]],
                  "rules.kafka: ", "\"kafka\" is not supported")
        c.cnpRule("L7 rules in a deny rule", "ingressDeny",
                  ["toPorts": [["ports": [["port": "80"]], "rules": ["http": [["method": "GET"]]]]]],
                  "spec.ingressDeny[0].toPorts[0].rules: ", "deny rules cannot have L7 rules")

        // CIDRs and entities.
        c.cnpRule("CIDR with host bits", "egress", ["toCIDR": ["10.0.0.1/24"]], "spec.egress[0].toCIDR[0]: ", "\"10.0.0.1/24\" has host bits set")
        c.cnpRule("hostname as CIDR", "egress", ["toCIDR": ["example.com"]], "toCIDR[0]: ", "\"example.com\" is not an IPv4 CIDR")
        c.cnpRule("IPv6 CIDR", "ingress", ["fromCIDR": ["fd00::/64"]], "spec.ingress[0].fromCIDR[0]: ", "\"fd00::/64\"")
        c.cnpRule("fromCIDR is a string", "ingress", ["fromCIDR": "10.0.0.0/8"], "fromCIDR: ", "expected a list")
        c.cnpRule("except outside its cidr", "egress", ["toCIDRSet": [["cidr": "10.0.0.0/8", "except": ["192.168.0.0/24"]]]],
                  "spec.egress[0].toCIDRSet[0].except[0]: ", "192.168.0.0/24", "10.0.0.0/8")
        c.cnpRule("except wider than its cidr", "egress", ["toCIDRSet": [["cidr": "10.1.0.0/16", "except": ["10.0.0.0/8"]]]],
                  "toCIDRSet[0].except[0]: ", "10.0.0.0/8 must lie inside cidr 10.1.0.0/16")
        c.cnpRule("CIDR set without cidr", "egress", ["toCIDRSet": [["except": ["10.0.0.0/8"]]]],
                  "toCIDRSet[0]: ", "missing required field \"cidr\"")
        c.cnpRule("bad except", "egress", ["toCIDRSet": [["cidr": "10.0.0.0/8", "except": ["10.1.0.0/33"]]]],
                  "toCIDRSet[0].except[0]: ", "\"10.1.0.0/33\"")
        c.cnpRule("misspelt entity", "ingress", ["fromEntities": ["clustr"]],
                  "spec.ingress[0].fromEntities[0]: ", "\"clustr\"", "did you mean \"cluster\"", "all, world, host, cluster")
        c.cnpRule("entity of another product", "ingress", ["fromEntities": ["kube-apiserver"]],
                  "spec.ingress[0].fromEntities[0]: ", "\"kube-apiserver\" is not supported")
        c.cnpSelector("spec field misspelt", ["matchLabels": [:], "matchExpresions": []],
                      "spec.endpointSelector.matchExpresions: ", "did you mean \"matchExpressions\"")
        c.cnpRule("entity in capitals", "egressDeny", ["toEntities": ["World"]], "spec.egressDeny[0].toEntities[0]: ", "\"World\"")

        // Selectors.
        c.cnpSelector("bad label key", ["matchLabels": ["ap$p": "web"]], "spec.endpointSelector.matchLabels: ", "\"ap$p\"")
        c.cnpSelector("bad label value", ["matchLabels": ["app": "-web"]], "spec.endpointSelector.matchLabels.app: ", "\"-web\"")
        c.cnpSelector("label value is a number", ["matchLabels": ["version": 2]], "matchLabels.version: ", "the number 2")
        c.cnpSelector("reserved label", ["matchLabels": ["reserved:host": ""]], "matchLabels: ", "\"reserved:host\"")
        c.cnpSelector("unknown label source", ["matchLabels": ["container:app": "web"]], "matchLabels: ", "\"container:\"")
        c.cnpSelector("one key with and without prefix", .map([("matchLabels", ["app": "web", "k8s:app": "web"])]),
                      "matchLabels: ", "\"k8s:app\"", "same label key")
        c.cnpSelector("In without values", ["matchExpressions": [["key": "env", "operator": "In"]]],
                      "spec.endpointSelector.matchExpressions[0]: ", "operator In needs at least one value")
        c.cnpSelector("NotIn with an empty list", ["matchExpressions": [["key": "env", "operator": "NotIn", "values": []]]],
                      "matchExpressions[0].values: ", "NotIn")
        c.cnpSelector("Exists with values", ["matchExpressions": [["key": "env", "operator": "Exists", "values": ["prod"]]]],
                      "matchExpressions[0].values: ", "Exists takes no values", "\"prod\"")
        c.cnpSelector("unknown operator", ["matchExpressions": [["key": "env", "operator": "Equals", "values": ["prod"]]]],
                      "matchExpressions[0].operator: ", "\"Equals\"", "In, NotIn, Exists, DoesNotExist")
        c.cnpSelector("expression without key", ["matchExpressions": [["operator": "Exists"]]],
                      "matchExpressions[0]: ", "missing required field \"key\"")
        c.cnpSelector("expression with a bad key", ["matchExpressions": [["key": "a/b/c", "operator": "Exists"]]],
                      "matchExpressions[0].key: ", "\"a/b/c\"")
        c.cnpSelector("misspelt matchLabels", ["matchLabel": ["app": "web"]],
                      "spec.endpointSelector.matchLabel: ", "did you mean \"matchLabels\"")
        c.cnpSelector("subject in another namespace", ["matchLabels": ["k8s:io.kubernetes.pod.namespace": "prod"]],
                      "spec.endpointSelector: ", "io.kubernetes.pod.namespace \"prod\"", "\"shop\"")
        c.cnpSelector("subject widened by a namespace expression",
                      ["matchExpressions": [["key": "io.kubernetes.pod.namespace", "operator": "In", "values": ["shop", "prod"]]]],
                      "spec.endpointSelector: ", "matchExpressions on io.kubernetes.pod.namespace", "\"shop\"")
        c.cnpSelector("selector is a string", "app=web", "spec.endpointSelector: ", "the string \"app=web\"")
        c.cnpRule("invalid namespace name", "ingress", ["fromEndpoints": [["matchLabels": ["io.kubernetes.pod.namespace": "Bad_NS"]]]],
                  "spec.ingress[0].fromEndpoints[0].matchLabels: ", "\"Bad_NS\"")
        c.cnpRule("peer selector is a string", "ingress", ["fromEndpoints": ["app=web"]],
                  "spec.ingress[0].fromEndpoints[0]: ", "the string \"app=web\"")

        // NetworkPolicy.
        c.np("named port", [("ingress", [["ports": [["port": "http"]]]])],
             "spec.ingress[0].ports[0].port: ", "\"http\"", "named ports are not supported")
        c.np("ipBlock with podSelector", [("ingress", [["from": [["ipBlock": ["cidr": "10.0.0.0/8"], "podSelector": [:]]]]])],
             "spec.ingress[0].from[0].ipBlock: ", "cannot be combined with podSelector")
        c.np("policyTypes Both", [("policyTypes", ["Both"])], "spec.policyTypes[0]: ", "\"Both\"", "Ingress, Egress")
        c.np("policyTypes as a string", [("policyTypes", "Ingress")], "spec.policyTypes: ", "expected a list, got the string \"Ingress\"")
        c.np("SCTP", [("egress", [["ports": [["port": 9, "protocol": "SCTP"]]]])], "spec.egress[0].ports[0].protocol: ", "\"SCTP\"")
        c.np("Cilium's ANY protocol", [("egress", [["ports": [["port": 9, "protocol": "ANY"]]]])], "ports[0].protocol: ", "\"ANY\"", "TCP, UDP")
        c.np("empty peer", [("ingress", [["from": [[:]]]])], "spec.ingress[0].from[0]: ", "podSelector, namespaceSelector or ipBlock")
        c.np("except equal to its cidr", [("ingress", [["from": [["ipBlock": ["cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]]]]]])],
             "spec.ingress[0].from[0].ipBlock.except[0]: ", "10.0.0.0/8", "smaller")
        c.np("except outside its cidr", [("egress", [["to": [["ipBlock": ["cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]]]]]])],
             "spec.egress[0].to[0].ipBlock.except[0]: ", "11.0.0.0/16")
        c.np("egress rules without Egress type", [("policyTypes", ["Ingress"]), ("egress", [["to": [["podSelector": [:]]]]])],
             "spec.policyTypes: ", "egress rules are given", "Egress")
        c.np("ingress rules without Ingress type", [("policyTypes", ["Egress"]), ("ingress", [[:]])],
             "spec.policyTypes: ", "ingress rules are given", "Ingress")
        c.np("to in an ingress rule", [("ingress", [["to": []]])], "spec.ingress[0].to: ", "\"to\"", "from, ports")
        c.np("endPort below port", [("ingress", [["ports": [["port": 8080, "endPort": 80]]]])], "spec.ingress[0].ports[0].endPort: ", "80", "8080")
        c.np("Cilium prefix in a pod selector", [("ingress", [["from": [["podSelector": ["matchLabels": ["k8s:app": "web"]]]]]])],
             "spec.ingress[0].from[0].podSelector.matchLabels: ", "\"k8s:app\"")
        c.np("NotIn without values in a namespace selector",
             [("egress", [["to": [["namespaceSelector": ["matchExpressions": [["key": "team", "operator": "NotIn"]]]]]]])],
             "spec.egress[0].to[0].namespaceSelector.matchExpressions[0]: ", "NotIn")
        c.np("Cilium field in a NetworkPolicy", [("endpointSelector", [:])], "spec.endpointSelector: ", "\"endpointSelector\"")
        c.add("missing podSelector", TestDocs.np(spec: ["ingress": []]), "spec: ", "missing required field \"podSelector\"")
        c.add("missing spec", TestDocs.document("networking.k8s.io/v1", "NetworkPolicy", name: "web", namespace: nil, body: []),
              "missing required field \"spec\"")
        return c.cases
    }()

    func testEveryBadDocumentIsRefusedNamingThePathAndTheValue() {
        for c in Self.corpus {
            let error = assertMeshError(mentioning: c.mentions, line: c.line) {
                _ = try PolicyParser.parse(documents: c.documents, source: "bad.yaml")
            }
            XCTAssertTrue(error?.message.hasPrefix("bad.yaml: document ") ?? true, "\(c.what): \(error?.message ?? "")", line: c.line)
        }
    }

    func testABadDocumentSinksAFileThatAlsoHoldsAGoodOne() {
        let good = TestDocs.cnp("good-neighbour", namespace: "elsewhere", spec: [
            "endpointSelector": ["matchLabels": ["app": "web"]], "ingress": [["fromEntities": ["world"]]],
        ])
        XCTAssertNoThrow(try PolicyParser.parse(documents: [good], source: "good.yaml"))
        for c in Self.corpus {
            let error = assertMeshError(mentioning: c.mentions, line: c.line) {
                _ = try PolicyParser.parse(documents: [good] + c.documents, source: "mixed.yaml")
            }
            // The good document comes first, so the bad one (or the last of a bad pair) is number count + 1.
            XCTAssertTrue(error?.message.hasPrefix("mixed.yaml: document \(c.documents.count + 1)") ?? true,
                          "\(c.what): \(error?.message ?? "")", line: c.line)
        }
    }
}
