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

    /// Creates everything; on failure removes what it created and rethrows.
    static func create(_ ep: Endpoint) throws(MeshError) {
        do {
            try Shell.ip("netns", "add", ep.netns)
            try Shell.ip("link", "add", ep.interface, "type", "veth", "peer", "name", "eth0", "netns", ep.netns)
            // IPv4 only for now: without this, IPv6 neighbour discovery would count as
            // traffic and, on enforced endpoints, as unsupported-L3 drops.
            try Shell.ip("netns", "exec", ep.netns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
            try Shell.sysctl("net/ipv6/conf/\(ep.interface)/disable_ipv6", "1")
            try Shell.ip("-n", ep.netns, "link", "set", "lo", "up")
            try Shell.ip("-n", ep.netns, "addr", "add", "\(ep.ipv4)/32", "dev", "eth0")
            try Shell.ip("-n", ep.netns, "link", "set", "eth0", "up")
            try Shell.ip("-n", ep.netns, "route", "add", gateway, "dev", "eth0", "scope", "link")
            try Shell.ip("-n", ep.netns, "route", "add", "default", "via", gateway, "dev", "eth0")
            try Shell.ip("addr", "add", "\(gateway)/32", "dev", ep.interface, "scope", "link")
            try Shell.ip("link", "set", ep.interface, "up")
            try Shell.ip("route", "replace", "\(ep.ipv4)/32", "dev", ep.interface, "scope", "link")
        } catch {
            remove(ep)
            throw error
        }
    }

    /// The MAC address of `interface` in `netns` (nil: the node's netns), from `ip -j`.
    static func mac(of interface: String, netns: String?) throws(MeshError) -> [UInt8] {
        let out = try Shell.ip((netns.map { ["-n", $0] } ?? []) + ["-j", "link", "show", "dev", interface])
        let address = (try? JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]])?.first?["address"] as? String
        let bytes = address?.split(separator: ":").compactMap { UInt8($0, radix: 16) } ?? []
        guard bytes.count == 6 else {
            throw MeshError(.internalError, "no MAC address for \(interface)\(netns.map { " in netns \($0)" } ?? ""): \(out.prefix(200))")
        }
        return bytes
    }

    /// True when the netns, the host-side veth and its route are all in place.
    static func isIntact(_ ep: Endpoint) -> Bool {
        guard netnsExists(ep.netns), ifindex(ep.interface) > 0 else { return false }
        let route = (try? Shell.ip("route", "show", "\(ep.ipv4)/32")) ?? ""
        return route.contains("dev \(ep.interface)")
    }

    /// Removes the veth (both ends), the route with it, and the netns. Missing parts are fine.
    static func remove(_ ep: Endpoint) {
        if ifindex(ep.interface) > 0 { _ = Shell.run(Shell.ipPath, ["link", "del", ep.interface]) }
        if netnsExists(ep.netns) { _ = Shell.run(Shell.ipPath, ["netns", "del", ep.netns]) }
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
        var ifs: UnsafeMutablePointer<if_nameindex>? = if_nameindex()
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
