import Foundation
import Logging
import MeshModel

/// A member's pod CIDR from the cluster's range (`--cluster-pod-cidr`), before anything
/// else starts: the first block no other node's claim overlaps, claimed in one etcd
/// transaction that fails if any claim appeared meanwhile (then the next free block is
/// tried). The block is kept in the state folder, so a restart keeps its addresses; the
/// join then claims it again under the node's lease, as a CIDR given by flag would be.
enum PodCIDRAllocation {
    static let fileName = "cluster-pod-cidr"

    static func obtain(range: IPv4CIDR, size: Int, node: String, stateDir: String, cluster: ClusterSettings,
                       logger: Logger) async throws(MeshError) -> IPv4CIDR {
        let path = stateDir + "/" + fileName
        if let text = try? String(contentsOfFile: path, encoding: .utf8),
           let kept = try? IPv4CIDR(parsing: text.trimmingCharacters(in: .whitespacesAndNewlines)),
           kept.prefixLength == size, range.contains(kept.network) {
            return kept
        }
        let etcd = EtcdClient(endpoints: cluster.etcd)
        defer { Task { await etcd.shutdown() } }
        var delay = 0.5
        while true {
            do throws(MeshError) {
                let block = try await claim(range: range, size: size, node: node, etcd: etcd, ttl: max(60, cluster.leaseTTL * 3))
                do {
                    try FileManager.default.createDirectory(atPath: stateDir, withIntermediateDirectories: true)
                    try (block.description + "\n").write(toFile: path, atomically: true, encoding: .utf8)
                } catch {
                    throw MeshError(.internalError, "cannot keep the allocated pod CIDR in \(path): \(error.localizedDescription)")
                }
                logger.info("pod CIDR allocated from the cluster's range", metadata: ["pod_cidr": "\(block)", "range": "\(range)"])
                return block
            } catch let error where error.code == .unavailable {
                logger.warning("waiting for etcd to allocate a pod CIDR", metadata: ["error": "\(error.message)"])
                try? await Task.sleep(for: .seconds(delay))
                delay = min(delay * 2, 5)
            }
        }
    }

    /// Claims the first free block under a lease of its own, which the join replaces with
    /// the node's (a node that dies before joining frees the block when it lapses).
    static func claim(range: IPv4CIDR, size: Int, node: String, etcd: EtcdClient, ttl: Int) async throws(MeshError) -> IPv4CIDR {
        let count = 1 << (size - range.prefixLength), step = UInt32(1) << (32 - size)
        for _ in 0..<16 {
            let (claims, revision) = try await otherClaims(etcd, node: node)
            var free: IPv4CIDR?
            for i in 0..<min(count, 1 << 16) {
                let block = try IPv4CIDR(parsing: "\(IPv4Address(range.network.value + UInt32(i) * step))/\(size)")
                if !claims.contains(where: { $0.cidr.overlaps(block) }) {
                    free = block
                    break
                }
            }
            guard let free else {
                throw MeshError(.exhausted, "every /\(size) of the cluster's pod range \(range) is taken",
                                hint: "give the cluster a larger --cluster-pod-cidr or a longer --pod-cidr-size")
            }
            if try await claim(free, node: node, lease: try await etcd.grantLease(ttl: ttl), since: revision, etcd) { return free }
        }
        throw MeshError(.unavailable, "allocating a pod CIDR from \(range) kept conflicting with other nodes' claims")
    }

    /// The pod CIDRs other nodes hold, and the revision they were read at.
    static func otherClaims(_ etcd: EtcdClient, node: String) async throws(MeshError) -> (claims: [(cidr: IPv4CIDR, owner: String)], revision: Int64) {
        let (kvs, revision) = try await etcd.range(ClusterKeys.podCIDRs, prefix: true)
        let claims = kvs.compactMap { kv -> (cidr: IPv4CIDR, owner: String)? in
            guard kv.string != node, let cidr = ClusterKeys.podCIDR(key: kv.key) else { return nil }
            return (cidr, kv.string)
        }
        return (claims, revision)
    }

    /// Claims `cidr` for `node` under `lease`, unless any claim appeared or changed after
    /// `revision` (the caller then reads the claims again). Returns whether it did.
    static func claim(_ cidr: IPv4CIDR, node: String, lease: Int64, since revision: Int64, _ etcd: EtcdClient) async throws(MeshError) -> Bool {
        try await etcd.txn([.unchangedSince(prefix: ClusterKeys.podCIDRs, revision: revision)],
                           success: [.put(ClusterKeys.podCIDR(cidr), Array(node.utf8), lease: lease)]).succeeded
    }
}
