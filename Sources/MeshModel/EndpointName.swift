/// Endpoint names become parts of namespace, cgroup and file names, so they are held to
/// RFC 1123 labels, shortened to 40 characters to leave room for the node's prefix.
public enum EndpointName {
    public static let maxLength = 40

    public static func validate(_ name: String) throws(MeshError) {
        guard !name.isEmpty else { throw .invalid("endpoint name is empty") }
        guard name.count <= maxLength else {
            throw .invalid("endpoint name \"\(name)\" is \(name.count) characters long; the limit is \(maxLength)")
        }
        guard isDNSLabel(name) else {
            throw .invalid("endpoint name \"\(name)\" must be lowercase letters, digits and '-', starting and ending with a letter or digit",
                           hint: "for example web-1")
        }
    }
}
