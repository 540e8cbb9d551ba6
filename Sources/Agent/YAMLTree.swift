import MeshModel
import Yams

/// Converts YAML text into MeshModel's PolicyTree (MeshModel stays free of dependencies).
enum YAMLTree {
    /// Every document of a multi-document YAML text; empty documents are `.null`.
    static func documents(_ text: String, source: String) throws(MeshError) -> [PolicyTree] {
        do {
            var out: [PolicyTree] = []
            // The basic resolver: no regular expression runs per scalar to guess its type
            // (Yams' default resolver did, for every key of every mapping, and that was half
            // the time of applying a 1,000-rule policy); `tree` below gives scalars their
            // type itself, from the text and its style.
            let seq = try Yams.compose_all(yaml: text, .basic)
            for node in seq { out.append(try tree(node, path: "")) }
            if let e = seq.error { throw e }
            return out
        } catch let e as MeshError {
            throw MeshError(.invalidArgument, "\(source): \(e.message)")
        } catch {
            throw MeshError(.invalidArgument, "\(source): not valid YAML: \(error)")
        }
    }

    static func tree(_ node: Node, path: String) throws -> PolicyTree {
        switch node {
        case .scalar(let s):
            guard s.style == .plain else { return .string(s.string) }
            switch s.string {
            case "true", "True", "TRUE": return .bool(true)
            case "false", "False", "FALSE": return .bool(false)
            case "", "~", "null", "Null", "NULL": return .null
            default: return Int(s.string).map(PolicyTree.int) ?? .string(s.string)
            }
        case .mapping(let m):
            var pairs: [(String, PolicyTree)] = []
            var seen = Set<String>()
            for (k, v) in m {
                guard case .scalar(let ks) = k else { throw MeshError.invalid("\(path.isEmpty ? "document" : path): a key is not a string") }
                let child = path.isEmpty ? ks.string : "\(path).\(ks.string)"
                guard seen.insert(ks.string).inserted else { throw MeshError.invalid("\(child): the key appears twice") }
                pairs.append((ks.string, try tree(v, path: child)))
            }
            return .map(pairs)
        case .sequence(let s):
            return .list(try s.enumerated().map { try tree($0.element, path: "\(path)[\($0.offset)]") })
        case .alias:
            throw MeshError.invalid("\(path): YAML aliases are not supported in policies")
        }
    }

    /// YAML text of one tree (for `policy get -o yaml`).
    static func text(_ tree: PolicyTree) -> String {
        (try? Yams.serialize(node: node(tree))) ?? ""
    }

    static func node(_ t: PolicyTree) -> Node {
        switch t {
        case .map(let pairs): return .mapping(Node.Mapping(pairs.map { (Node($0.0), node($0.1)) }))
        case .list(let items): return .sequence(Node.Sequence(items.map(node)))
        case .string(let s):
            // Quote strings that would otherwise read back as another type.
            let plain = Int(s) == nil && !["true", "false", "null", "~", ""].contains(s.lowercased())
            return .scalar(Node.Scalar(s, .implicit, plain ? .plain : .doubleQuoted))
        case .int(let i): return Node(String(i))
        case .bool(let b): return Node(b ? "true" : "false")
        case .null: return Node("null")
        }
    }
}
