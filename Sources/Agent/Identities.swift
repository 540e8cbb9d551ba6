import Foundation
import GRDB
import MeshModel

public typealias IdentityKey = PolicyCompiler.IdentityKey

/// Hands out identity numbers. A label set's number is allocated once and kept while
/// anything uses it, whatever else comes and goes; a number nothing uses any more is
/// released after a grace period (so a label set that comes straight back, as in a
/// relabel there and back or a re-created endpoint, gets its old number). One small
/// interface, so that a cluster can allocate global identities from etcd instead of this
/// node's database.
public protocol IdentityAllocator: Sendable {
    /// The numbers of `keys`, allocating for keys that have none. Every other key this
    /// allocator holds is unused from now on, and released once unused for the grace period.
    func sync(inUse keys: Set<IdentityKey>) throws(MeshError) -> [IdentityKey: UInt32]
    /// What is allocated now, used or not, without changing anything.
    func allocated() throws(MeshError) -> [AllocatedIdentity]
}

public struct AllocatedIdentity: Sendable, Equatable, Codable {
    public var id: UInt32
    public var key: IdentityKey
    public var allocatedAt: Date
    /// nil while in use.
    public var unusedSince: Date?
}

/// The single-node allocator: the `identity` table of the state database, written in one
/// transaction per sync, so a restart finds every number where it was.
///
/// Numbers are handed out in order (a per-scope counter kept in the database), not
/// hashed: a number says nothing about the labels, never depends on which other label sets
/// exist, and is not handed out again until the scope's range wraps.
public struct StoreIdentityAllocator: IdentityAllocator {
    let store: Store
    let grace: TimeInterval
    let now: @Sendable () -> Date

    /// Five minutes: long enough for a relabel there and back, or a delete and re-create,
    /// to keep the number; short enough that churn does not fill the range.
    public static let defaultGrace: TimeInterval = 300

    public init(store: Store, grace: TimeInterval = defaultGrace, now: @escaping @Sendable () -> Date = Date.init) {
        self.store = store
        self.grace = grace
        self.now = now
    }

    struct Row: Codable, FetchableRecord, PersistableRecord {
        static let databaseTableName = "identity"
        var id: Int64
        var scope: String
        var key: String
        var allocatedAt: Date
        var unusedSince: Date?
    }

    public func sync(inUse keys: Set<IdentityKey>) throws(MeshError) -> [IdentityKey: UInt32] {
        let now = self.now(), grace = self.grace
        let result: Result<[IdentityKey: UInt32], MeshError> = try store.write("allocate identities") { db in
            var out: [IdentityKey: UInt32] = [:]
            var highest: [IdentityKey.Scope: Int64] = [:]
            var taken: [IdentityKey.Scope: Set<Int64>] = [:]
            for var row in try Row.fetchAll(db) {
                guard let scope = IdentityKey.Scope(rawValue: row.scope) else { continue }
                let key = IdentityKey(scope: scope, name: row.key)
                if keys.contains(key) {
                    if row.unusedSince != nil { row.unusedSince = nil; try row.update(db) }
                } else if let since = row.unusedSince {
                    if now.timeIntervalSince(since) >= grace { try row.delete(db); continue }
                } else {
                    row.unusedSince = now
                    try row.update(db)
                }
                out[key] = UInt32(row.id)
                highest[scope] = max(highest[scope] ?? 0, row.id)
                taken[scope, default: []].insert(row.id)
            }
            func counter(_ scope: IdentityKey.Scope) -> String { "identity.next.\(scope.rawValue)" }
            var next: [IdentityKey.Scope: Int64] = [:]
            for scope in IdentityKey.Scope.allCases {
                next[scope] = try Int64.fetchOne(db, sql: "SELECT CAST(value AS INTEGER) FROM setting WHERE key = ?", arguments: [counter(scope)])
            }
            for key in keys.sorted() where out[key] == nil {
                let range = key.scope.range
                var id = max(Int64(range.lowerBound), (highest[key.scope] ?? 0) + 1, next[key.scope] ?? 0)
                if id >= Int64(range.upperBound) {
                    // The top is reached: take the lowest free number of the scope.
                    guard let free = (Int64(range.lowerBound)..<Int64(range.upperBound)).first(where: { !(taken[key.scope]?.contains($0) ?? false) }) else {
                        return .failure(MeshError(.exhausted, "every \(key.scope.rawValue) identity (\(range.count)) is in use; \(key.name) gets none",
                                                  hint: "delete endpoints or policies with CIDRs that are no longer needed"))
                    }
                    id = free
                }
                try Row(id: id, scope: key.scope.rawValue, key: key.name, allocatedAt: now, unusedSince: nil).insert(db)
                highest[key.scope] = max(highest[key.scope] ?? 0, id)
                taken[key.scope, default: []].insert(id)
                next[key.scope] = id + 1
                out[key] = UInt32(id)
                try db.execute(sql: "INSERT OR REPLACE INTO setting (key, value) VALUES (?, ?)", arguments: [counter(key.scope), String(id + 1)])
            }
            return .success(out.filter { keys.contains($0.key) })
        }
        return try result.get()
    }

    public func allocated() throws(MeshError) -> [AllocatedIdentity] {
        try store.read("list identities") { db in
            try Row.order(Column("id")).fetchAll(db).compactMap { row in
                IdentityKey.Scope(rawValue: row.scope).map {
                    AllocatedIdentity(id: UInt32(row.id), key: IdentityKey(scope: $0, name: row.key),
                                      allocatedAt: row.allocatedAt, unusedSince: row.unusedSince)
                }
            }
        }
    }
}
