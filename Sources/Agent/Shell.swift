import Foundation
import MeshModel

/// Runs iproute2 (`ip`) and friends. Netlink by hand would be hundreds of lines that
/// iproute2 already gets right on every kernel; its error text is also what operators know.
enum Shell {
    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    /// Runs a program to completion, capturing its output. posix_spawn rather than
    /// Foundation.Process: Process needs CFRunLoop wake-up sockets, which fail to be made in
    /// a fresh network namespace (lo down), and then hangs.
    static func run(_ executable: String, _ args: [String]) -> Result {
        var outPipe: [Int32] = [0, 0], errPipe: [Int32] = [0, 0]
        guard pipe(&outPipe) == 0, pipe(&errPipe) == 0 else {
            return Result(status: 127, stdout: "", stderr: "pipe: \(String(cString: strerror(errno)))")
        }
        for fd in outPipe + errPipe { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
        let argv = ([executable] + args).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, executable, &actions, nil, argv, environ)
        close(outPipe[1])
        close(errPipe[1])
        defer { close(outPipe[0]); close(errPipe[0]) }
        guard rc == 0 else {
            return Result(status: 127, stdout: "", stderr: "cannot run \(executable): \(String(cString: strerror(rc)))")
        }
        var out: [UInt8] = [], err: [UInt8] = []
        var fds = [pollfd(fd: outPipe[0], events: Int16(POLLIN), revents: 0), pollfd(fd: errPipe[0], events: Int16(POLLIN), revents: 0)]
        var open = 2
        var buf = [UInt8](repeating: 0, count: 8192)
        while open > 0 {
            if poll(&fds, 2, -1) < 0 { if errno == EINTR { continue } else { break } }
            for i in 0..<2 where fds[i].fd >= 0 && fds[i].revents != 0 {
                let n = read(fds[i].fd, &buf, buf.count)
                if n > 0 {
                    if i == 0 { out += buf[0..<n] } else { err += buf[0..<n] }
                } else if n == 0 || errno != EINTR {
                    fds[i].fd = -1
                    open -= 1
                }
            }
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        // WIFEXITED / WEXITSTATUS, which Swift does not import as macros.
        let code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return Result(status: code, stdout: String(decoding: out, as: UTF8.self), stderr: String(decoding: err, as: UTF8.self))
    }

    static let ipPath = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .first { FileManager.default.isExecutableFile(atPath: $0) } ?? "/usr/sbin/ip"

    /// `ip ARGS`, throwing iproute2's own message on failure.
    @discardableResult
    static func ip(_ args: String...) throws(MeshError) -> String {
        try ip(args)
    }

    @discardableResult
    static func ip(_ args: [String]) throws(MeshError) -> String {
        let r = run(ipPath, args)
        guard r.status == 0 else {
            throw MeshError(.internalError, "ip \(args.joined(separator: " ")) failed: \(r.stderr.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        return r.stdout
    }

    /// Writes a sysctl of the calling process's network namespace.
    static func sysctl(_ path: String, _ value: String) throws(MeshError) {
        do { try value.write(toFile: "/proc/sys/" + path, atomically: false, encoding: .utf8) } catch {
            throw MeshError(.internalError, "cannot set /proc/sys/\(path) to \(value): \(error.localizedDescription)")
        }
    }
}
