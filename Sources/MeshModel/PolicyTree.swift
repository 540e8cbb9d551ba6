/// A policy document as a plain tree, before any meaning is given to it: what a YAML or
/// JSON reader produces, with map keys kept in document order so that errors can be
/// reported in the order the user wrote them.
///
/// MeshModel reads no YAML itself. Callers convert their parser's output: an unquoted
/// integer becomes `.int`, `true`/`false` become `.bool`, an empty value becomes `.null`,
/// every other scalar `.string`. The literal conformances let tests write documents as
/// Swift literals that look like the YAML they stand for.
public indirect enum PolicyTree: Sendable, Equatable {
    /// A mapping; keys in document order.
    case map([(String, PolicyTree)])
    case list([PolicyTree])
    case string(String)
    case int(Int)
    case bool(Bool)
    case null

    public static func == (a: PolicyTree, b: PolicyTree) -> Bool {
        switch (a, b) {
        case let (.map(x), .map(y)):
            x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        case let (.list(x), .list(y)): x == y
        case let (.string(x), .string(y)): x == y
        case let (.int(x), .int(y)): x == y
        case let (.bool(x), .bool(y)): x == y
        case (.null, .null): true
        default: false
        }
    }

    /// The value under `key` when this is a map holding it.
    public subscript(key: String) -> PolicyTree? {
        guard case .map(let pairs) = self else { return nil }
        return pairs.first { $0.0 == key }?.1
    }

    /// A short phrase for error messages: `a map`, `the string "http"`, `the number 8`.
    var summary: String {
        switch self {
        case .map: "a map"
        case .list: "a list"
        case .string(let s): "the string \"\(s)\""
        case .int(let i): "the number \(i)"
        case .bool(let b): "the boolean \(b)"
        case .null: "an empty value"
        }
    }
}

extension PolicyTree: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral,
    ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral {
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int) { self = .int(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(arrayLiteral elements: PolicyTree...) { self = .list(elements) }
    /// Keeps the literal's order, and its duplicate keys, which the parser then refuses.
    public init(dictionaryLiteral elements: (String, PolicyTree)...) { self = .map(elements) }
}
