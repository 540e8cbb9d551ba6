/// A workload's label set (`app=web`, `env=prod`), validated as Kubernetes labels are:
/// an optional DNS-subdomain prefix and `/`, a name of at most 63 characters, and a value
/// of at most 63 characters; names and values start and end alphanumeric.
public struct Labels: Codable, Sendable, Hashable, CustomStringConvertible {
    public private(set) var values: [String: String]

    public init() { values = [:] }

    /// Validates every pair; the error names the offending key.
    public init(_ values: [String: String]) throws(MeshError) {
        for (k, v) in values {
            try Labels.validateKey(k)
            try Labels.validateValue(v, key: k)
        }
        self.values = values
    }

    /// Parses `k=v,k=v` as typed on a command line. Empty input is the empty set.
    public init(parsing text: String) throws(MeshError) {
        var out: [String: String] = [:]
        let trimmed = text.trimmingWhitespace()
        if !trimmed.isEmpty {
            for (i, part) in trimmed.split(separator: ",", omittingEmptySubsequences: false).enumerated() {
                let pair = part.trimmingWhitespace()
                guard let eq = pair.firstIndex(of: "=") else {
                    throw .invalid("label \(i + 1) \"\(pair)\" is not key=value",
                                   hint: "write labels as app=web,env=prod")
                }
                guard eq != pair.startIndex else {
                    throw .invalid("label \(i + 1) \"\(pair)\" has an empty key",
                                   hint: "write labels as app=web,env=prod")
                }
                let key = String(pair[..<eq]), value = String(pair[pair.index(after: eq)...])
                if out[key] != nil { throw .invalid("label key \"\(key)\" is given twice") }
                out[key] = value
            }
        }
        try self.init(out)
    }

    public subscript(key: String) -> String? { values[key] }

    /// These labels with `set` applied and `remove` taken away; removing an absent key is
    /// an error that names it (kubectl says the same).
    public func changed(set: [String: String], remove: [String]) throws(MeshError) -> Labels {
        var out = values
        for key in remove {
            guard out.removeValue(forKey: key) != nil else {
                throw .invalid("label \"\(key)\" is not set, so it cannot be removed", hint: "the labels are \(description.isEmpty ? "(none)" : description)")
            }
        }
        for (k, v) in set { out[k] = v }
        return try Labels(out)
    }

    /// `k=v` pairs sorted by key, comma-separated: the canonical text form.
    public var description: String {
        values.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
    }

    public init(from decoder: Decoder) throws {
        let raw = try decoder.singleValueContainer().decode([String: String].self)
        do { try self.init(raw) } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: error.message))
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(values)
    }

    static func validateKey(_ key: String) throws(MeshError) {
        guard !key.isEmpty else { throw .invalid("label key is empty") }
        let parts = key.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2 else { throw .invalid("label key \"\(key)\" has more than one \"/\"") }
        let name = String(parts.last!)
        if parts.count == 2 {
            let prefix = String(parts[0])
            guard !prefix.isEmpty, prefix.count <= 253,
                  prefix.split(separator: ".", omittingEmptySubsequences: false).allSatisfy({ isDNSLabel(String($0)) })
            else { throw .invalid("label key \"\(key)\": prefix \"\(prefix)\" is not a DNS subdomain") }
        }
        guard !name.isEmpty, name.count <= 63, isLabelToken(name) else {
            throw .invalid("label key \"\(key)\": name must be 1-63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric")
        }
    }

    static func validateValue(_ value: String, key: String) throws(MeshError) {
        guard value.isEmpty || (value.count <= 63 && isLabelToken(value)) else {
            throw .invalid("label \"\(key)\": value \"\(value)\" must be at most 63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric")
        }
    }
}

func isAlnum(_ c: Character) -> Bool { c.isASCII && (c.isLetter || c.isNumber) }

func isLabelToken(_ s: String) -> Bool {
    guard let f = s.first, let l = s.last, isAlnum(f), isAlnum(l) else { return false }
    return s.allSatisfy { isAlnum($0) || $0 == "-" || $0 == "_" || $0 == "." }
}

/// RFC 1123 label: lowercase alphanumerics and '-', alphanumeric at both ends, 1-63 long.
func isDNSLabel(_ s: String) -> Bool {
    guard !s.isEmpty, s.count <= 63, let f = s.first, let l = s.last else { return false }
    let ok: (Character) -> Bool = { $0.isASCII && ($0.isLowercase || $0.isNumber) }
    return ok(f) && ok(l) && s.allSatisfy { ok($0) || $0 == "-" }
}

extension StringProtocol {
    func trimmingWhitespace() -> String {
        String(drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
    }
}
