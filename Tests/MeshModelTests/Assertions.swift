import XCTest
@testable import MeshModel

/// Asserts that `body` throws a `MeshError` with `code` whose message quotes every one of
/// `fragments`, so a user can see what was wrong. Returns the error for further checks.
@discardableResult
func assertMeshError(
    _ code: MeshError.Code = .invalidArgument,
    mentioning fragments: [String],
    file: StaticString = #filePath, line: UInt = #line,
    _ body: () throws -> Void
) -> MeshError? {
    do {
        try body()
    } catch let error as MeshError {
        XCTAssertEqual(error.code, code, "wrong code for: \(error.message)", file: file, line: line)
        XCTAssertFalse(error.message.isEmpty, "empty message", file: file, line: line)
        for fragment in fragments {
            XCTAssertTrue(error.message.contains(fragment),
                          "message \"\(error.message)\" does not mention \"\(fragment)\"",
                          file: file, line: line)
        }
        return error
    } catch {
        XCTFail("expected a MeshError, got \(type(of: error)): \(error)", file: file, line: line)
        return nil
    }
    XCTFail("expected a MeshError(\(code.rawValue)) mentioning \(fragments), nothing was thrown",
            file: file, line: line)
    return nil
}

/// Asserts that decoding fails with `DecodingError.dataCorrupted` whose description quotes
/// every one of `fragments`.
func assertDataCorrupted(
    mentioning fragments: [String],
    file: StaticString = #filePath, line: UInt = #line,
    _ body: () throws -> Void
) {
    do {
        try body()
        XCTFail("expected decoding to fail", file: file, line: line)
    } catch DecodingError.dataCorrupted(let context) {
        for fragment in fragments {
            XCTAssertTrue(context.debugDescription.contains(fragment),
                          "\"\(context.debugDescription)\" does not mention \"\(fragment)\"",
                          file: file, line: line)
        }
    } catch {
        XCTFail("expected DecodingError.dataCorrupted, got \(error)", file: file, line: line)
    }
}

/// SplitMix64: a tiny seedable generator, so property-style tests replay the same cases.
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

func ip(_ text: String, file: StaticString = #filePath, line: UInt = #line) -> IPv4Address {
    guard let a = IPv4Address(text) else {
        XCTFail("test address \"\(text)\" does not parse", file: file, line: line)
        return IPv4Address(0)
    }
    return a
}

func cidr(_ text: String, file: StaticString = #filePath, line: UInt = #line) -> IPv4CIDR {
    do { return try IPv4CIDR(parsing: text) } catch {
        XCTFail("test CIDR \"\(text)\" does not parse: \(error)", file: file, line: line)
        return try! IPv4CIDR(parsing: "0.0.0.0/0")
    }
}
