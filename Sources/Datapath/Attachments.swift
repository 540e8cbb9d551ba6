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

    /// Attaches an sk_msg or sk_skb program to a sockmap/sockhash.
    public static func attach(_ program: BPFProgram, map: BPFMap, type: bpf_attach_type) throws {
        try check("attach \(program.name) to map \(map.name)", bpf_prog_attach(program.fd, map.fd, type, 0))
    }

    public static func detach(_ program: BPFProgram, map: BPFMap, type: bpf_attach_type) throws {
        try check("detach \(program.name) from map \(map.name)", bpf_prog_detach2(program.fd, map.fd, type))
    }
}
