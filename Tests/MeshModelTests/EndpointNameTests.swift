import XCTest
@testable import MeshModel

final class EndpointNameTests: XCTestCase {
    func testAcceptsRFC1123LabelsUpTo40Characters() {
        let forty = String(repeating: "a", count: 39) + "9"
        XCTAssertEqual(forty.count, EndpointName.maxLength)
        for name in ["web", "web-1", "a", "7", "0web", "web0", "a-b-c", "api--v2", forty] {
            XCTAssertNoThrow(try EndpointName.validate(name), name)
        }
    }

    func testRejects41CharactersStatingLengthAndLimit() {
        let name = String(repeating: "a", count: 41)
        assertMeshError(mentioning: ["\"\(name)\"", "41", "40"]) { try EndpointName.validate(name) }
    }

    func testLengthIsCheckedBeforeCharacters() {
        // A long name that is also badly formed is told about its length first.
        let name = String(repeating: "A", count: 50)
        assertMeshError(mentioning: ["\"\(name)\"", "50"]) { try EndpointName.validate(name) }
    }

    func testRejectsEmptyName() {
        assertMeshError(mentioning: ["endpoint name", "empty"]) { try EndpointName.validate("") }
    }

    func testRejectsUppercaseWithAnExampleInTheHint() {
        let e = assertMeshError(mentioning: ["\"Web\"", "lowercase"]) { try EndpointName.validate("Web") }
        XCTAssertEqual(e?.hint, "for example web-1")
        assertMeshError(mentioning: ["\"wEb\""]) { try EndpointName.validate("wEb") }
    }

    func testRejectsDashAtEitherEnd() {
        for name in ["-web", "web-", "-", "--"] {
            assertMeshError(mentioning: ["\"\(name)\""]) { try EndpointName.validate(name) }
        }
    }

    func testRejectsCharactersOutsideLowercaseDigitsAndDash() {
        for name in ["web_1", "web.1", "web 1", "web/1", "web\n", "wéb", "\u{FF57}eb", "web\u{0661}", "we:b", "😀"] {
            assertMeshError(mentioning: ["\"\(name)\""]) { try EndpointName.validate(name) }
        }
    }
}
