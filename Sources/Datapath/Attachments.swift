import CBPF
import Glibc

/// Where on an interface a tc program sits: the clsact hook's direction plus the filter's
/// (handle, priority), which is how an attachment is found again after a restart.
public struct TCHook: Sendable, Hashable, CustomStringConvertible {
    public enum Direction: Sendable { case ingress, egress }

    public var ifindex: Int32
    public var direction: Direction
    public var handle: UInt32
    public var priority: UInt32

    public init(ifindex: Int32, direction: Direction, handle: UInt32 = 1, priority: UInt32 = 1) {
        self.ifindex = ifindex
        self.direction = direction
        self.handle = handle
        self.priority = priority
    }

    public var description: String { "if\(ifindex)/\(direction == .ingress ? "ingress" : "egress")" }

    /// Attaches `program` here, atomically replacing a filter already at this place,
    /// so an upgraded or restarted daemon swaps programs without a gap.
    public func attach(_ program: BPFProgram) throws {
        let rc = cbpf_tc_attach(ifindex, direction == .ingress ? 1 : 0, program.fd, handle, priority)
        try check("attach \(program.name) to tc \(self)", rc)
    }

    /// Detaches whatever is here. Returns false when nothing was.
    @discardableResult
    public func detach() throws -> Bool {
        let rc = cbpf_tc_detach(ifindex, direction == .ingress ? 1 : 0, handle, priority)
        if rc == -ENOENT || rc == -EINVAL { return false }
        try check("detach tc \(self)", rc)
        return true
    }

    /// The id of the program attached here, or nil.
    public func attachedProgramID() -> UInt32? {
        let id = cbpf_tc_query(ifindex, direction == .ingress ? 1 : 0, handle, priority)
        return id > 0 ? UInt32(id) : nil
    }
}

/// cgroup and sockhash attachments (`bpf_prog_attach`): sock_ops, connect4 and sk_msg.
public enum ProgramAttachment {
    /// Attaches `program` to the cgroup directory at `cgroupPath` with `type`
    /// (e.g. `BPF_CGROUP_SOCK_OPS`), allowing other programs beside it.
    public static func attach(_ program: BPFProgram, cgroup cgroupPath: String, type: bpf_attach_type) throws {
        let fd = open(cgroupPath, O_RDONLY | O_DIRECTORY)
        guard fd >= 0 else { throw DatapathError("open cgroup \(cgroupPath)", errno: Glibc.errno) }
        defer { close(fd) }
        try check("attach \(program.name) to cgroup \(cgroupPath)",
                  bpf_prog_attach(program.fd, fd, type, UInt32(BPF_F_ALLOW_MULTI)))
    }

    public static func detach(_ program: BPFProgram, cgroup cgroupPath: String, type: bpf_attach_type) throws {
        let fd = open(cgroupPath, O_RDONLY | O_DIRECTORY)
        guard fd >= 0 else { throw DatapathError("open cgroup \(cgroupPath)", errno: Glibc.errno) }
        defer { close(fd) }
        try check("detach \(program.name) from cgroup \(cgroupPath)", bpf_prog_detach2(program.fd, fd, type))
    }

    /// Attaches `program` to a cgroup through a BPF link pinned at `linkPath`. A link pinned
    /// there already (an earlier meshd's) gets the new program swapped in atomically, so
    /// the hook never runs without a program; one whose cgroup is gone is replaced.
    public static func attachLink(_ program: BPFProgram, cgroup cgroupPath: String, type: bpf_attach_type, pinnedAt linkPath: String) throws {
        let existing = bpf_obj_get(linkPath)
        if existing >= 0 {
            defer { close(existing) }
            if bpf_link_update(existing, program.fd, nil) == 0 { return }
            unlink(linkPath)
        }
        let cg = open(cgroupPath, O_RDONLY | O_DIRECTORY)
        guard cg >= 0 else { throw DatapathError("open cgroup \(cgroupPath)", errno: Glibc.errno) }
        defer { close(cg) }
        let link = bpf_link_create(program.fd, cg, type, nil)
        guard link >= 0 else { throw DatapathError("attach \(program.name) to cgroup \(cgroupPath)", errno: Glibc.errno) }
        defer { close(link) }
        try check("pin the link of \(program.name) at \(linkPath)", bpf_obj_pin(link, linkPath))
    }

    /// The id of the program the link pinned at `linkPath` runs, or nil.
    public static func linkedProgramID(pinnedAt linkPath: String) -> UInt32? {
        let fd = bpf_obj_get(linkPath)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var info = bpf_link_info()
        var len = UInt32(MemoryLayout<bpf_link_info>.size)
        return bpf_obj_get_info_by_fd(fd, &info, &len) == 0 ? info.prog_id : nil
    }

    /// Attaches an sk_msg or sk_skb program to a sockmap/sockhash.
    public static func attach(_ program: BPFProgram, map: BPFMap, type: bpf_attach_type) throws {
        try check("attach \(program.name) to map \(map.name)", bpf_prog_attach(program.fd, map.fd, type, 0))
    }

    public static func detach(_ program: BPFProgram, map: BPFMap, type: bpf_attach_type) throws {
        try check("detach \(program.name) from map \(map.name)", bpf_prog_detach2(program.fd, map.fd, type))
    }
}
