import Foundation

/// Drives Fixtures/traffic.py inside endpoints through `meshctl endpoint exec`, so the
/// traffic really crosses the endpoints' veths and the node's BPF programs.
struct Traffic {
    let node: TestNode
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Fixtures/traffic.py").path

    struct Background {
        let pid: pid_t
        let output: String

        /// Waits for the process and decodes its one JSON line.
        func result(timeout: TimeInterval = 60) throws -> [String: Any] {
            let deadline = Date().addingTimeInterval(timeout)
            var st: Int32 = 0
            while waitpid(pid, &st, WNOHANG) == 0 {
                if Date() > deadline {
                    kill(pid, SIGKILL)
                    throw TestFailure("traffic process \(pid) did not finish in \(timeout) s")
                }
                usleep(20_000)
            }
            let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
            guard let line = text.split(separator: "\n").last(where: { $0.hasPrefix("{") }),
                  let obj = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                throw TestFailure("no JSON result from traffic process: \(text)")
            }
            return obj
        }
    }

    /// Starts `traffic.py ARGS` in endpoint `ep`; returns once it is listening (sinks) or started.
    func start(in ep: String, _ args: [String], waitReady: Bool = false) throws -> Background {
        let tag = UUID().uuidString.prefix(8)
        let out = "\(node.dir)/traffic-\(tag).out"
        let ready = "\(node.dir)/traffic-\(tag).ready"
        let full = ["endpoint", "exec", ep, "--", "python3", Self.script] + args + (waitReady ? ["--ready-file", ready] : [])
        let pid = try Run.spawn(TestNode.products + "/meshctl", full, output: out,
                                environment: ["SWIFTMESH_API_SOCKET": node.socket])
        if waitReady {
            let deadline = Date().addingTimeInterval(15)
            while !FileManager.default.fileExists(atPath: ready) {
                guard Date() < deadline else { throw TestFailure("sink in \(ep) never became ready: \((try? String(contentsOfFile: out, encoding: .utf8)) ?? "")") }
                usleep(20_000)
            }
        }
        return Background(pid: pid, output: out)
    }

    /// Starts `traffic.py ARGS` directly in a named netns (an external host).
    func startInNetns(_ ns: String, _ args: [String], waitReady: Bool = false) throws -> Background {
        let tag = UUID().uuidString.prefix(8)
        let out = "\(node.dir)/traffic-\(tag).out"
        let ready = "\(node.dir)/traffic-\(tag).ready"
        let full = ["netns", "exec", ns, "python3", Self.script] + args + (waitReady ? ["--ready-file", ready] : [])
        let pid = try Run.spawn("/usr/sbin/ip", full, output: out)
        if waitReady {
            let deadline = Date().addingTimeInterval(15)
            while !FileManager.default.fileExists(atPath: ready) {
                guard Date() < deadline else { throw TestFailure("server in \(ns) never became ready") }
                usleep(20_000)
            }
        }
        return Background(pid: pid, output: out)
    }

    /// Runs `traffic.py ARGS` in endpoint `ep` to completion.
    func run(in ep: String, _ args: [String]) throws -> [String: Any] {
        try start(in: ep, args).result()
    }
}
