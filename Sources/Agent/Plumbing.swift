import Foundation
import Glibc
import MeshModel

/// An endpoint's network plumbing: its named netns, a veth pair whose host side stays in
/// the node's netns, its address and routes.
///
/// Addressing follows the Calico/Cilium "/32 plus link-local gateway" layout: the
/// endpoint owns `IP/32` and routes everything via 169.254.1.1, an address every host-side
/// veth holds, so the node routes between endpoints with one /32 route each and no bridge.
enum Plumbing {
    static let gateway = "169.254.1.1"

    static func netnsExists(_ name: String) -> Bool {
        FileManager.default.fileExists(atPath: "/run/netns/\(name)")
    }

    static func ifindex(_ interface: String) -> Int32 {
        Int32(bitPattern: if_nametoindex(interface))
    }

    static let gatewayAddress = IPv4Address(gateway)!

    /// Creates everything through netlink and the namespace calls (no process is spawned);
    /// on failure removes what it created, and only that (a name someone else holds is
    /// never deleted), and rethrows the kernel's message.
    static func create(_ ep: Endpoint) throws(MeshError) {
        var madeNetns = false, madeVeth = false
        do {
            try Netlink.addNetns(ep.netns)
            madeNetns = true
            let ns = try Netlink.openNetns(ep.netns)
            defer { ns.close() }
            try Netlink.addVeth(ep.interface, peer: "eth0", in: ns)
            madeVeth = true
            // IPv4 only for now: without this, IPv6 neighbour discovery would count as
            // traffic and, on enforced endpoints, as unsupported-L3 drops.
            try Netlink.sysctl("net/ipv6/conf/all/disable_ipv6", "1", in: ns)
            try Netlink.sysctl("net/ipv6/conf/default/disable_ipv6", "1", in: ns)
            try Netlink.sysctl("net/ipv6/conf/eth0/disable_ipv6", "1", in: ns)
            try Netlink.sysctl("net/ipv6/conf/\(ep.interface)/disable_ipv6", "1")
            try Netlink.setUp("lo", in: ns)
            try Netlink.addAddress(ep.ipv4, prefixLength: 32, on: "eth0", in: ns)
            try Netlink.setUp("eth0", in: ns)
            try Netlink.addRoute(try! IPv4CIDR(parsing: "\(gateway)/32"), device: "eth0", scope: Netlink.scopeLink, in: ns)
            try Netlink.addRoute(try! IPv4CIDR(parsing: "0.0.0.0/0"), gateway: gatewayAddress, device: "eth0", in: ns)
            try Netlink.addAddress(gatewayAddress, prefixLength: 32, scope: Netlink.scopeLink, on: ep.interface)
            try Netlink.setUp(ep.interface)
            try Netlink.addRoute(try! IPv4CIDR(parsing: "\(ep.ipv4)/32"), device: ep.interface, scope: Netlink.scopeLink, replace: true)
        } catch {
            if madeVeth { try? Netlink.deleteLink(ep.interface) }
            if madeNetns { try? Netlink.deleteNetns(ep.netns) }
            throw error
        }
    }

    /// The MAC address of `interface` in `netns` (nil: the node's netns).
    static func mac(of interface: String, netns: String?) throws(MeshError) -> [UInt8] {
        guard let netns else { return try Netlink.mac(of: interface) }
        let ns = try Netlink.openNetns(netns)
        defer { ns.close() }
        return try Netlink.mac(of: interface, in: ns)
    }

    /// True when the netns, the host-side veth and its route are all in place.
    static func isIntact(_ ep: Endpoint) -> Bool {
        let index = ifindex(ep.interface)
        guard netnsExists(ep.netns), index > 0 else { return false }
        return Netlink.routeInterface(to: ep.ipv4) == index
    }

    /// Removes the veth (both ends), the route with it, and the netns. Missing parts are fine.
    static func remove(_ ep: Endpoint) {
        if ifindex(ep.interface) > 0 { try? Netlink.deleteLink(ep.interface) }
        if netnsExists(ep.netns) { try? Netlink.deleteNetns(ep.netns) }
    }

    /// Named netns that look like this node's endpoints (`<node>-ep-*`).
    static func nodeNetns(prefix: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/run/netns")) ?? []
        return names.filter { $0.hasPrefix(prefix) }
    }

    /// Host-side veths of this node's naming scheme (`prefix` and an id) in the node's
    /// netns. Another node's veths, and the untagged `smv<id>` of older versions, never match.
    static func nodeInterfaces(prefix: String) -> [String] {
        var out: [String] = []
        let ifs: UnsafeMutablePointer<if_nameindex>? = if_nameindex()
        defer { if let ifs { if_freenameindex(ifs) } }
        var p = ifs
        while let cur = p, cur.pointee.if_index != 0 {
            let name = String(cString: cur.pointee.if_name)
            let id = name.dropFirst(prefix.count)
            if name.hasPrefix(prefix), !id.isEmpty, id.allSatisfy({ $0.isASCII && $0.isNumber }) { out.append(name) }
            p = cur + 1
        }
        return out
    }
}
