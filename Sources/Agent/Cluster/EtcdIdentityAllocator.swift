import Foundation
import MeshModel
import NIOConcurrencyHelpers

/// Identities for a cluster: one number per label set on every node, allocated in etcd with
/// transactions, in the manner of Cilium's kvstore allocator.
///
/// - `identities/labels/L` → N and `identities/id/N` → L are created together, in one
///   transaction that requires both to be absent: two nodes racing for the same label set
///   get the same number (the loser reads the winner's), and racing for the same number
///   with different label sets, different numbers (the loser tries the next one).
/// - `identities/users/N/NODE`, under the node's lease, says the node uses N. A node adds
///   it in a transaction that requires `id/N` to still hold L.
/// - A number is released (both keys deleted) by the node that drops the last user key,
///   in a transaction that requires no user key to have appeared since it looked; a node
///   that died loses its user keys with its lease.
///
/// CIDR identities stay node-local, as in Cilium: they go to the node's own allocator.
/// Calls block on etcd; they run on the control thread (the policy engine's), never on
/// Swift's cooperative pool.
public final class EtcdIdentityAllocator: IdentityAllocator, @unchecked Sendable { // state behind `lock`
    let etcd: EtcdClient
    let node: String
    let local: StoreIdentityAllocator
    let grace: TimeInterval
    /// The node's current lease (0 while it has none).
    let lease: @Sendable () -> Int64
    private let lock = NSLock()

    struct Held {
        var id: UInt32
        var since: Date
        var unusedSince: Date?
    }

    /// Global label sets this node holds a user key for.
    private var held: [IdentityKey: Held] = [:]

    public init(etcd: EtcdClient, node: String, local: StoreIdentityAllocator, grace: TimeInterval,
                lease: @escaping @Sendable () -> Int64) {
        self.etcd = etcd
        self.node = node
        self.local = local
        self.grace = grace
        self.lease = lease
    }

    public func allocate(_ keys: Set<IdentityKey>) throws(MeshError) -> [IdentityKey: UInt32] {
        var out = try local.allocate(keys.filter { $0.scope == .local })
        lock.lock()
        defer { lock.unlock() }
        for key in keys where key.scope == .global {
            if var h = held[key] {
                h.unusedSince = nil
                held[key] = h
                out[key] = h.id
                continue
            }
            let id = try blockingEtcd { [self] () async throws(MeshError) -> UInt32 in try await self.obtain(key.name) }
            held[key] = Held(id: id, since: Date())
            out[key] = id
        }
        return out
    }

    public func retainOnly(_ keys: Set<IdentityKey>) throws(MeshError) {
        try local.retainOnly(keys.filter { $0.scope == .local })
        let now = Date()
        lock.lock()
        defer { lock.unlock() }
        var release: [(IdentityKey, UInt32)] = []
        for (key, var h) in held where !keys.contains(key) {
            if let since = h.unusedSince {
                if now.timeIntervalSince(since) >= grace { release.append((key, h.id)) }
            } else {
                h.unusedSince = now
                held[key] = h
            }
        }
        for (key, id) in release {
            try blockingEtcd { [self] () async throws(MeshError) in try await self.release(key.name, id) }
            held[key] = nil
        }
    }

    public func markUnused(_ keys: Set<IdentityKey>) throws(MeshError) {
        try local.markUnused(keys.filter { $0.scope == .local })
        let now = Date()
        lock.withLock {
            for key in keys where key.scope == .global {
                if var h = held[key], h.unusedSince == nil {
                    h.unusedSince = now
                    held[key] = h
                }
            }
        }
    }

    public func allocated() throws(MeshError) -> [AllocatedIdentity] {
        let mine = lock.withLock {
            held.map { AllocatedIdentity(id: $0.value.id, key: $0.key, allocatedAt: $0.value.since, unusedSince: $0.value.unusedSince) }
        }
        return (try local.allocated() + mine).sorted { $0.id < $1.id }
    }

    /// After a new lease (the old one lapsed while etcd was away, and other nodes may
    /// have released numbers only this node used): writes every user key again, keeping
    /// each number where etcd still agrees. Returns whether any label set's number changed
    /// (the caller publishes again).
    func reclaim() async throws(MeshError) -> Bool {
        let snapshot = lock.withLock { held }
        var moved: [IdentityKey: UInt32] = [:]
        for (key, h) in snapshot {
            let id = try await obtain(key.name, preferring: h.id)
            if id != h.id { moved[key] = id }
        }
        lock.withLock { for (key, id) in moved { held[key]?.id = id } }
        return !moved.isEmpty
    }

    // MARK: etcd

    /// The cluster's number for a label set, allocating one if it has none, with this
    /// node's user key written.
    private func obtain(_ labels: String, preferring preferred: UInt32? = nil) async throws(MeshError) -> UInt32 {
        let range = IdentityKey.Scope.global.range
        let labelsKey = ClusterKeys.identityLabels(labels)
        let value = Array(labels.utf8)
        var candidate: UInt32?
        for _ in 0..<64 {
            let lease = self.lease()
            guard lease != 0 else { throw MeshError(.unavailable, "this node has not joined the cluster yet (no etcd lease)") }
            let (found, _) = try await etcd.range(labelsKey)
            if let kv = found.first, let id = UInt32(kv.string), range.contains(id) {
                let r = try await etcd.txn([.value(ClusterKeys.identityID(id), value)],
                                           success: [.put(ClusterKeys.identityUser(id, node: node), [], lease: lease)])
                if r.succeeded { return id }
                continue // released in between: allocate again
            }
            // A fresh number: the preferred one (our old number), else one past the highest.
            let id: UInt32
            if let c = candidate {
                id = c
            } else if let preferred {
                id = preferred
            } else {
                let (ids, _) = try await etcd.range(ClusterKeys.identityIDs, prefix: true)
                let highest = ids.compactMap { UInt32($0.key.dropFirst(ClusterKeys.identityIDs.count)) }.max()
                id = highest.map { $0 + 1 } ?? range.lowerBound
            }
            var next = id + 1
            if !range.contains(next) { next = range.lowerBound }
            guard range.contains(id) else { candidate = range.lowerBound; continue }
            let r = try await etcd.txn([.absent(labelsKey), .absent(ClusterKeys.identityID(id))],
                                       success: [.put(ClusterKeys.identityID(id), value, lease: 0),
                                                 .put(labelsKey, Array(String(id).utf8), lease: 0),
                                                 .put(ClusterKeys.identityUser(id, node: node), [], lease: lease)])
            if r.succeeded { return id }
            // Another node took the label set (next round reads its number) or the number.
            candidate = next
        }
        throw MeshError(.unavailable, "no identity for \(labels): etcd transactions kept conflicting")
    }

    /// Drops this node's use of `id`; deletes the number when no node uses it any more.
    private func release(_ labels: String, _ id: UInt32) async throws(MeshError) {
        try await etcd.delete(ClusterKeys.identityUser(id, node: node))
        try await Self.collect(etcd, labels: labels, id: id)
    }

    /// Deletes identity `id` (of `labels`) if no node uses it, unless a user key appeared
    /// after the check. Returns whether it was deleted.
    @discardableResult
    static func collect(_ etcd: EtcdClient, labels: String, id: UInt32) async throws(MeshError) -> Bool {
        let (users, revision) = try await etcd.range(ClusterKeys.identityUsers(id), prefix: true)
        guard users.isEmpty else { return false }
        let r = try await etcd.txn([.unchangedSince(prefix: ClusterKeys.identityUsers(id), revision: revision),
                                    .value(ClusterKeys.identityID(id), Array(labels.utf8))],
                                   success: [.delete(ClusterKeys.identityID(id)), .delete(ClusterKeys.identityLabels(labels))])
        return r.succeeded
    }
}

/// Runs async etcd work from a thread that may block (the control thread, a NIO thread
/// pool), never from Swift's cooperative pool, whose threads it would tie up.
func blockingEtcd<T: Sendable>(_ body: @escaping @Sendable () async throws(MeshError) -> T) throws(MeshError) -> T {
    let done = DispatchSemaphore(value: 0)
    let box = NIOLockedValueBox<Result<T, MeshError>?>(nil)
    Task {
        do throws(MeshError) {
            let value = try await body()
            box.withLockedValue { $0 = .success(value) }
        } catch {
            box.withLockedValue { $0 = .failure(error) }
        }
        done.signal()
    }
    done.wait()
    return try box.withLockedValue { $0! }.get()
}
