@testable import Agent
import MeshModel
import XCTest

/// Joining a cluster: what the flags and the config file accept, and what they refuse
/// (with the setting named), before anything starts.
final class ClusterSettingsTests: XCTestCase {
    func config(_ yaml: String) throws -> NodeConfig {
        var c = NodeConfig()
        try c.apply(yaml: yaml, source: "test.yaml")
        return c
    }

    func refusal(_ yaml: String) -> String {
        do {
            let c = try config(yaml)
            _ = try c.resolveCluster()
            _ = try c.clusterPodRange()
            return "accepted"
        } catch { return (error as? MeshError)?.message ?? "\(error)" }
    }

    func testAClusterMemberFromTheConfigFile() throws {
        let c = try config("""
        cluster: etcd://10.99.0.201:2379,etcd-2.example:2379
        node-ip: 10.99.0.1
        cluster-lease-ttl: 6
        cluster-pod-cidr: 10.202.0.0/16
        pod-cidr-size: 26
        """)
        let s = try XCTUnwrap(try c.resolveCluster())
        XCTAssertEqual(s.etcd, ["10.99.0.201:2379", "etcd-2.example:2379"])
        XCTAssertEqual(s.nodeIP, IPv4Address("10.99.0.1"))
        XCTAssertEqual(s.leaseTTL, 6)
        let range = try XCTUnwrap(try c.clusterPodRange())
        XCTAssertEqual(range.range.description, "10.202.0.0/16")
        XCTAssertEqual(range.size, 26)
        XCTAssertNil(try NodeConfig().resolveCluster(), "no cluster: a node on its own")
    }

    func testBadClusterSettingsAreRefusedByName() {
        XCTAssertTrue(refusal("cluster: http://10.99.0.201:2379\nnode-ip: 10.99.0.1").contains("must be etcd://HOST:PORT"))
        XCTAssertTrue(refusal("cluster: etcd://10.99.0.201\nnode-ip: 10.99.0.1").contains("member \"10.99.0.201\" must be HOST:PORT"))
        XCTAssertTrue(refusal("cluster: etcd://10.99.0.201:2379,\nnode-ip: 10.99.0.1").contains("member \"\" must be HOST:PORT"))
        XCTAssertTrue(refusal("cluster: etcd://10.99.0.201:2379").contains("needs --node-ip"))
        XCTAssertTrue(refusal("cluster: etcd://10.99.0.201:2379\nnode-ip: 10.99.0.300").contains("node-ip \"10.99.0.300\" is not an IPv4 address"))
        XCTAssertTrue(refusal("node-ip: 10.99.0.1").contains("node-ip is for cluster members"))
        XCTAssertTrue(refusal("cluster: etcd://a:1\nnode-ip: 10.99.0.1\ncluster-lease-ttl: 1").contains("cluster-lease-ttl \"1\""))
        XCTAssertTrue(refusal("cluster-pod-cidr: 10.202.0.0/16").contains("cluster-pod-cidr is for cluster members"))
        XCTAssertTrue(refusal("cluster: etcd://a:1\nnode-ip: 10.99.0.1\ncluster-pod-cidr: 10.202.0.0/16\npod-cidr-size: 8").contains("pod-cidr-size \"8\""))
        XCTAssertTrue(refusal("cluster: etcd://a:1\nnode-ip: 10.99.0.1\ncluster-pod-cidr: 10.202.0.1/16").contains("host bits set"))
    }

    func testAPodCIDROutsideTheClusterRangeIsRefused() throws {
        let c = try config("cluster: etcd://a:1\nnode-ip: 10.99.0.1\ncluster-pod-cidr: 10.202.0.0/16\npod-cidr: 10.203.0.0/24")
        XCTAssertThrowsError(try c.resolve(cgroup2Root: "/sys/fs/cgroup")) { error in
            XCTAssertTrue((error as? MeshError)?.message.contains("is not inside cluster-pod-cidr 10.202.0.0/16") ?? false, "\(error)")
        }
    }

    /// Lines as etcd 3.4's JSON gateway sent them (captured from a real server).
    func testWatchAnswersAsEtcdSendsThem() throws {
        let created = #"{"result":{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","revision":"2","raft_term":"2"},"created":true}}"#
        XCTAssertNil(try EtcdClient.watchBatch(Array(created.utf8)))
        let put = #"{"result":{"header":{"revision":"2"},"events":[{"kv":{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}}]}}"#
        let batch = try XCTUnwrap(try EtcdClient.watchBatch(Array(put.utf8)))
        XCTAssertEqual(batch.revision, 2)
        guard case .put(let kv) = batch.events.first else { return XCTFail("\(batch)") }
        XCTAssertEqual(kv.key, "foo")
        XCTAssertEqual(kv.string, "bar")
        let del = #"{"result":{"header":{"revision":"3"},"events":[{"type":"DELETE","kv":{"key":"Zm9v","mod_revision":"3"}}]}}"#
        XCTAssertEqual(try EtcdClient.watchBatch(Array(del.utf8))?.events, [.delete(key: "foo", modRevision: 3)])
        let compacted = #"{"result":{"header":{"revision":"9"},"canceled":true,"compact_revision":"5"}}"#
        XCTAssertThrowsError(try EtcdClient.watchBatch(Array(compacted.utf8))) { XCTAssertTrue("\($0)".contains("compacted")) }
        XCTAssertThrowsError(try EtcdClient.watchBatch(Array("{not json".utf8)))
    }

    func testPrefixEnd() {
        XCTAssertEqual(EtcdClient.prefixEnd("/swiftmesh/v1/"), "/swiftmesh/v10")
        XCTAssertEqual(EtcdClient.prefixEnd("a"), "b")
    }
}
