import Datapath
import Foundation
import MeshModel

/// The Agent's view of the datapath: endpoints in, MeshErrors out.
extension MeshDatapath {
    static func load(settings: NodeSettings, nodeID: UInt32) throws(MeshError) -> MeshDatapath {
        do {
            return try MeshDatapath(pinDir: settings.bpffs, nodeID: nodeID, sizes: settings.mapSizes, proxyPort: settings.proxy?.port ?? 0,
                                    mtlsStrict: settings.trust.mtlsStrict)
        } catch {
            throw MeshError(.datapath, "loading the BPF datapath failed: \(error)",
                            hint: "meshd needs root, a kernel with BTF, and bpffs at /sys/fs/bpf")
        }
    }

    func install(_ ep: Endpoint) throws(MeshError) {
        let ifindex = Plumbing.ifindex(ep.interface)
        guard ifindex > 0 else { throw MeshError(.datapath, "interface \(ep.interface) of endpoint \(ep.name) does not exist") }
        let mac = try Plumbing.mac(of: "eth0", netns: ep.netns), gateway = try Plumbing.mac(of: ep.interface, netns: nil)
        do {
            try install(endpointID: UInt32(ep.id), ipv4NetworkOrder: ep.ipv4.networkOrder, ifindex: ifindex, mac: mac, gatewayMAC: gateway)
        } catch {
            throw MeshError(.datapath, "attaching the datapath to \(ep.interface) failed: \(error)")
        }
    }

    func attachments(of ep: Endpoint) -> [String] {
        attachedDirections(ifindex: Plumbing.ifindex(ep.interface)).map { "\(ep.interface)/\($0 == .ingress ? "ingress" : "egress")" }
    }
}
