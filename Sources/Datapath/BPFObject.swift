import CBPF
import Glibc

/// An opened but not yet loaded BPF object: what the ELF file declares, still editable.
/// Set `const volatile` configuration and map sizes here, then `load()`.
/// (The spec/loaded split follows cilium/ebpf.)
public final class BPFObjectSpec {
    fileprivate var object: OpaquePointer?
    public let name: String

    /// Opens an in-memory ELF object. Maps declared `LIBBPF_PIN_BY_NAME` are pinned under
    /// (and, if already there and compatible, re-used from) `pinRoot`.
    public init(bytes: [UInt8], name: String, pinRoot: String?) throws {
        self.name = name
        let obj = try withLibbpfLog("open BPF object \(name)", {
            bytes.withUnsafeBytes { buf in cbpf_open_mem(buf.baseAddress, buf.count, name, pinRoot) }
        }, failed: { $0 == nil ? Int32(Glibc.errno) : nil })
        object = obj
    }

    deinit { if let object { bpf_object__close(object) } }

    /// Sets a `const volatile` global before load.
    public func setConstant<T: BitwiseCopyable>(_ variable: String, _ value: T) throws {
        guard let object else { throw DatapathError("set \(variable)", errno: EBADF) }
        var v = value
        let rc = withUnsafeBytes(of: &v) { cbpf_set_rodata(object, variable, $0.baseAddress, $0.count) }
        if rc == -ENOENT { throw DatapathError("set constant \(variable) of \(name): no such const volatile global", errno: ENOENT) }
        try check("set constant \(variable) of \(name)", rc)
    }

    /// Resizes a map before load.
    public func setMaxEntries(_ map: String, _ entries: UInt32) throws {
        guard let object, let m = bpf_object__find_map_by_name(object, map) else {
            throw DatapathError("resize map \(map): not in object \(name)", errno: ENOENT)
        }
        try check("resize map \(map)", bpf_map__set_max_entries(m, entries))
    }

    /// Loads every program and map into the kernel. A refused program throws with the
    /// verifier log. The spec is consumed: its object now belongs to the result.
    ///
    /// A pinned map whose layout no longer matches the object (a newer meshd changed it)
    /// is unpinned first and created anew, empty: libbpf would refuse to re-use it, and
    /// the node could not start after an upgrade. `LoadedBPFObject.replacedMaps` says which.
    public func load() throws -> LoadedBPFObject {
        guard let object else { throw DatapathError("load \(name): already loaded", errno: EINVAL) }
        var report = [CChar](repeating: 0, count: 4096)
        try check("check the pinned maps of \(name)", cbpf_unpin_incompatible(object, &report, report.count))
        let replaced = String(cString: report).split(separator: "\n").map(String.init)
        _ = try withLibbpfLog("load BPF object \(name)", { bpf_object__load(object) },
                              failed: { $0 < 0 ? -$0 : nil })
        self.object = nil
        return LoadedBPFObject(object: object, name: name, replacedMaps: replaced)
    }
}

/// A BPF object in the kernel: its programs and maps, owned until `close` or deinit.
/// Pinned maps and attached programs outlive it; that is what keeps traffic flowing
/// while `meshd` restarts.
public final class LoadedBPFObject: @unchecked Sendable {
    private var object: OpaquePointer?
    public let name: String
    /// Pinned maps this load replaced because their layout had changed, one line each:
    /// "name: what differs". Their entries started empty.
    public let replacedMaps: [String]

    init(object: OpaquePointer, name: String, replacedMaps: [String]) {
        self.object = object
        self.name = name
        self.replacedMaps = replacedMaps
    }

    deinit { close() }

    public func close() {
        if let object { bpf_object__close(object) }
        object = nil
    }

    public func program(_ name: String) throws -> BPFProgram {
        guard let object, let p = bpf_object__find_program_by_name(object, name) else {
            throw DatapathError("find program \(name) in \(self.name)", errno: ENOENT)
        }
        return try BPFProgram(borrowingFD: bpf_program__fd(p), name: name)
    }

    public func map(_ name: String) throws -> BPFMap {
        guard let object, let m = bpf_object__find_map_by_name(object, name) else {
            throw DatapathError("find map \(name) in \(self.name)", errno: ENOENT)
        }
        return try BPFMap(borrowingFD: bpf_map__fd(m))
    }
}

/// A loaded program, holding its own file descriptor.
public final class BPFProgram: @unchecked Sendable {
    public let fd: Int32
    public let name: String

    /// Duplicates `fd`, so the program stays usable after its object is closed.
    init(borrowingFD fd: Int32, name: String) throws {
        guard fd >= 0 else { throw DatapathError("program \(name) is not loaded", errno: EBADF) }
        let own = dup(fd)
        guard own >= 0 else { throw DatapathError("dup program fd", errno: Glibc.errno) }
        self.fd = own
        self.name = name
    }

    /// Opens a program pinned at `path`.
    public init(pinnedAt path: String, name: String) throws {
        let fd = bpf_obj_get(path)
        guard fd >= 0 else { throw DatapathError("open pinned program \(path)", errno: Glibc.errno) }
        self.fd = fd
        self.name = name
    }

    deinit { Glibc.close(fd) }

    /// The kernel's id for this program (what `bpftool prog show id N` takes).
    public var id: UInt32 {
        var info = bpf_prog_info()
        var len = UInt32(MemoryLayout<bpf_prog_info>.size)
        return bpf_obj_get_info_by_fd(fd, &info, &len) == 0 ? info.id : 0
    }

    /// Pins the program at `path`, replacing whatever was pinned there.
    public func pin(at path: String) throws {
        unlink(path)
        try check("pin program \(name) at \(path)", bpf_obj_pin(fd, path))
    }
}
