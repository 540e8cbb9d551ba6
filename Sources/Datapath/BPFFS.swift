import CBPF
import Glibc

/// The BPF filesystem where maps and programs are pinned.
public enum BPFFS {
    /// Mounts bpffs at `root` (normally /sys/fs/bpf) if nothing of type bpf is there yet.
    public static func ensureMounted(_ root: String = "/sys/fs/bpf") throws {
        if isMounted(root) { return }
        mkdir(root, 0o700)
        guard mount("bpf", root, "bpf", 0, nil) == 0 else {
            throw DatapathError("mount bpffs at \(root)", errno: Glibc.errno)
        }
    }

    public static func isMounted(_ path: String) -> Bool {
        var s = statfs()
        // BPF_FS_MAGIC
        return statfs(path, &s) == 0 && UInt(bitPattern: Int(s.f_type)) == 0xcafe_4a11
    }

    /// Creates `dir` and its parents (mode 0700).
    public static func makeDirectory(_ dir: String) throws {
        var path = ""
        for part in dir.split(separator: "/") {
            path += "/" + part
            if mkdir(path, 0o700) != 0 && Glibc.errno != EEXIST {
                throw DatapathError("create pin directory \(path)", errno: Glibc.errno)
            }
        }
    }

    /// Removes a pin folder and every pin in it (one level deep, as meshd lays it out).
    public static func removeDirectory(_ dir: String) {
        guard let d = opendir(dir) else { return }
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name == "." || name == ".." { continue }
            unlink(dir + "/" + name)
        }
        closedir(d)
        rmdir(dir)
    }
}
