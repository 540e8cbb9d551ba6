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
///
/// Two steps, so that a revision that fails to publish never costs the one in force its
/// numbers: `allocate` before compiling (adds, never takes away), `retainOnly` once the
/// revision is in force (marks the rest unused, releases what the grace period allows).
public protocol IdentityAllocator: Sendable {
    /// The numbers of `keys`, allocating for keys that have none; keys marked unused are
    /// in use again. Nothing else changes.
    func allocate(_ keys: Set<IdentityKey>) throws(MeshError) -> [IdentityKey: UInt32]
    /// Every key but `keys` is unused from now on (if it was not already), and released
    /// once it has been unused for the grace period.
    func retainOnly(_ keys: Set<IdentityKey>) throws(MeshError)
    /// `keys` are unused from now on (those that were in use): what `retainOnly` does to
    /// keys a revision stopped using, without visiting every other key. Releases wait for
    /// the next `retainOnly`.
    func markUnused(_ keys: Set<IdentityKey>) throws(MeshError)
    /// What is allocated now, used or not, without changing anything.
    func allocated() throws(MeshError) -> [AllocatedIdentity]
}

extension IdentityAllocator {
    /// Both steps at once: the numbers of `keys`, and every other key unused.
    public func sync(inUse keys: Set<IdentityKey>) throws(MeshError) -> [IdentityKey: UInt32] {
        let numbers = try allocate(keys)
        try retainOnly(keys)
        return numbers
    }
}

public struct AllocatedIdentity: Sendable, Equatable, Codable {
    public var id: UInt32
    public var key: IdentityKey
    public var allocatedAt: Date
    /// nil while in use.
    public var unusedSince: Date?
}

/// The single-node allocator: the `identity` table of the state database, so a restart
/// finds every number where it was. The table is read once and mirrored in memory; a sync
/// writes only what changed (new numbers, keys that became unused or came back, releases),
/// in one transaction, so a publish with ten thousand CIDR identities costs a hash-set
/// comparison, not ten thousand rows read.
///
/// Numbers are handed out in order (a per-scope counter kept in the database), not
/// hashed: a number says nothing about the labels, never depends on which other label sets
/// exist, and is not handed out again until the scope's range wraps.
public final class StoreIdentityAllocator: IdentityAllocator, @unchecked Sendable { // state behind `lock`
    let store: Store
    let grace: TimeInterval
    let now: @Sendable () -> Date
    private let lock = NSLock()
    /// The table as the database holds it; nil until first used, or after a failed write.
    private var rows: [IdentityKey: Row]?
    /// The next number of each scope (persisted as settings `identity.next.<scope>`).
    private var next: [IdentityKey.Scope: Int64] = [:]
    /// Marks and releases of `retainOnly` not yet written (see there).
    private var pendingUpdates: [Int64: Row] = [:]
    private var pendingReleases: Set<Int64> = []

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

    private static func counter(_ scope: IdentityKey.Scope) -> String { "identity.next.\(scope.rawValue)" }

    /// Reads the table and the counters (under the lock).
    private func load() throws(MeshError) -> [IdentityKey: Row] {
        if let rows { return rows }
        pendingUpdates = [:]
        pendingReleases = []
        let (all, counters) = try store.read("read identities") { db in
            (try Row.fetchAll(db),
             try IdentityKey.Scope.allCases.map { scope in
                 (scope, try Int64.fetchOne(db, sql: "SELECT CAST(value AS INTEGER) FROM setting WHERE key = ?", arguments: [Self.counter(scope)]))
             })
        }
        var loaded: [IdentityKey: Row] = [:]
        for row in all {
            guard let scope = IdentityKey.Scope(rawValue: row.scope) else { continue }
            loaded[IdentityKey(scope: scope, name: row.key)] = row
        }
        next = [:]
        for (scope, value) in counters {
            let highest = loaded.values.filter { $0.scope == scope.rawValue }.map(\.id).max() ?? 0
            next[scope] = max(Int64(scope.range.lowerBound), highest + 1, value ?? 0)
        }
        rows = loaded
        return loaded
    }

    public func allocate(_ keys: Set<IdentityKey>) throws(MeshError) -> [IdentityKey: UInt32] {
        let now = self.now()
        lock.lock()
        defer { lock.unlock() }
        var table = try load()
        // The mirror's only reference from here on, so that a change is made in place: a
        // copy of ten thousand rows costs more than the rest. save() puts it back.
        rows = nil
        var changed: [Row] = [], inserted: [Row] = []
        for key in keys {
            if var row = table[key], row.unusedSince != nil {
                row.unusedSince = nil
                table[key] = row
                changed.append(row)
            }
        }
        var nextNumbers = next
        let missing = keys.filter { table[$0] == nil }.sorted()
        // Numbers held per scope, to step over them once the counter has wrapped.
        var taken: [IdentityKey.Scope: Set<Int64>] = [:]
        if !missing.isEmpty {
            for row in table.values {
                if let scope = IdentityKey.Scope(rawValue: row.scope) { taken[scope, default: []].insert(row.id) }
            }
        }
        for key in missing {
            let low = Int64(key.scope.range.lowerBound), high = Int64(key.scope.range.upperBound)
            var id = min(max(nextNumbers[key.scope] ?? low, low), high)
            var wrapped = false
            while id >= high || taken[key.scope, default: []].contains(id) {
                id += 1
                if id >= high {
                    guard !wrapped else {
                        // As after a failed write: the next call reads the database again.
                        pendingUpdates = [:]
                        pendingReleases = []
                        throw MeshError(.exhausted, "every \(key.scope.rawValue) identity (\(key.scope.range.count)) is in use; \(key.name) gets none",
                                        hint: "delete endpoints or policies with CIDRs that are no longer needed")
                    }
                    // The top is reached: go on from the bottom of the scope.
                    wrapped = true
                    id = low
                    if !taken[key.scope, default: []].contains(id) { break }
                }
            }
            let row = Row(id: id, scope: key.scope.rawValue, key: key.name, allocatedAt: now, unusedSince: nil)
            table[key] = row
            inserted.append(row)
            taken[key.scope, default: []].insert(id)
            nextNumbers[key.scope] = id + 1
        }
        try save(table: table, next: nextNumbers, changed: changed, released: [], inserted: inserted)
        var out: [IdentityKey: UInt32] = [:]
        for key in keys { out[key] = UInt32(table[key]!.id) }
        return out
    }

    /// Memory only: the marks and releases reach the database with the next transaction
    /// that writes anyway (a new number), so a publish that allocates nothing costs no
    /// write. Losing them in a crash is harmless: the next publish after the restart marks
    /// the same keys unused again, and their grace period starts over.
    public func retainOnly(_ keys: Set<IdentityKey>) throws(MeshError) {
        let now = self.now(), grace = self.grace
        lock.lock()
        defer { lock.unlock() }
        var table = try load()
        rows = nil // changed in place (see allocate), once the walk is over; put back below
        var released: [IdentityKey] = [], marked: [(IdentityKey, Row)] = []
        for (key, var row) in table where !keys.contains(key) {
            if let since = row.unusedSince {
                if now.timeIntervalSince(since) >= grace {
                    released.append(key)
                    pendingUpdates[row.id] = nil
                    pendingReleases.insert(row.id)
                }
            } else {
                row.unusedSince = now
                marked.append((key, row))
                pendingUpdates[row.id] = row
            }
        }
        for key in released { table[key] = nil }
        for (key, row) in marked { table[key] = row }
        rows = table
    }

    public func markUnused(_ keys: Set<IdentityKey>) throws(MeshError) {
        let now = self.now()
        lock.lock()
        defer { lock.unlock() }
        _ = try load()
        for key in keys {
            // In place: a copy of the whole table would cost more than the rest.
            guard var row = rows?[key], row.unusedSince == nil else { continue }
            row.unusedSince = now
            rows?[key] = row
            pendingUpdates[row.id] = row
        }
    }

    /// Writes the changes, and any marks and releases `retainOnly` left pending, in one
    /// transaction (deletes first: a key released and back again has a new row), then
    /// takes `table` as the mirror (under the lock). A failed write drops the mirror and
    /// the pending changes: the next call reads the database again.
    private func save(table: [IdentityKey: Row], next nextNumbers: [IdentityKey.Scope: Int64],
                      changed: [Row], released: [Int64], inserted: [Row]) throws(MeshError) {
        if !(changed.isEmpty && released.isEmpty && inserted.isEmpty) {
            for row in changed { pendingUpdates[row.id] = row }
            let releases = pendingReleases.union(released), updates = pendingUpdates
            do throws(MeshError) {
                try store.write("allocate identities") { db in
                    for id in releases { _ = try Row.deleteOne(db, key: id) }
                    for row in updates.values where !releases.contains(row.id) { try row.update(db) }
                    for row in inserted { try row.insert(db) }
                    for (scope, value) in nextNumbers where value != next[scope] {
                        try db.execute(sql: "INSERT OR REPLACE INTO setting (key, value) VALUES (?, ?)", arguments: [Self.counter(scope), String(value)])
                    }
                }
            } catch {
                rows = nil
                pendingUpdates = [:]
                pendingReleases = []
                throw error
            }
            pendingUpdates = [:]
            pendingReleases = []
        }
        rows = table
        next = nextNumbers
    }

    public func allocated() throws(MeshError) -> [AllocatedIdentity] {
        lock.lock()
        defer { lock.unlock() }
        return try load().map { key, row in
            AllocatedIdentity(id: UInt32(row.id), key: key, allocatedAt: row.allocatedAt, unusedSince: row.unusedSince)
        }.sorted { $0.id < $1.id }
    }
}
