import CBPF
@testable import Datapath
import Foundation
import XCTest

/// Policy revisions in the kernel: a publish is atomic for every packet the programs see
/// (one revision per program run, local delivery included), a publish that does not fit
/// changes nothing in force, and the next one leaves exactly its own entries.
final class PolicyRevisionTests: BPFTestCase {
    // Two endpoints of a node that exists only in the maps: the programs run on packets
    // through BPF_PROG_TEST_RUN with the loopback device's ifindex (1) as the sender's
    // veth, so nothing is attached anywhere and no packet leaves the test.
    static let senderIfindex: UInt32 = 1
    static let sender: UInt32 = 0x0a09_0001 // 10.9.0.1
    static let receiver: UInt32 = 0x0a09_0002

    /// Revision A (odd revisions) and B (even ones) both allow UDP sender -> receiver:5000,
    /// each by rules of its own; only A allows :5001. Identities differ too, so a lookup
    /// that mixed the two (A's ipcache with B's policy, say) decides with a rule neither
    /// revision gives.
    struct Revision: Sendable {
        var ipcache: [MeshDatapath.IPCacheEntry]
        var policy: [MeshDatapath.PolicyEntry]
        var enforcement: [MeshDatapath.Enforcement]
        /// Rule ids a flow to `port` is allowed by, at the sender's egress and the
        /// receiver's ingress; nil when the revision denies it.
        var rules: [UInt16: (egress: UInt32, ingress: UInt32)]
    }

    static func revision(identityBase: UInt32, ruleBase: UInt32, ports: [UInt16]) -> Revision {
        let sid = identityBase + 1, rid = identityBase + 2
        var policy: [MeshDatapath.PolicyEntry] = []
        var rules: [UInt16: (egress: UInt32, ingress: UInt32)] = [:]
        for (i, port) in ports.enumerated() {
            let egress = ruleBase + 3 + UInt32(2 * i), ingress = egress + 1
            policy.append(.init(endpointID: 1, direction: .egress, identity: rid, proto: UInt8(IPPROTO_UDP), portPrefix: port,
                                portPrefixLength: 16, action: .allow, ruleID: egress, policyID: ruleBase))
            policy.append(.init(endpointID: 2, direction: .ingress, identity: sid, proto: UInt8(IPPROTO_UDP), portPrefix: port,
                                portPrefixLength: 16, action: .allow, ruleID: ingress, policyID: ruleBase))
            rules[port] = (egress, ingress)
        }
        return Revision(
            ipcache: [.init(address: sender, prefixLength: 32, identity: sid, endpointID: 1),
                      .init(address: receiver, prefixLength: 32, identity: rid, endpointID: 2)],
            policy: policy,
            enforcement: [.init(endpointID: 1, ingress: false, egress: true, ingressDefaultRule: 0, egressDefaultRule: ruleBase + 1),
                          .init(endpointID: 2, ingress: true, egress: false, ingressDefaultRule: ruleBase + 2, egressDefaultRule: 0)],
            rules: rules)
    }

    static let a = revision(identityBase: 300, ruleBase: 10, ports: [5000, 5001])
    static let b = revision(identityBase: 400, ruleBase: 20, ports: [5000])

    static func publish(_ dp: MeshDatapath, _ revision: UInt32) throws {
        let r = revision & 1 == 1 ? Self.a : Self.b
        _ = try dp.publish(revision: revision, ipcache: r.ipcache, policy: r.policy, enforcement: r.enforcement)
    }

    /// Ethernet + IPv4 + UDP from the sender to the receiver.
    static func datagram(sourcePort: UInt16, destinationPort: UInt16) -> [UInt8] {
        var p = MeshDatapath.packet(source: sender, destination: receiver, proto: .udp, destinationPort: destinationPort)
        p[34] = UInt8(sourcePort >> 8)
        p[35] = UInt8(sourcePort & 0xff)
        return p
    }

    /// Runs the sender's tc ingress program once, with its side effects (conntrack).
    static func runFromEndpoint(_ dp: MeshDatapath, _ packet: [UInt8]) throws -> Int32 {
        var data = packet
        var ctxIn = __sk_buff()
        ctxIn.ifindex = senderIfindex
        var ctxOut = __sk_buff()
        var retval: UInt32 = 0
        try check("test run", cbpf_test_run_skb(dp.fromEndpoint.fd, &data, UInt32(data.count), &ctxIn, &ctxOut, &retval))
        return Int32(bitPattern: retval)
    }

    static func ctKey(endpoint: UInt32, direction: MeshDatapath.Direction, sourcePort: UInt16, port: UInt16) -> mesh_ct_key {
        var k = mesh_ct_key()
        k.endpoint_id = endpoint
        k.saddr = sender.bigEndian
        k.daddr = receiver.bigEndian
        k.sport = sourcePort
        k.dport = port
        k.proto = UInt8(IPPROTO_UDP)
        k.direction = UInt8(direction.abi.rawValue)
        return k
    }

    func makeNode() throws -> MeshDatapath {
        let dp = try MeshDatapath(pinDir: pinDir, nodeID: 1)
        opened.append(dp)
        var info = mesh_endpoint_info()
        info.endpoint_id = 1
        info.ipv4 = Self.sender.bigEndian
        try dp.endpoints.update(mesh_endpoint_key(ifindex: Self.senderIfindex), info)
        var local = mesh_local_endpoint()
        local.ifindex = 999_999 // not the sender's: delivered locally (the redirect itself is not run)
        local.endpoint_id = 2
        try dp.localEndpoints.update(Self.receiver.bigEndian, local)
        return dp
    }

    func testEveryPacketSeesOneRevisionWholeWhilePublishesAlternate() throws {
        let dp = try makeNode()
        try Self.publish(dp, 1)
        let publishes: UInt32 = 400
        let done = ManagedAtomicFlag()
        let publisher = Thread {
            for r in 2...(publishes + 1) { try! Self.publish(dp, r) }
            done.set()
        }
        publisher.start()

        var probes = 0, allowed = [0, 0], violations: [String] = []
        var sourcePort: UInt16 = 1024
        while !done.isSet || probes < 1000 {
            sourcePort = sourcePort == UInt16.max ? 1024 : sourcePort + 1
            let port: UInt16 = probes % 2 == 0 ? 5000 : 5001
            probes += 1
            // Source ports come round again after 64,511 probes: forget what an earlier
            // probe of the same tuple left, so each probe reads only its own entries.
            let egressKey = Self.ctKey(endpoint: 1, direction: .egress, sourcePort: sourcePort, port: port)
            let ingressKey = Self.ctKey(endpoint: 2, direction: .ingress, sourcePort: sourcePort, port: port)
            try dp.conntrack.delete(egressKey)
            try dp.conntrack.delete(ingressKey)
            let rc = try Self.runFromEndpoint(dp, Self.datagram(sourcePort: sourcePort, destinationPort: port))
            let egress = try dp.conntrack.lookup(egressKey, as: mesh_ct_value.self)
            let ingress = try dp.conntrack.lookup(ingressKey, as: mesh_ct_value.self)
            if rc == TC_ACT_SHOT {
                // Only B denies, and only :5001, at the sender's egress (nothing recorded).
                if port != 5001 || egress != nil || ingress != nil {
                    violations.append("probe \(probes) to :\(port) dropped (ct egress \(egress?.revision as Any), ingress \(ingress?.revision as Any))")
                }
                continue
            }
            guard rc == TC_ACT_REDIRECT, let egress, let ingress else {
                violations.append("probe \(probes) to :\(port): verdict \(rc), ct egress \(egress?.revision as Any), ingress \(ingress?.revision as Any)")
                continue
            }
            // Both hooks of one packet decided under one revision, with that revision's rules.
            let expected = (egress.revision & 1 == 1 ? Self.a : Self.b).rules[port]
            if egress.revision != ingress.revision || expected?.egress != egress.rule_id || expected?.ingress != ingress.rule_id {
                violations.append("probe \(probes) to :\(port): egress revision \(egress.revision) rule \(egress.rule_id), ingress revision \(ingress.revision) rule \(ingress.rule_id)")
            }
            allowed[Int(egress.revision & 1)] += 1
        }
        publisher.cancel()
        XCTAssertEqual(violations, [], "\(violations.count) of \(probes) probes saw a mix of revisions")
        XCTAssertEqual(try dp.policyState().revision, publishes + 1)
        // The probes ran across the flips: both revisions decided some of them.
        XCTAssertGreaterThan(allowed[0], 0, "no probe was decided under B")
        XCTAssertGreaterThan(allowed[1], 0, "no probe was decided under A")
    }

    func testAPublishThatDoesNotFitChangesNothingInForceAndTheNextLeavesOnlyItsOwnEntries() throws {
        let dp = try makeNode()
        let capacity = dp.ipcache.maxEntries
        func addresses(_ n: Int, base: UInt32) -> [MeshDatapath.IPCacheEntry] {
            (0..<UInt32(n)).map { .init(address: base + $0, prefixLength: 32, identity: 5000 + $0) }
        }
        // Revision 1 takes well over half the map (more than a slot's share, which the
        // policy engine would refuse first: here the kernel itself must say no).
        let first = addresses(capacity / 2 + 2000, base: 0x0b00_0000)
        _ = try dp.publish(revision: 1, ipcache: first, policy: [], enforcement: [])
        XCTAssertThrowsError(try dp.publish(revision: 2, ipcache: addresses(capacity / 2 + 2000, base: 0x0c00_0000), policy: [], enforcement: [])) { error in
            let message = "\(error)"
            XCTAssertTrue(message.contains("map mesh_ipcache is full at its capacity of \(capacity) entries"), message)
            XCTAssertTrue(message.contains("revision 1 stays in force"), message)
        }
        // Revision 1 is still the one in force, whole, as the kernel holds it.
        XCTAssertEqual(try dp.policyState().revision, 1)
        XCTAssertEqual(try dp.ipcacheEntries().count, first.count)
        let verdict = try dp.trace(ifindex: Int32(Self.senderIfindex), direction: .egress, source: Self.sender, destination: 0x0b00_0005,
                                   proto: .tcp, destinationPort: 80)
        XCTAssertEqual(verdict.peerIdentity, 5005, "the ipcache in force answers")

        // The next publish into that slot leaves exactly its own entries there.
        let small = addresses(5, base: 0x0d00_0000)
        _ = try dp.publish(revision: 2, ipcache: small, policy: [], enforcement: [])
        XCTAssertEqual(Set(try dp.ipcacheEntries().map(\.address)), Set(small.map(\.address)))
        // Once its grace period has passed, the retired slot catches up with revision 2.
        dp.settle()
        XCTAssertEqual(try slotCount(dp.ipcache, slot: 0), 5)
        XCTAssertEqual(try slotCount(dp.ipcache, slot: 1), 5)
        _ = try dp.publish(revision: 3, ipcache: addresses(3, base: 0x0e00_0000), policy: [], enforcement: [])
        dp.settle()
        XCTAssertEqual(try slotCount(dp.ipcache, slot: 1), 3)
        XCTAssertEqual(try dp.ipcache.count(), 6)
    }

    func testAPublishWritesOnlyTheEntriesThatChangedSinceTheRevisionInForce() throws {
        let dp = try makeNode()
        let base: [MeshDatapath.IPCacheEntry] = (0..<UInt32(2000)).map { .init(address: 0x0b00_0000 + $0, prefixLength: 32, identity: 300 + $0 % 7) }
        _ = try dp.publish(revision: 1, ipcache: base, policy: [], enforcement: [])
        dp.settle()
        // One entry changes identity (a relabel), one goes (a deleted endpoint), one comes.
        var next = base
        next[10].identity = 999
        next.remove(at: 20)
        next.append(.init(address: 0x0c00_0001, prefixLength: 32, identity: 301))
        let two = try dp.publish(revision: 2, ipcache: next, policy: [], enforcement: [])
        XCTAssertEqual(two.written, 2, "the changed entry and the new one")
        XCTAssertEqual(two.deleted, 1)
        dp.settle()
        // And again from revision 2, which the retired slot has caught up with.
        next[10].identity = 301
        let three = try dp.publish(revision: 3, ipcache: next, policy: [], enforcement: [])
        XCTAssertEqual(three.written, 1)
        XCTAssertEqual(three.deleted, 0)
        let verdict = try dp.trace(ifindex: Int32(Self.senderIfindex), direction: .egress, source: Self.sender, destination: 0x0b00_000a,
                                   proto: .tcp, destinationPort: 80)
        XCTAssertEqual(verdict.peerIdentity, 301, "the kernel answers with revision 3's entry")
    }

    /// A revision given as changes from the one in force: only they are written (into a
    /// slot that has caught up, and again when the retired slot catches up), and the
    /// kernel then holds exactly what the whole revision would have left, in both slots.
    /// Into a slot one change behind, the whole slot is diffed and the result is the same.
    func testAPublishOfChangesWritesOnlyThemAndLeavesTheWholeRevision() throws {
        let dp = try makeNode()
        var ipcache: [MeshDatapath.IPCacheEntry] = (0..<UInt32(3000)).map { .init(address: 0x0b00_0000 + $0, prefixLength: 32, identity: 300 + $0 % 7) }
        let rule = MeshDatapath.PolicyEntry(endpointID: 2, direction: .ingress, identity: 301, proto: 6, portPrefix: 80, portPrefixLength: 16,
                                            action: .allow, ruleID: 3, policyID: 9)
        let enforce = MeshDatapath.Enforcement(endpointID: 2, ingress: true, egress: false, ingressDefaultRule: 4, egressDefaultRule: 0)
        _ = try dp.publish(revision: 1, ipcache: ipcache, policy: [rule], enforcement: [enforce])
        dp.settle()

        var changes = MeshDatapath.PolicyChanges()
        changes.ipcache = [.init(address: 0x0b00_000a, prefixLength: 32, identity: 999), .init(address: 0x0c00_0001, prefixLength: 24, identity: 301)]
        changes.ipcacheGone = [ipcache[20]]
        var moved = rule
        moved.identity = 999
        changes.policy = [moved]
        changes.policyGone = [rule]
        ipcache[10].identity = 999
        ipcache.remove(at: 20)
        ipcache.append(changes.ipcache[1])
        let two = try dp.publish(revision: 2, from: 1, changes: changes)
        XCTAssertEqual(two.written, 3, "two ipcache entries and the policy entry")
        XCTAssertEqual(two.deleted, 2)
        func expectWhole(_ step: String, policy: [MeshDatapath.PolicyEntry]) throws {
            XCTAssertEqual(Set(try dp.ipcacheEntries()), Set(ipcache), "\(step): the ipcache in force")
            XCTAssertEqual(try dp.policyEntries(), policy, "\(step): the policy in force")
            dp.settle()
            XCTAssertEqual(try slotCount(dp.ipcache, slot: 0), ipcache.count, "\(step): slot 0 caught up")
            XCTAssertEqual(try slotCount(dp.ipcache, slot: 1), ipcache.count, "\(step): slot 1 caught up")
        }
        try expectWhole("revision 2", policy: [moved])
        let verdict = try dp.trace(ifindex: Int32(Self.senderIfindex), direction: .egress, source: Self.sender, destination: 0x0b00_000a,
                                   proto: .tcp, destinationPort: 80)
        XCTAssertEqual(verdict.peerIdentity, 999, "the kernel answers with revision 2's entry")

        // Changes from a revision that is not the one in force are refused, and change nothing.
        XCTAssertThrowsError(try dp.publish(revision: 3, from: 1, changes: changes)) { error in
            XCTAssertTrue("\(error)".contains("revision 2 is in force"), "\(error)")
        }
        try expectWhole("after a refusal", policy: [moved])

        // Two publishes within one grace period: the second finds its slot one change
        // behind (revision 2's catch-up has not run) and diffs it whole.
        var three = MeshDatapath.PolicyChanges()
        three.ipcacheGone = [ipcache.removeLast()]
        _ = try dp.publish(revision: 3, from: 2, changes: three)
        var four = MeshDatapath.PolicyChanges()
        four.ipcache = [.init(address: 0x0d00_0001, prefixLength: 32, identity: 305)]
        four.policyGone = [moved]
        ipcache.append(four.ipcache[0])
        _ = try dp.publish(revision: 4, from: 3, changes: four)
        try expectWhole("revision 4", policy: [])
    }

    func testARevisionOfTheActiveSlotIsRefused() throws {
        let dp = try makeNode()
        try Self.publish(dp, 1)
        for wrong: UInt32 in [3, 4, 1] { // the active slot, a revision skipped, the one in force
            XCTAssertThrowsError(try Self.publish(dp, wrong)) { error in
                XCTAssertTrue("\(error)".contains("revision 1 is in force, and the next one must be 2"), "\(error)")
            }
        }
        XCTAssertEqual(MeshDatapath.revision(after: MeshDatapath.uncheckedRevision &- 1), 1, "the unchecked number is stepped over")
        XCTAssertEqual(try dp.policyState().revision, 1)
        XCTAssertThrowsError(try dp.publish(revision: MeshDatapath.uncheckedRevision, ipcache: [], policy: [], enforcement: []))
    }

    /// An ICMP error passes as part of a tracked flow only when it goes back to where the
    /// quoted packet came from: quoting a flow is no pass to send anywhere else.
    func testAnICMPErrorPassesOnlyBackToTheQuotedPacketsSource() throws {
        let dp = try makeNode()
        try Self.publish(dp, 1) // A: the sender may send UDP to the receiver's :5000, and nothing else
        let sourcePort: UInt16 = 40123
        XCTAssertEqual(try Self.runFromEndpoint(dp, Self.datagram(sourcePort: sourcePort, destinationPort: 5000)), TC_ACT_REDIRECT)
        /// The sender reports "port unreachable" about the receiver's reply (5000 -> 40123),
        /// addressed to `to`.
        func portUnreachable(to: UInt32) -> [UInt8] {
            func ip(_ src: UInt32, _ dst: UInt32, proto: UInt8, length: Int) -> [UInt8] {
                var h: [UInt8] = [0x45, 0, UInt8(length >> 8), UInt8(length & 0xff), 0, 2, 0, 0, 64, proto, 0, 0]
                for a in [src, dst] { h += [UInt8(a >> 24), UInt8(a >> 16 & 0xff), UInt8(a >> 8 & 0xff), UInt8(a & 0xff)] }
                return h
            }
            let quoted = ip(Self.receiver, Self.sender, proto: UInt8(IPPROTO_UDP), length: 28)
                + [0x13, 0x88, UInt8(sourcePort >> 8), UInt8(sourcePort & 0xff), 0, 8, 0, 0]
            let icmp: [UInt8] = [3, 3, 0, 0, 0, 0, 0, 0] + quoted
            return [0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00]
                + ip(Self.sender, to, proto: UInt8(IPPROTO_ICMP), length: 20 + icmp.count) + icmp
        }
        XCTAssertEqual(try Self.runFromEndpoint(dp, portUnreachable(to: Self.receiver)), TC_ACT_REDIRECT,
                       "back to the quoted packet's source: part of the flow")
        XCTAssertEqual(try Self.runFromEndpoint(dp, portUnreachable(to: 0x0808_0808)), TC_ACT_SHOT,
                       "anywhere else: a new ICMP flow, which the sender's egress policy refuses")
    }

    /// An endpoint sends only from its own address: one from another endpoint's would get
    /// that endpoint's identity at every ingress policy it meets.
    func testAPacketFromAnAddressNotTheEndpointsOwnIsDroppedAsSpoofed() throws {
        let dp = try makeNode()
        try Self.publish(dp, 1)
        var spoofed = Self.datagram(sourcePort: 40200, destinationPort: 5000)
        spoofed[29] = 0x63 // source 10.9.0.99: not the sender's 10.9.0.1
        XCTAssertEqual(try Self.runFromEndpoint(dp, spoofed), TC_ACT_SHOT)
        XCTAssertEqual(try Self.runFromEndpoint(dp, Self.datagram(sourcePort: 40200, destinationPort: 5000)), TC_ACT_REDIRECT)
        let drops = try dp.dropCounters().first { $0.reason == .spoofedSource && $0.direction == .egress }
        XCTAssertEqual(drops?.counters.packets, 1)
    }

    /// An earlier meshd kept the revision in mesh_pol_state: an upgraded start carries it
    /// over before anything is attached, so the revision (and slot) in force stays.
    func testAnUpgradeCarriesTheRevisionOverFromTheEarlierStateMap() throws {
        try BPFFS.makeDirectory(pinDir)
        let fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, MESH_MAP_POLICY_STATE_V1, 4, UInt32(MemoryLayout<mesh_policy_state>.size), 1, nil)
        XCTAssertGreaterThanOrEqual(fd, 0)
        var key: UInt32 = 0
        var old = mesh_policy_state()
        old.reserved = 1
        old.revision = 7
        XCTAssertEqual(bpf_map_update_elem(fd, &key, &old, 0), 0)
        let path = "\(pinDir)/\(MESH_MAP_POLICY_STATE_V1)"
        XCTAssertEqual(bpf_obj_pin(fd, path), 0)
        close(fd)
        let dp = try MeshDatapath(pinDir: pinDir, nodeID: 1)
        XCTAssertEqual(try dp.policyState(), .init(activeSlot: 1, revision: 7))
        XCTAssertFalse(FileManager.default.fileExists(atPath: path), "the earlier map's pin is gone")
        // And the next publish follows it.
        _ = try dp.publish(revision: 8, ipcache: [], policy: [], enforcement: [])
        XCTAssertEqual(try MeshDatapath(pinDir: pinDir, nodeID: 1).policyState().revision, 8, "kept in the pinned map")
    }

    /// Swift names every value the header defines: a value added to mesh_abi.h without a
    /// Swift case fails here (the numbers themselves come from the header).
    func testSwiftNamesEveryDropReasonAndRedirectCounterOfTheHeader() {
        for raw in MeshDatapath.DropReason.headerValues {
            XCTAssertNotNil(MeshDatapath.DropReason(abi: UInt8(raw)), "drop reason \(raw) of mesh_abi.h has no Swift case")
        }
        XCTAssertEqual(MeshDatapath.DropReason.allCases.count, MeshDatapath.DropReason.headerValues.count)
        for raw in SocketRedirect.Counter.headerValues {
            XCTAssertNotNil(SocketRedirect.Counter(abi: raw), "redirect counter \(raw) of mesh_abi.h has no Swift case")
        }
        XCTAssertEqual(SocketRedirect.Counter.allCases.count, SocketRedirect.Counter.headerValues.count)
        for c in SocketRedirect.Counter.allCases where "\(c)".hasPrefix("fallback") {
            XCTAssertFalse(SocketRedirect.fallbackName(c).isEmpty, "\(c) has no reason label")
        }
    }

    func slotCount(_ map: BPFMap, slot: UInt8) throws -> Int {
        try map.entriesRaw().filter { k, _ in k.withUnsafeBytes { $0.loadUnaligned(as: mesh_ipcache_key.self) }.slot == slot }.count
    }
}

/// A flag one thread sets and another reads.
final class ManagedAtomicFlag: @unchecked Sendable { // every access holds the lock
    private let lock = NSLock()
    private var value = false
    func set() { lock.lock(); value = true; lock.unlock() }
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
}
