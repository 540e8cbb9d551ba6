import Foundation
import MeshModel

/// The cgroup v2 hierarchy: found from /proc/self/mountinfo, never assumed (hybrid
/// systems mount it at /sys/fs/cgroup/unified, unified ones at /sys/fs/cgroup).
public enum Cgroup2 {
    public static func mountPoint() throws(MeshError) -> String {
        guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else {
            throw MeshError(.unavailable, "cannot read /proc/self/mountinfo")
        }
        for line in text.split(separator: "\n") {
            // fields: id parent major:minor root mountpoint opts ... - fstype source superopts
            let halves = line.components(separatedBy: " - ")
            guard halves.count == 2, halves[1].hasPrefix("cgroup2 ") else { continue }
            let fields = halves[0].split(separator: " ")
            if fields.count >= 5 { return String(fields[4]) }
        }
        throw MeshError(.unavailable, "no cgroup2 filesystem is mounted", hint: "mount -t cgroup2 none /sys/fs/cgroup/unified")
    }

    public static func create(_ path: String) throws(MeshError) {
        knownIDs.forget(path)
        do { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) } catch {
            throw MeshError(.internalError, "cannot create cgroup \(path): \(error.localizedDescription)")
        }
    }

    /// Kills every process in the cgroup and removes it. Missing is fine.
    public static func remove(_ path: String) {
        knownIDs.forget(path)
        guard FileManager.default.fileExists(atPath: path) else { return }
        // cgroup.kill (5.14+) kills the whole subtree at once, including forks in flight.
        if FileManager.default.fileExists(atPath: path + "/cgroup.kill") {
            try? "1".write(toFile: path + "/cgroup.kill", atomically: false, encoding: .utf8)
        } else {
            for pid in processes(path) { kill(pid, SIGKILL) }
        }
        var tries = 0
        while !processes(path).isEmpty && tries < 100 { usleep(10_000); tries += 1 }
        rmdir(path)
        knownIDs.forget(path) // again: a sync in the meantime may have read it before the rmdir
    }

    /// The cgroup's id, as bpf_get_current_cgroup_id() reports it: its folder's inode.
    /// Remembered per path until meshd creates or removes that cgroup again: the service
    /// sync names every endpoint's cgroup on each change, a `stat` each.
    public static func id(_ path: String) -> UInt64? {
        if let id = knownIDs.get(path) { return id }
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        knownIDs.set(path, UInt64(st.st_ino))
        return UInt64(st.st_ino)
    }

    private static let knownIDs = IDs()

    private final class IDs: @unchecked Sendable { // `byPath` only under `lock`
        private let lock = NSLock()
        private var byPath: [String: UInt64] = [:]
        func get(_ path: String) -> UInt64? { lock.withLock { byPath[path] } }
        func set(_ path: String, _ id: UInt64) { lock.withLock { byPath[path] = id } }
        func forget(_ path: String) { _ = lock.withLock { byPath.removeValue(forKey: path) } }
    }

    public static func processes(_ path: String) -> [Int32] {
        ((try? String(contentsOfFile: path + "/cgroup.procs", encoding: .utf8)) ?? "")
            .split(separator: "\n").compactMap { Int32($0) }
    }
}
