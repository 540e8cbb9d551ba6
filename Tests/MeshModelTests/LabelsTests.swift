import XCTest
@testable import MeshModel

final class LabelsParsingTests: XCTestCase {
    func testParsesCommaSeparatedPairs() throws {
        let labels = try Labels(parsing: "app=web,env=prod,tier=frontend")
        XCTAssertEqual(labels.values, ["app": "web", "env": "prod", "tier": "frontend"])
        XCTAssertEqual(labels["app"], "web")
        XCTAssertNil(labels["missing"])
    }

    func testWhitespaceAroundInputAndAroundPairsIsIgnored() throws {
        let labels = try Labels(parsing: "  app=web ,\tenv=prod\n")
        XCTAssertEqual(labels.values, ["app": "web", "env": "prod"])
    }

    func testWhitespaceInsideAPairIsRejectedNamingTheKey() {
        assertMeshError(mentioning: ["\"app \""]) { _ = try Labels(parsing: "app =web") }
        assertMeshError(mentioning: ["\" web\""]) { _ = try Labels(parsing: "app= web") }
    }

    func testEmptyAndBlankInputIsTheEmptySet() throws {
        for text in ["", "   ", "\t\n"] {
            let labels = try Labels(parsing: text)
            XCTAssertTrue(labels.values.isEmpty, "\"\(text)\"")
            XCTAssertEqual(labels.description, "")
            XCTAssertEqual(labels, Labels())
        }
    }

    func testEmptyValueIsAllowed() throws {
        let labels = try Labels(parsing: "canary=,app=web")
        XCTAssertEqual(labels["canary"], "")
        XCTAssertEqual(labels.description, "app=web,canary=")
    }

    func testOnlyTheFirstEqualsSplitsKeyFromValue() {
        // "b=c" would be the value, and '=' is not allowed in one.
        assertMeshError(mentioning: ["\"b=c\"", "\"a\""]) { _ = try Labels(parsing: "a=b=c") }
    }

    func testDuplicateKeyIsRejectedNamingTheKey() {
        let e = assertMeshError(mentioning: ["\"app\"", "twice"]) {
            _ = try Labels(parsing: "app=web,env=prod,app=db")
        }
        XCTAssertFalse(e?.message.contains("env") ?? true, "blames the wrong key: \(e?.message ?? "")")
    }

    func testDuplicateKeyWithTheSameValueIsStillRejected() {
        assertMeshError(mentioning: ["\"app\""]) { _ = try Labels(parsing: "app=web, app=web") }
    }

    func testPairWithoutEqualsIsRejectedWithPositionAndHint() {
        let e = assertMeshError(mentioning: ["label 2", "\"env\"", "key=value"]) {
            _ = try Labels(parsing: "app=web,env")
        }
        XCTAssertNotNil(e?.hint)
    }

    func testEmptyPairFromStrayCommaIsRejectedWithPosition() {
        assertMeshError(mentioning: ["label 2"]) { _ = try Labels(parsing: "app=web,") }
        assertMeshError(mentioning: ["label 2"]) { _ = try Labels(parsing: "app=web,,env=prod") }
        assertMeshError(mentioning: ["label 1"]) { _ = try Labels(parsing: ",app=web") }
    }

    func testEmptyKeyIsRejectedQuotingThePair() {
        assertMeshError(mentioning: ["\"=web\"", "empty key"]) { _ = try Labels(parsing: "=web") }
        assertMeshError(mentioning: ["label 2", "\"=\""]) { _ = try Labels(parsing: "app=web,=") }
    }

    func testPrefixedKeysAreAccepted() throws {
        let labels = try Labels(parsing: "app.kubernetes.io/name=web,example.com/tier=db,k8s-app=dns")
        XCTAssertEqual(labels["app.kubernetes.io/name"], "web")
        XCTAssertEqual(labels["example.com/tier"], "db")
        XCTAssertEqual(labels["k8s-app"], "dns")
    }

    func testBadPrefixesAreRejectedNamingThePrefix() {
        let cases: [(String, String)] = [
            ("Example.com/tier=db", "Example.com"),   // uppercase
            ("-a.example.com/x=1", "-a.example.com"),  // leading '-'
            ("a..b/x=1", "a..b"),                       // empty DNS label
            ("example.com./x=1", "example.com."),      // trailing dot
            ("under_score.io/x=1", "under_score.io"),  // '_' is not DNS
            ("/name=web", "\"/name\""),                 // empty prefix
        ]
        for (text, fragment) in cases {
            assertMeshError(mentioning: [fragment]) { _ = try Labels(parsing: text) }
        }
    }

    func testKeyWithTwoSlashesIsRejected() {
        assertMeshError(mentioning: ["\"a/b/c\"", "more than one"]) { _ = try Labels(parsing: "a/b/c=1") }
    }

    func testPrefixMayBe253CharactersButNot254() throws {
        let p253 = [String(repeating: "a", count: 63), String(repeating: "b", count: 63),
                    String(repeating: "c", count: 63), String(repeating: "d", count: 61)].joined(separator: ".")
        XCTAssertEqual(p253.count, 253)
        XCTAssertEqual(try Labels(parsing: "\(p253)/name=x")["\(p253)/name"], "x")
        let p254 = p253 + "d"
        assertMeshError(mentioning: [p254]) { _ = try Labels(parsing: "\(p254)/name=x") }
    }

    func testPrefixLabelLongerThan63IsRejected() {
        let long = String(repeating: "a", count: 64) + ".io"
        assertMeshError(mentioning: [long]) { _ = try Labels(parsing: "\(long)/x=1") }
    }

    func testNameMayBe63CharactersButNot64() throws {
        let n63 = String(repeating: "n", count: 63), n64 = n63 + "n"
        XCTAssertEqual(try Labels(parsing: "\(n63)=v")[n63], "v")
        XCTAssertEqual(try Labels(parsing: "example.com/\(n63)=v")["example.com/\(n63)"], "v")
        assertMeshError(mentioning: [n64]) { _ = try Labels(parsing: "\(n64)=v") }
        assertMeshError(mentioning: ["example.com/\(n64)"]) { _ = try Labels(parsing: "example.com/\(n64)=v") }
    }

    func testValueMayBe63CharactersButNot64() throws {
        let v63 = String(repeating: "v", count: 63), v64 = v63 + "v"
        XCTAssertEqual(try Labels(parsing: "k=\(v63)")["k"], v63)
        assertMeshError(mentioning: [v64, "\"k\""]) { _ = try Labels(parsing: "k=\(v64)") }
    }

    func testPrefixedKeyWithEmptyNameIsRejected() {
        assertMeshError(mentioning: ["\"example.com/\""]) { _ = try Labels(parsing: "example.com/=x") }
    }

    func testNamesAndValuesMayUseDashUnderscoreDotInside() throws {
        let labels = try Labels(parsing: "my_app.v-2=Build_7.0-rc1,X=Y")
        XCTAssertEqual(labels["my_app.v-2"], "Build_7.0-rc1")
        XCTAssertEqual(labels["X"], "Y")
    }

    func testBadCharactersInNamesAreRejectedNamingTheKey() {
        for key in ["-app", "app-", "_app", "app.", "ap!p", "ap p", "äpp", "app😀", "ａpp"] {
            assertMeshError(mentioning: ["\"\(key)\""]) { _ = try Labels(parsing: "\(key)=web") }
        }
    }

    func testBadCharactersInValuesAreRejectedNamingKeyAndValue() {
        for value in ["-web", "web-", ".web", "web_", "we b", "wéb", "web/1", "web:1", "٣"] {
            assertMeshError(mentioning: ["\"app\"", "\"\(value)\""]) { _ = try Labels(parsing: "app=\(value)") }
        }
    }

    func testFirstBadLabelFailsTheWholeSet() {
        // All or nothing: a good label before a bad one does not survive.
        assertMeshError(mentioning: ["\"-bad\""]) { _ = try Labels(parsing: "app=web,tier=-bad") }
    }
}

final class LabelsValueTests: XCTestCase {
    func testDictionaryInitValidatesEveryPair() throws {
        XCTAssertEqual(try Labels(["app": "web", "env": ""]).values, ["app": "web", "env": ""])
        assertMeshError(mentioning: ["\"bad key\""]) { _ = try Labels(["app": "web", "bad key": "x"]) }
        assertMeshError(mentioning: ["\"app\"", "\"-web\""]) { _ = try Labels(["app": "-web"]) }
        assertMeshError(mentioning: ["empty"]) { _ = try Labels(["": "web"]) }
    }

    func testDescriptionIsSortedByKey() throws {
        let text = "zeta=1,alpha=2,app.kubernetes.io/name=x,Beta=3,mid=,k8s-app=dns,a=0,z9=9"
        let labels = try Labels(parsing: text)
        // Byte order: uppercase before lowercase, '.' and '-' before letters.
        XCTAssertEqual(labels.description,
                       "Beta=3,a=0,alpha=2,app.kubernetes.io/name=x,k8s-app=dns,mid=,z9=9,zeta=1")
    }

    func testDescriptionIsTheSameWhateverTheInputOrder() throws {
        var rng = SeededGenerator(seed: 7)
        let pairs = ["app=web", "env=prod", "tier=frontend", "team=core", "example.com/owner=ops", "v=1"]
        let expected = try Labels(parsing: pairs.joined(separator: ",")).description
        for _ in 0..<50 {
            let shuffled = pairs.shuffled(using: &rng).joined(separator: ",")
            XCTAssertEqual(try Labels(parsing: shuffled).description, expected, shuffled)
        }
    }

    func testDescriptionParsesBackToTheSameSet() throws {
        let labels = try Labels(parsing: "app=web,canary=,example.com/tier=db")
        XCTAssertEqual(try Labels(parsing: labels.description), labels)
    }

    func testEncodesAsAJSONObjectAndRoundTrips() throws {
        let labels = try Labels(parsing: "env=prod,app=web,app.kubernetes.io/name=web,canary=")
        let data = try MeshJSON.encoder().encode(labels)
        let object = try JSONSerialization.jsonObject(with: data) as? [String: String]
        XCTAssertEqual(object, labels.values)
        XCTAssertEqual(try MeshJSON.decoder().decode(Labels.self, from: data), labels)
    }

    func testEmptySetRoundTripsAsAnEmptyObject() throws {
        let data = try JSONEncoder().encode(Labels())
        XCTAssertEqual(String(decoding: data, as: UTF8.self), "{}")
        XCTAssertEqual(try JSONDecoder().decode(Labels.self, from: data), Labels())
    }

    func testDecodingRejectsInvalidLabelsNamingTheCulprit() {
        assertDataCorrupted(mentioning: ["\"bad key\""]) {
            _ = try JSONDecoder().decode(Labels.self, from: Data(#"{"bad key":"x"}"#.utf8))
        }
        assertDataCorrupted(mentioning: ["\"-web\""]) {
            _ = try JSONDecoder().decode(Labels.self, from: Data(#"{"app":"-web"}"#.utf8))
        }
        let long = String(repeating: "x", count: 64)
        assertDataCorrupted(mentioning: [long]) {
            _ = try JSONDecoder().decode(Labels.self, from: Data(#"{"\#(long)":"v"}"#.utf8))
        }
    }

    func testDecodingRejectsNonObjects() {
        for json in [#"["app=web"]"#, #""app=web""#, #"{"app":1}"#, "null"] {
            XCTAssertThrowsError(try JSONDecoder().decode(Labels.self, from: Data(json.utf8)), json)
        }
    }
}
