import CBPF
import Glibc

/// A failure in the kernel-facing layer, with libbpf's own words (and the verifier log
/// when a program was refused) so an operator sees why, not just that.
public struct DatapathError: Error, CustomStringConvertible, Sendable {
    public var operation: String
    public var errno: Int32
    /// What libbpf printed while the operation ran; holds the verifier log on a refused load.
    public var libbpfLog: String

    public init(_ operation: String, errno: Int32, libbpfLog: String = "") {
        self.operation = operation
        self.errno = errno
        self.libbpfLog = libbpfLog
    }

    public var description: String {
        var s = "\(operation): \(String(cString: strerror(errno))) (errno \(errno))"
        let log = libbpfLog.trimmingCharacters()
        if !log.isEmpty { s += "\nlibbpf said:\n\(log)" }
        return s
    }
}

/// Runs a libbpf call with its warnings captured, throwing a DatapathError on failure.
/// `check` receives the call's result and tells whether it failed and with which errno.
func withLibbpfLog<T>(_ operation: String, _ body: () -> T, failed: (T) -> Int32?) throws -> T {
    cbpf_log_capture_start()
    let result = body()
    let savedErrno = Glibc.errno
    let raw = cbpf_log_take()
    let log = raw.map { String(cString: $0) } ?? ""
    free(raw)
    if let e = failed(result) {
        throw DatapathError(operation, errno: e == 0 ? savedErrno : e, libbpfLog: log)
    }
    return result
}

/// For the plain `int` returns of libbpf and bpf(2) wrappers: negative means -errno.
func check(_ operation: String, _ rc: Int32) throws {
    if rc < 0 { throw DatapathError(operation, errno: -rc == 1 && Glibc.errno != 0 ? Glibc.errno : -rc) }
}

extension String {
    func trimmingCharacters() -> String {
        String(drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
    }
}
