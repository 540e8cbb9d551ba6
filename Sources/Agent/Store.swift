import Foundation
import GRDB
import MeshModel

/// The node's desired state in an embedded SQLite database (`<state-dir>/state.db`).
/// The kernel holds what is enforced; this holds what should be, and survives restarts.
public final class Store: Sendable {
    /// A pool in WAL mode: readers (status, metrics, lists) never wait for a writer. (The
    /// endpoint list is the exception: it is read from `endpointCache`, which an endpoint
    /// write holds for its transaction.)
    private let db: DatabasePool
    public let path: String
    /// The endpoint table as decoded rows, kept in step by this class's own writes (the
    /// only ones): every publish, service sync and API call lists the endpoints, and
    /// decoding a thousand rows' JSON columns each time cost more than the rest of a
    /// relabel.
    private let endpointCache = EndpointCache()

    public init(directory: String) throws(MeshError) {
        path = directory + "/state.db"
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
            var config = Configuration()
            config.busyMode = .timeout(5)
            db = try DatabasePool(path: path, configuration: config)
            try Self.migrator.migrate(db)
        } catch {
            throw MeshError(.internalError, "cannot open the state database \(path): \(error)")
        }
    }

    private static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1-endpoints") { db in
            // AUTOINCREMENT: an endpoint id is never reused, so a new endpoint can never
            // inherit a deleted one's counters or map entries.
            try db.create(table: "endpoint") { t in
                t.column("id", .integer).primaryKey(autoincrement: true)
                t.column("name", .text).notNull().unique()
                t.column("labels", .text).notNull()
                t.column("ipv4", .text).notNull().unique()
                t.column("netns", .text).notNull()
                t.column("interface", .text).notNull()
                t.column("cgroup", .text).notNull()
                t.column("createdAt", .datetime).notNull()
            }
        }
        m.registerMigration("v2-policies") { db in
            // One row per document as applied; policies are re-derived from it on start-up.
            try db.create(table: "policyDocument") { t in
                t.column("key", .text).primaryKey()   // namespace/name
                t.column("kind", .text).notNull()
                t.column("yaml", .text).notNull()
                t.column("appliedAt", .datetime).notNull()
            }
        }
        m.registerMigration("v3-config") { db in
            try db.create(table: "setting") { t in
                t.column("key", .text).primaryKey()
                t.column("value", .text).notNull()
            }
        }
        m.registerMigration("v4-identities") { db in
            // One row per allocated identity; unusedSince is set when nothing uses it any
            // more, and the row goes (the number is released) after a grace period.
            try db.create(table: "identity") { t in
                t.column("id", .integer).primaryKey()
                t.column("scope", .text).notNull()
                t.column("key", .text).notNull()
                t.column("allocatedAt", .datetime).notNull()
                t.column("unusedSince", .datetime)
                t.uniqueKey(["scope", "key"])
            }
        }
        m.registerMigration("v5-services") { db in
            // Named ports and the readiness probe, as JSON; older rows have neither.
            try db.alter(table: "endpoint") { t in
                t.add(column: "ports", .text).notNull().defaults(to: "{}")
                t.add(column: "readiness", .text)
            }
            // AUTOINCREMENT: a service's id numbers its frontends in the kernel; a new
            // service never inherits a deleted one's counters or affinity entries.
            try db.create(table: "service") { t in
                t.column("id", .integer).primaryKey(autoincrement: true)
                t.column("key", .text).notNull().unique()      // namespace/name
                t.column("spec", .text).notNull()              // MeshService as JSON
                t.column("clusterIP", .text).notNull().unique()
                t.column("appliedAt", .datetime).notNull()
            }
            try db.create(table: "namespace") { t in
                t.column("name", .text).primaryKey()
                t.column("labels", .text).notNull()
                t.column("appliedAt", .datetime).notNull()
            }
        }
        m.registerMigration("v6-httproutes") { db in
            // AUTOINCREMENT: the id orders routes by first apply, which breaks precedence
            // ties between them (the Gateway API's "oldest route wins").
            try db.create(table: "httproute") { t in
                t.column("id", .integer).primaryKey(autoincrement: true)
                t.column("key", .text).notNull().unique()      // namespace/name
                t.column("spec", .text).notNull()              // HTTPRoute as JSON
                t.column("appliedAt", .datetime).notNull()
            }
        }
        m.registerMigration("v7-service-accounts") { db in
            // The account an endpoint's workload certificate names; older rows: `default`.
            try db.alter(table: "endpoint") { t in
                t.add(column: "serviceAccount", .text).notNull().defaults(to: "default")
            }
        }
        return m
    }

    struct EndpointRow: Codable, FetchableRecord, PersistableRecord {
        static let databaseTableName = "endpoint"
        var id: Int64?
        var name: String
        var labels: String
        var ipv4: String
        var netns: String
        var interface: String
        var cgroup: String
        var createdAt: Date
        var ports: String
        var readiness: String?
        var serviceAccount: String

        func endpoint() throws -> Endpoint {
            let dict = try JSONDecoder().decode([String: String].self, from: Data(labels.utf8))
            guard let ip = IPv4Address(ipv4) else { throw MeshError(.internalError, "stored address \(ipv4) is invalid") }
            return Endpoint(id: Int(id ?? 0), name: name, labels: try Labels(dict), ipv4: ip, netns: netns,
                            interface: interface, cgroup: cgroup, createdAt: createdAt,
                            ports: try JSONDecoder().decode([String: UInt16].self, from: Data(ports.utf8)),
                            readiness: try readiness.map { try JSONDecoder().decode(ReadinessProbe.self, from: Data($0.utf8)) },
                            serviceAccount: serviceAccount)
        }
    }

    /// Runs `body` in one write transaction (for the agent's own tables, such as identities).
    func write<T>(_ what: String, _ body: (Database) throws -> T) throws(MeshError) -> T {
        try wrap(what) { try db.write(body) }
    }

    func read<T>(_ what: String, _ body: (Database) throws -> T) throws(MeshError) -> T {
        try wrap(what) { try db.read(body) }
    }

    private func wrap<T>(_ what: String, _ body: () throws -> T) throws(MeshError) -> T {
        do { return try body() } catch let e as MeshError { throw e } catch {
            throw MeshError(.internalError, "state database: \(what): \(error)")
        }
    }

    /// Every endpoint, by id.
    public func endpoints() throws(MeshError) -> [Endpoint] {
        try wrap("list endpoints") {
            try endpointCache.list {
                try db.read { try EndpointRow.order(Column("id")).fetchAll($0) }.map { try $0.endpoint() }
            }
        }
    }

    public func endpoint(named name: String) throws(MeshError) -> Endpoint? {
        try endpoints().first { $0.name == name }
    }

    /// Reserves the next endpoint id: inserts a row with `make(id)`'s fields in one
    /// transaction, so two creations can never get the same id or address.
    public func insertEndpoint(_ make: (Int) throws(MeshError) -> Endpoint) throws(MeshError) -> Endpoint {
        try wrap("insert endpoint") {
            try endpointCache.change(apply: { list, ep in list.append(ep) }) {
                try db.write { db in
                    let next = try Int.fetchOne(db, sql: "SELECT seq FROM sqlite_sequence WHERE name = 'endpoint'") ?? 0
                    let ep = try make(next + 1)
                    let row = EndpointRow(id: Int64(ep.id), name: ep.name, labels: ep.labels.description.isEmpty ? "{}" :
                                            String(decoding: try JSONEncoder().encode(ep.labels.values), as: UTF8.self),
                                          ipv4: ep.ipv4.description, netns: ep.netns, interface: ep.interface,
                                          cgroup: ep.cgroup, createdAt: ep.createdAt,
                                          ports: String(decoding: try JSONEncoder().encode(ep.ports), as: UTF8.self),
                                          readiness: try ep.readiness.map { String(decoding: try JSONEncoder().encode($0), as: UTF8.self) },
                                          serviceAccount: ep.serviceAccount)
                    try row.insert(db)
                    // As a later read decodes it (the time at the column's precision).
                    guard let stored = try EndpointRow.fetchOne(db, key: row.id) else {
                        throw MeshError(.internalError, "endpoint \(ep.name) vanished right after its insert")
                    }
                    return try stored.endpoint()
                }
            }
        }
    }

    /// Sets an endpoint's labels, only while they are still `expected` when that is given
    /// (so an undo never overwrites a later change); false when nothing was changed.
    @discardableResult
    public func setLabels(_ labels: Labels, ofEndpoint name: String, ifCurrently expected: Labels? = nil) throws(MeshError) -> Bool {
        try wrap("relabel endpoint") {
            let json = String(decoding: try JSONEncoder().encode(labels.values), as: UTF8.self)
            return try endpointCache.change(apply: { list, changed in
                if changed, let i = list.firstIndex(where: { $0.name == name }) { list[i].labels = labels }
            }) {
                try db.write { db in
                    if let expected {
                        guard let row = try EndpointRow.filter(Column("name") == name).fetchOne(db),
                              try row.endpoint().labels == expected else { return false }
                    }
                    try db.execute(sql: "UPDATE endpoint SET labels = ? WHERE name = ?", arguments: [json, name])
                    return db.changesCount > 0
                }
            }
        }
    }

    public struct PolicyDocumentRow: Codable, FetchableRecord, PersistableRecord, Sendable {
        public static let databaseTableName = "policyDocument"
        public var key: String
        public var kind: String
        public var yaml: String
        public var appliedAt: Date
    }

    public func policyDocuments() throws(MeshError) -> [PolicyDocumentRow] {
        try wrap("list policies") { try db.read { try PolicyDocumentRow.order(Column("key")).fetchAll($0) } }
    }

    /// Replaces the named documents and removes `delete`, in one transaction.
    public func writePolicyDocuments(_ rows: [PolicyDocumentRow], delete: [String] = []) throws(MeshError) {
        try wrap("write policies") {
            try db.write { db in
                for key in delete { _ = try PolicyDocumentRow.deleteOne(db, key: key) }
                for r in rows { try r.save(db) }
            }
        }
    }

    public func setting(_ key: String) throws(MeshError) -> String? {
        try wrap("read setting") { try db.read { try String.fetchOne($0, sql: "SELECT value FROM setting WHERE key = ?", arguments: [key]) } }
    }

    public func setSetting(_ key: String, _ value: String) throws(MeshError) {
        try wrap("write setting") {
            try db.write { try $0.execute(sql: "INSERT OR REPLACE INTO setting (key, value) VALUES (?, ?)", arguments: [key, value]) }
        }
    }

    @discardableResult
    public func deleteEndpoint(named name: String) throws(MeshError) -> Bool {
        try wrap("delete endpoint") {
            try endpointCache.change(apply: { list, deleted in
                if deleted { list.removeAll { $0.name == name } }
            }) {
                try db.write { try EndpointRow.filter(Column("name") == name).deleteAll($0) > 0 }
            }
        }
    }

    // MARK: Services and namespaces

    public struct ServiceRow: Codable, FetchableRecord, PersistableRecord, Sendable {
        public static let databaseTableName = "service"
        public var id: Int64?
        public var key: String
        public var spec: String
        public var clusterIP: String
        public var appliedAt: Date

        public func service() throws -> MeshService {
            try JSONDecoder().decode(MeshService.self, from: Data(spec.utf8))
        }
    }

    public struct NamespaceRow: Codable, FetchableRecord, PersistableRecord, Sendable {
        public static let databaseTableName = "namespace"
        public var name: String
        public var labels: String
        public var appliedAt: Date

        public func namespace() throws -> Namespace {
            Namespace(name: name, labels: try Labels(try JSONDecoder().decode([String: String].self, from: Data(labels.utf8))))
        }
    }

    public struct RouteRow: Codable, FetchableRecord, PersistableRecord, Sendable {
        public static let databaseTableName = "httproute"
        public var id: Int64?
        public var key: String
        public var spec: String
        public var appliedAt: Date

        public func route() throws -> HTTPRoute {
            try JSONDecoder().decode(HTTPRoute.self, from: Data(spec.utf8))
        }
    }

    public func routeRows() throws(MeshError) -> [RouteRow] {
        try wrap("list HTTPRoutes") { try db.read { try RouteRow.order(Column("id")).fetchAll($0) } }
    }

    public func serviceRows() throws(MeshError) -> [ServiceRow] {
        try wrap("list services") { try db.read { try ServiceRow.order(Column("id")).fetchAll($0) } }
    }

    public func namespaceRows() throws(MeshError) -> [NamespaceRow] {
        try wrap("list namespaces") { try db.read { try NamespaceRow.order(Column("name")).fetchAll($0) } }
    }

    /// Writes services and HTTPRoutes (new ones get their id; an updated route keeps its
    /// own) and namespaces, and deletes those named, all in one transaction; returns the
    /// services and routes as written.
    @discardableResult
    public func writeServices(_ services: [ServiceRow], namespaces: [NamespaceRow], routes: [RouteRow] = [],
                              deleteServices: [String] = [], deleteNamespaces: [String] = [],
                              deleteRoutes: [String] = []) throws(MeshError) -> (services: [ServiceRow], routes: [RouteRow]) {
        try wrap("write services") {
            try db.write { db in
                for key in deleteServices { _ = try ServiceRow.filter(Column("key") == key).deleteAll(db) }
                for name in deleteNamespaces { _ = try NamespaceRow.deleteOne(db, key: name) }
                for key in deleteRoutes { _ = try RouteRow.filter(Column("key") == key).deleteAll(db) }
                for n in namespaces { try n.save(db) }
                var routesOut: [RouteRow] = []
                for var r in routes {
                    // An update keeps the route's place in precedence order.
                    if let existing = try RouteRow.filter(Column("key") == r.key).fetchOne(db) {
                        r.id = existing.id
                        try r.update(db)
                    } else {
                        try r.insert(db)
                        r.id = db.lastInsertedRowID
                    }
                    routesOut.append(r)
                }
                var out: [ServiceRow] = []
                for var r in services {
                    if r.id == nil, let existing = try ServiceRow.filter(Column("key") == r.key).fetchOne(db) { r.id = existing.id }
                    if r.id == nil { try r.insert(db); r.id = db.lastInsertedRowID } else { try r.update(db) }
                    out.append(r)
                }
                return (out, routesOut)
            }
        }
    }
}

/// Store's copy of the endpoint table. Writes hold the lock across their transaction, so
/// a reader never caches rows older than a write that has returned.
private final class EndpointCache: @unchecked Sendable { // `rows` only under `lock`
    private let lock = NSLock()
    private var rows: [Endpoint]?

    func list(load: () throws -> [Endpoint]) rethrows -> [Endpoint] {
        try lock.withLock {
            if let rows { return rows }
            let loaded = try load()
            rows = loaded
            return loaded
        }
    }

    /// Runs `write` (one transaction); when it commits, `apply`s its result to the copy.
    /// A failed write may have done anything: the copy is dropped and read again.
    func change<T>(apply: (inout [Endpoint], T) -> Void, _ write: () throws -> T) rethrows -> T {
        try lock.withLock {
            do {
                let result = try write()
                if rows != nil { apply(&rows!, result) }
                return result
            } catch {
                rows = nil
                throw error
            }
        }
    }
}
