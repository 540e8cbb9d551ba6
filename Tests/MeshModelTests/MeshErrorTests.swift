import XCTest
@testable import MeshModel

final class MeshErrorTests: XCTestCase {
    func testDescriptionIsTheMessageWhenThereIsNoHint() {
        let e = MeshError(.notFound, "endpoint \"web\" not found")
        XCTAssertNil(e.hint)
        XCTAssertEqual(e.description, "endpoint \"web\" not found")
        XCTAssertEqual("\(e)", "endpoint \"web\" not found")
    }

    func testDescriptionPutsTheHintOnItsOwnLine() {
        let e = MeshError(.alreadyExists, "endpoint \"web\" already exists", hint: "delete it first")
        XCTAssertEqual(e.description, "endpoint \"web\" already exists\nhint: delete it first")
    }

    func testInvalidMakesAnInvalidArgumentError() {
        let e = MeshError.invalid("bad \"x\"", hint: "try y")
        XCTAssertEqual(e, MeshError(.invalidArgument, "bad \"x\"", hint: "try y"))
        XCTAssertNil(MeshError.invalid("bad").hint)
    }

    func testCodeStringsAreStable() {
        // Scripts match on these; changing one is an API break.
        let expected: [(MeshError.Code, String)] = [
            (.invalidArgument, "invalid_argument"), (.notFound, "not_found"),
            (.alreadyExists, "already_exists"), (.exhausted, "resource_exhausted"),
            (.datapath, "datapath_error"), (.unavailable, "unavailable"),
            (.permissionDenied, "permission_denied"), (.internalError, "internal"),
        ]
        for (code, raw) in expected {
            XCTAssertEqual(code.rawValue, raw)
            XCTAssertEqual(MeshError.Code(rawValue: raw), code)
        }
    }

    func testEqualityComparesCodeMessageAndHint() {
        let e = MeshError(.notFound, "x", hint: "h")
        XCTAssertEqual(e, MeshError(.notFound, "x", hint: "h"))
        XCTAssertNotEqual(e, MeshError(.alreadyExists, "x", hint: "h"))
        XCTAssertNotEqual(e, MeshError(.notFound, "y", hint: "h"))
        XCTAssertNotEqual(e, MeshError(.notFound, "x"))
    }

    func testErrorResponseEncodesCodeAsItsStringAndRoundTrips() throws {
        let response = ErrorResponse(error: MeshError(.notFound, "endpoint \"web\" not found",
                                                      hint: "list endpoints with meshctl endpoint list"))
        let data = try MeshJSON.encoder().encode(response)
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
        let error = try XCTUnwrap(object["error"] as? [String: Any])
        XCTAssertEqual(error["code"] as? String, "not_found")
        XCTAssertEqual(error["message"] as? String, "endpoint \"web\" not found")
        XCTAssertEqual(error["hint"] as? String, "list endpoints with meshctl endpoint list")
        XCTAssertEqual(try MeshJSON.decoder().decode(ErrorResponse.self, from: data).error, response.error)
    }

    func testErrorResponseWithoutHintOmitsItAndRoundTrips() throws {
        let response = ErrorResponse(error: MeshError(.exhausted, "pod CIDR 10.200.0.0/30 is full"))
        let data = try MeshJSON.encoder().encode(response)
        let error = try XCTUnwrap((JSONSerialization.jsonObject(with: data) as? [String: Any])?["error"] as? [String: Any])
        XCTAssertEqual(error["code"] as? String, "resource_exhausted")
        XCTAssertNil(error["hint"])
        XCTAssertEqual(try MeshJSON.decoder().decode(ErrorResponse.self, from: data).error, response.error)
    }

    func testDecodesTheDaemonsWireFormat() throws {
        let json = #"{"error":{"code":"already_exists","message":"endpoint \"web\" already exists","hint":"pick another name"}}"#
        let e = try MeshJSON.decoder().decode(ErrorResponse.self, from: Data(json.utf8)).error
        XCTAssertEqual(e, MeshError(.alreadyExists, "endpoint \"web\" already exists", hint: "pick another name"))

        let noHint = #"{"error":{"code":"permission_denied","message":"need root"}}"#
        XCTAssertNil(try MeshJSON.decoder().decode(ErrorResponse.self, from: Data(noHint.utf8)).error.hint)
    }

    func testDecodingRejectsUnknownCodesAndMissingFields() {
        for json in [#"{"error":{"code":"teapot","message":"x"}}"#,
                     #"{"error":{"code":"NOT_FOUND","message":"x"}}"#,
                     #"{"error":{"code":"not_found"}}"#,
                     #"{"error":{"message":"x"}}"#,
                     #"{"message":"x"}"#] {
            XCTAssertThrowsError(try MeshJSON.decoder().decode(ErrorResponse.self, from: Data(json.utf8)), json)
        }
    }

    func testEveryCodeSurvivesTheWire() throws {
        let codes: [MeshError.Code] = [.invalidArgument, .notFound, .alreadyExists, .exhausted,
                                       .datapath, .unavailable, .permissionDenied, .internalError]
        for code in codes {
            let e = MeshError(code, "m")
            let data = try JSONEncoder().encode(ErrorResponse(error: e))
            XCTAssertTrue(String(decoding: data, as: UTF8.self).contains("\"\(code.rawValue)\""))
            XCTAssertEqual(try JSONDecoder().decode(ErrorResponse.self, from: data).error, e)
        }
    }
}
