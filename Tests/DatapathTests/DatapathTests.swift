import BPFObjects
import CBPF
@testable import Datapath
import Foundation
import XCTest

/// The libbpf layer against the real kernel: loading, pinning and re-adopting maps, typed
/// and per-CPU access, and load failures that carry the verifier's words.
final class DatapathTests: BPFTestCase {

    func testMapsArePinnedAndReadoptedWithTheirContentsAcrossLoads() throws {
        var key = mesh_endpoint_key(ifindex: 42)
        var info = mesh_endpoint_info()
        info.endpoint_id = 7
        info.ipv4 = 0x0a00_0001
        do {
            let dp = try MeshDatapath(pinDir: pinDir, nodeID: 1)
            try dp.endpoints.update(key, info)
            XCTAssertEqual(try dp.endpoints.lookup(key, as: mesh_endpoint_info.self)?.endpoint_id, 7)
            XCTAssertTrue(FileManager.default.fileExists(atPath: pinDir + "/mesh_endpoints"))
            XCTAssertTrue(FileManager.default.fileExists(atPath: pinDir + "/mesh_from_endpoint"))
        }
        // A new load (a restarted meshd) finds the pinned map and keeps its entries.
        let again = try MeshDatapath(pinDir: pinDir, nodeID: 1)
        let found = try again.endpoints.lookup(key, as: mesh_endpoint_info.self)
        XCTAssertEqual(found?.endpoint_id, 7)
        XCTAssertEqual(found?.ipv4, 0x0a00_0001)
        XCTAssertEqual(try again.endpoints.keys(as: mesh_endpoint_key.self).map(\.ifindex), [42])
        XCTAssertEqual(try again.endpoints.count(), 1)
        XCTAssertTrue(try again.endpoints.delete(key))
        XCTAssertFalse(try again.endpoints.delete(key))
        key.ifindex = 43
        XCTAssertNil(try again.endpoints.lookup(key, as: mesh_endpoint_info.self))
        // The pin itself is the same map object as the loaded one.
        let byPin = try BPFMap(pinnedAt: pinDir + "/mesh_endpoints")
        XCTAssertEqual(byPin.maxEntries, MeshDatapath.maxEndpoints)
        XCTAssertEqual(byPin.typeName, "hash")
    }

    func testPerCPUValuesAreReadForEveryPossibleCPUAndSummed() throws {
        let dp = try MeshDatapath(pinDir: pinDir, nodeID: 1)
        var k = mesh_traffic_key()
        k.endpoint_id = 9
        k.direction = UInt8(MESH_DIR_EGRESS.rawValue)
        let cpus = Int(libbpf_num_possible_cpus())
        // Userspace writes of a per-CPU map take one value per possible CPU.
        var values: [mesh_traffic_value] = (0..<cpus).map { (cpu: Int) -> mesh_traffic_value in
            let n = UInt64(cpu + 1)
            return mesh_traffic_value(packets: n, bytes: 100 * n)
        }
        let rc = bpf_map_update_elem(dp.traffic.fd, &k, &values, 0)
        XCTAssertEqual(rc, 0)
        let perCPU = try XCTUnwrap(try dp.traffic.lookupPerCPU(k, as: mesh_traffic_value.self))
        XCTAssertEqual(perCPU.count, cpus)
        XCTAssertEqual(perCPU.map(\.packets), (1...cpus).map(UInt64.init))
        let sum = try dp.counters(endpointID: 9, direction: .egress)
        XCTAssertEqual(sum.packets, UInt64(cpus * (cpus + 1) / 2))
        XCTAssertEqual(sum.bytes, UInt64(100 * cpus * (cpus + 1) / 2))
        XCTAssertEqual(try dp.counters(endpointID: 9, direction: .ingress), .init())
        // A per-CPU map read as a plain one is a caller bug, refused rather than misread.
        XCTAssertThrowsError(try dp.traffic.lookup(k, as: mesh_traffic_value.self))
        // So is a key of the wrong size.
        XCTAssertThrowsError(try dp.endpoints.lookup(UInt64(1), as: mesh_endpoint_info.self))
    }

    func testSettingAnUnknownConstantSaysWhich() throws {
        let spec = try BPFObjectSpec(bytes: EmbeddedBPF.endpoint.bytes, name: "endpoint", pinRoot: nil)
        XCTAssertNoThrow(try spec.setConstant("cfg_node_id", UInt32(5)))
        XCTAssertThrowsError(try spec.setConstant("cfg_nope", UInt32(5))) { error in
            XCTAssertTrue("\(error)".contains("cfg_nope"), "\(error)")
        }
        XCTAssertThrowsError(try spec.setConstant("cfg_node_id", UInt8(5))) { error in
            XCTAssertTrue("\(error)".contains("Invalid argument"), "\(error)")
        }
    }

    func testAProgramTheVerifierRefusesFailsWithTheVerifierLogAndPinsNothing() throws {
        // Reads packet data with no bounds check: the verifier must refuse it.
        let source = """
        #include <linux/bpf.h>
        #include <bpf/bpf_helpers.h>
        struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 4); __type(key, __u32); __type(value, __u32);
                 __uint(pinning, LIBBPF_PIN_BY_NAME); } smt_bad_map SEC(".maps");
        SEC("tc") int unchecked(struct __sk_buff *skb) {
            unsigned char *data = (void *)(long)skb->data;
            return data[20];
        }
        char LICENSE[] SEC("license") = "GPL";
        """
        let object = try compileBPF(source)
        let spec = try BPFObjectSpec(bytes: object, name: "bad", pinRoot: pinDir)
        try BPFFS.makeDirectory(pinDir)
        XCTAssertThrowsError(try spec.load()) { error in
            let e = error as? DatapathError
            XCTAssertNotNil(e)
            XCTAssertTrue(e?.operation.contains("load BPF object bad") ?? false)
            // The verifier's own explanation reaches the caller.
            XCTAssertTrue(e?.libbpfLog.contains("invalid access to packet") ?? false, e?.libbpfLog ?? "")
            XCTAssertTrue("\(error)".contains("libbpf said"))
        }
        let left = (try? FileManager.default.contentsOfDirectory(atPath: pinDir)) ?? []
        XCTAssertEqual(left, [], "a failed load pins nothing")
    }

    func testGarbageIsNotAnObject() throws {
        XCTAssertThrowsError(try BPFObjectSpec(bytes: Array("not an ELF file".utf8), name: "junk", pinRoot: nil)) { error in
            XCTAssertTrue("\(error)".contains("open BPF object junk"), "\(error)")
        }
    }

    /// clang -target bpf on a source string, the way BPFEmbed finds clang.
    func compileBPF(_ source: String) throws -> [UInt8] {
        let dir = NSTemporaryDirectory() + "smt\(getpid())bpf"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try source.write(toFile: dir + "/bad.bpf.c", atomically: true, encoding: .utf8)
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let clang = (path.split(separator: ":").map { "\($0)/clang" } + ["/usr/bin/clang", "/opt/swift/usr/bin/clang"])
            .first { FileManager.default.isExecutableFile(atPath: $0) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try XCTUnwrap(clang, "no clang"))
        p.arguments = ["-g", "-O2", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu", "-I/usr/include/aarch64-linux-gnu",
                       "-c", dir + "/bad.bpf.c", "-o", dir + "/bad.o"]
        try p.run()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        return [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/bad.o")))
    }
}
