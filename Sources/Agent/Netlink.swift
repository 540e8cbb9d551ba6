import CNetlink
import Foundation
import Glibc
import MeshModel

/// The kernel's interfaces for endpoint plumbing: rtnetlink through libmnl (CNetlink) and
/// the namespace calls, in place of a dozen `ip` processes per endpoint. Errors carry the
/// kernel's own message (its extended ack when it sent one).
enum Netlink {
    /// A named netns opened for the calls below; closed by `close()`.
    struct Namespace {
        let name: String
        let fd: Int32
        func close() { _ = Glibc.close(fd) }
    }

    private static func check(_ rc: Int32, _ err: sm_nl_err) throws(MeshError) {
        guard rc >= 0 else {
            var e = err
            let text = withUnsafeBytes(of: &e.msg) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            throw MeshError(.internalError, text)
        }
    }

    private static func call(_ body: (UnsafeMutablePointer<sm_nl_err>) -> Int32) throws(MeshError) -> Int32 {
        var err = sm_nl_err()
        let rc = body(&err)
        try check(rc, err)
        return rc
    }

    static func addNetns(_ name: String) throws(MeshError) { _ = try call { sm_netns_add(name, $0) } }
    static func deleteNetns(_ name: String) throws(MeshError) { _ = try call { sm_netns_del(name, $0) } }
    static func openNetns(_ name: String) throws(MeshError) -> Namespace {
        Namespace(name: name, fd: try call { sm_netns_open(name, $0) })
    }

    /// A veth pair: `host` here, `peer` in `netns`.
    static func addVeth(_ host: String, peer: String, in netns: Namespace) throws(MeshError) {
        _ = try call { sm_veth_add(host, peer, netns.fd, $0) }
    }

    static func deleteLink(_ name: String, in netns: Namespace? = nil) throws(MeshError) {
        _ = try call { sm_link_del(netns?.fd ?? -1, name, $0) }
    }

    static func setUp(_ name: String, in netns: Namespace? = nil) throws(MeshError) {
        _ = try call { sm_link_up(netns?.fd ?? -1, name, $0) }
    }

    static func mac(of name: String, in netns: Namespace? = nil) throws(MeshError) -> [UInt8] {
        var mac = [UInt8](repeating: 0, count: 6)
        _ = try call { err in mac.withUnsafeMutableBufferPointer { sm_link_mac(netns?.fd ?? -1, name, $0.baseAddress, err) } }
        return mac
    }

    static func addAddress(_ address: IPv4Address, prefixLength: UInt8, scope: UInt8 = UInt8(SM_SCOPE_UNIVERSE),
                           on name: String, in netns: Namespace? = nil) throws(MeshError) {
        _ = try call { sm_addr_add(netns?.fd ?? -1, name, address.networkOrder, prefixLength, scope, $0) }
    }

    /// A unicast route via `device` (and `gateway`), or an unreachable one with neither.
    static let scopeLink = UInt8(SM_SCOPE_LINK)

    static func addRoute(_ destination: IPv4CIDR, gateway: IPv4Address? = nil, device: String?,
                         scope: UInt8 = UInt8(SM_SCOPE_UNIVERSE), unreachable: Bool = false,
                         replace: Bool = false, in netns: Namespace? = nil) throws(MeshError) {
        let type = UInt8(unreachable ? SM_RTN_UNREACHABLE : SM_RTN_UNICAST)
        _ = try call {
            sm_route_add(netns?.fd ?? -1, destination.network.networkOrder, UInt8(destination.prefixLength),
                         gateway?.networkOrder ?? 0, device, scope, type, replace ? 1 : 0, $0)
        }
    }

    /// A route to another node's pod CIDR via its node IP, tagged as SwiftMesh's own
    /// (replacing whatever route to that CIDR was there).
    static func setNodeRoute(_ destination: IPv4CIDR, via gateway: IPv4Address) throws(MeshError) {
        _ = try call {
            sm_route_add_proto(-1, destination.network.networkOrder, UInt8(destination.prefixLength), gateway.networkOrder, nil,
                               UInt8(SM_SCOPE_UNIVERSE), UInt8(SM_RTN_UNICAST), 1, UInt8(SM_RTPROT_SWIFTMESH), $0)
        }
    }

    static func deleteRoute(_ destination: IPv4CIDR) throws(MeshError) {
        _ = try call { sm_route_del(-1, destination.network.networkOrder, UInt8(destination.prefixLength), $0) }
    }

    /// The routes `setNodeRoute` made (this netns, main table): destination and gateway.
    static func nodeRoutes() throws(MeshError) -> [(IPv4CIDR, IPv4Address)] {
        var cap = 64
        while true {
            var dst = [UInt32](repeating: 0, count: cap), len = [UInt8](repeating: 0, count: cap), gw = [UInt32](repeating: 0, count: cap)
            let n = Int(try call { err in
                dst.withUnsafeMutableBufferPointer { d in
                    len.withUnsafeMutableBufferPointer { l in
                        gw.withUnsafeMutableBufferPointer { g in
                            sm_route_list(-1, UInt8(SM_RTPROT_SWIFTMESH), d.baseAddress, l.baseAddress, g.baseAddress, Int32(cap), err)
                        }
                    }
                }
            })
            if n > cap { cap = n + 16; continue }
            return (0..<n).compactMap { i in
                guard let cidr = try? IPv4CIDR(parsing: "\(IPv4Address(UInt32(bigEndian: dst[i])))/\(len[i])") else { return nil }
                return (cidr, IPv4Address(UInt32(bigEndian: gw[i])))
            }
        }
    }

    /// Packets marked `mark` (under `mask`) are delivered to this node, whatever their
    /// destination: the L7 proxy's transparent redirect (mesh_abi.h).
    static func routeMarkedLocally(mark: UInt32, mask: UInt32, table: UInt32, priority: UInt32) throws(MeshError) {
        _ = try call { sm_fwmark_local_table(-1, mark, mask, table, priority, $0) }
    }

    /// The interface index the kernel would send to `destination` through; nil if none.
    static func routeInterface(to destination: IPv4Address, in netns: Namespace? = nil) -> Int32? {
        var err = sm_nl_err()
        let rc = sm_route_oif(netns?.fd ?? -1, destination.networkOrder, &err)
        return rc > 0 ? rc : nil
    }

    /// Writes `/proc/sys/<path>` as seen from `netns` (the caller's when nil).
    static func sysctl(_ path: String, _ value: String, in netns: Namespace? = nil) throws(MeshError) {
        _ = try call { sm_sysctl(netns?.fd ?? -1, path, value, $0) }
    }
}
