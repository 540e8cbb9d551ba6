import CBPF
@testable import Datapath
import Foundation
import XCTest

/// The load balancer's maps in the kernel: a sync writes only what changes, backends that
/// stay keep their slots, and a new meshd reads back exactly what the last one wrote.
final class ServiceLBTests: BPFTestCase {
    static let vip: UInt32 = 0x0a60_0001 // 10.96.0.1
    static func frontend(_ id: UInt32, port: UInt16 = 80, affinity: UInt32? = nil) -> ServiceLB.Frontend {
        .init(id: id, vip: vip, port: port, proto: UInt8(IPPROTO_TCP), affinityTimeout: affinity)
    }
    static func backend(_ id: UInt32) -> ServiceLB.Backend { .init(id: id, address: 0x0a09_0000 + id, port: 8080) }

    func open() throws -> ServiceLB {
        // The cgroup is only needed to attach, which these tests never do.
        try ServiceLB(pinDir: pinDir, cgroup: "/nonexistent", nodeID: 1)
    }

    func testSlotsStayPutAndOnlyChangesAreWritten() throws {
        let lb = try open()
        let f = Self.frontend(257)
        var st = try lb.sync([f: [1, 2, 3, 4].map(Self.backend)])
        XCTAssertEqual(st.written, 4 + 4 + 1, "4 backends, 4 slots, the frontend")
        XCTAssertEqual(try lb.kernelEntries().first?.backends.map(\.id), [1, 2, 3, 4])

        // 2 leaves and 5 comes: 5 takes 2's slot, nobody else moves.
        st = try lb.sync([f: [1, 3, 4, 5].map(Self.backend)])
        XCTAssertEqual(try lb.kernelEntries().first?.backends.map(\.id), [1, 5, 3, 4])
        XCTAssertEqual(st.written, 2, "backend 5 and its slot")
        XCTAssertEqual(st.deleted, 1, "backend 2")

        // 1 and 3 leave: the last slot moves into the first hole, the count shrinks.
        st = try lb.sync([f: [4, 5].map(Self.backend)])
        XCTAssertEqual(try lb.kernelEntries().first?.backends.map(\.id), [4, 5])
        XCTAssertEqual(st.written, 2, "slot 1 and the frontend's count")
        XCTAssertEqual(st.deleted, 4, "slots 3 and 4, backends 1 and 3")

        // Nothing changes: nothing is written.
        st = try lb.sync([f: [5, 4].map(Self.backend)])
        XCTAssertEqual(st.written + st.deleted, 0)

        // No backend: the frontend stays, with count 0 (connect() is refused).
        _ = try lb.sync([f: []])
        let empty = try XCTUnwrap(try lb.kernelEntries().first)
        XCTAssertEqual(empty.backends.count, 0)
        XCTAssertEqual(lb.mapStats().first { $0.name == MESH_MAP_LB_SLOTS }?.entries, 0)
        XCTAssertEqual(lb.mapStats().first { $0.name == MESH_MAP_LB_BACKENDS }?.entries, 0)
    }

    func testANewLoadReadsBackWhatTheKernelHolds() throws {
        let first = try open()
        let web = Self.frontend(257, affinity: 600), dns = Self.frontend(258, port: 53)
        _ = try first.sync([web: [3, 1, 2].map(Self.backend), dns: [2].map(Self.backend)])
        let before = try first.kernelEntries()

        let second = try open()
        let after = try second.kernelEntries()
        XCTAssertEqual(after.map(\.frontend), before.map(\.frontend))
        XCTAssertEqual(after.map { $0.backends.map(\.id) }, before.map { $0.backends.map(\.id) })
        XCTAssertEqual(after.first?.frontend.affinityTimeout, 600)
        // The same desired state costs the new meshd no write at all.
        let st = try second.sync([web: [1, 2, 3].map(Self.backend), dns: [2].map(Self.backend)])
        XCTAssertEqual(st.written + st.deleted, 0)

        // A frontend that goes takes its slots and backends with it; one whose VIP changes
        // is moved, not duplicated.
        var moved = web
        moved.vip = Self.vip + 1
        _ = try second.sync([moved: [1].map(Self.backend)])
        let now = try second.kernelEntries()
        XCTAssertEqual(now.map(\.frontend), [moved])
        XCTAssertEqual(second.mapStats().first { $0.name == MESH_MAP_LB_SERVICES }?.entries, 1)
        XCTAssertEqual(second.mapStats().first { $0.name == MESH_MAP_LB_SLOTS }?.entries, 1)
    }

    func testARoutedFrontendIsWrittenReadBackAndClearedInPlace() throws {
        let lb = try open()
        var f = Self.frontend(257)
        f.routed = true
        _ = try lb.sync([f: [1, 2].map(Self.backend)])
        XCTAssertEqual(try lb.kernelEntries().first?.frontend.routed, true, "MESH_LB_ROUTED in the kernel's flags")
        XCTAssertEqual(try open().kernelEntries().first?.frontend, f, "a new meshd reads the flag back")
        // The route goes: only the frontend's value is rewritten, its backends stay.
        f.routed = false
        let st = try lb.sync([f: [1, 2].map(Self.backend)])
        XCTAssertEqual(st.written, 1)
        XCTAssertEqual(st.deleted, 0)
        XCTAssertEqual(try lb.kernelEntries().first?.frontend.routed, false)
    }

    func testSlotOrderKeepsSurvivorsInPlace() {
        XCTAssertEqual(ServiceLB.slotOrder(old: [], new: [3, 1]), [1, 3])
        XCTAssertEqual(ServiceLB.slotOrder(old: [1, 2, 3], new: [1, 2, 3, 4]), [1, 2, 3, 4])
        XCTAssertEqual(ServiceLB.slotOrder(old: [1, 2, 3, 4, 5], new: [2, 5]), [5, 2])
        XCTAssertEqual(ServiceLB.slotOrder(old: [1, 2, 3, 4, 5], new: [1, 2, 3]), [1, 2, 3])
        XCTAssertEqual(ServiceLB.slotOrder(old: [1, 2, 3], new: [9]), [9])
        XCTAssertEqual(ServiceLB.slotOrder(old: [1, 2, 3], new: []), [])
    }
}
