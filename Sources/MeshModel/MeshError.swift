/// An error a user can act on: a stable code for scripts, a message that says what was
/// wrong and where, and, when there is one, what to do about it.
///
/// It crosses the API unchanged, so `meshctl` prints the daemon's own words.
public struct MeshError: Error, Codable, Sendable, Equatable, CustomStringConvertible {
    /// Stable, machine-readable error classes. The API maps each to one HTTP status.
    public enum Code: String, Codable, Sendable {
        case invalidArgument = "invalid_argument"
        case notFound = "not_found"
        case alreadyExists = "already_exists"
        case exhausted = "resource_exhausted"
        case datapath = "datapath_error"
        case unavailable = "unavailable"
        case permissionDenied = "permission_denied"
        /// A request larger than the API takes.
        case tooLarge = "too_large"
        case internalError = "internal"
    }

    public var code: Code
    public var message: String
    /// What to do next, when the fix is not obvious from the message.
    public var hint: String?

    public init(_ code: Code, _ message: String, hint: String? = nil) {
        self.code = code
        self.message = message
        self.hint = hint
    }

    public var description: String {
        hint.map { "\(message)\nhint: \($0)" } ?? message
    }

    public static func invalid(_ message: String, hint: String? = nil) -> MeshError {
        MeshError(.invalidArgument, message, hint: hint)
    }
}
