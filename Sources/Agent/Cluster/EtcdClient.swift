import AsyncHTTPClient
import Foundation
import MeshModel
import NIOConcurrencyHelpers
import NIOCore
import NIOFoundationCompat

/// A client of etcd's documented v3 API through its JSON gateway (`POST /v3/kv/range` and
/// friends: the gRPC messages as JSON, 64-bit numbers as strings, keys and values base64).
///
/// Why not a Swift etcd library: none is kept up among the packages this project may use,
/// and the gRPC route would mean committing generated code for etcd's protos; the gateway
/// is part of every etcd server, documented, and needs only an HTTP client, which
/// AsyncHTTPClient is. What is hand-written here is only the mapping of a dozen messages.
///
/// Several members may be given: a request goes to the member that answered last, and on a
/// connection failure (or an etcd "no leader" answer) to the next, so a member that dies
/// costs one retry, not an outage.
public final class EtcdClient: Sendable {
    public struct KeyValue: Sendable, Equatable {
        public var key: String
        public var value: [UInt8]
        public var createRevision: Int64
        public var modRevision: Int64
        public var lease: Int64

        public var string: String { String(decoding: value, as: UTF8.self) }
    }

    public enum Event: Sendable, Equatable {
        case put(KeyValue)
        case delete(key: String, modRevision: Int64)

        public var key: String {
            switch self {
            case .put(let kv): kv.key
            case .delete(let key, _): key
            }
        }
    }

    /// One answer of a watch: the events of one or more revisions, in order.
    public struct WatchBatch: Sendable {
        public var revision: Int64
        public var events: [Event]
    }

    public enum Compare: Sendable {
        /// The key does not exist (its create revision is 0).
        case absent(String)
        /// The key exists.
        case present(String)
        /// The key holds exactly this value.
        case value(String, [UInt8])
        /// No key under the prefix was created or changed after `revision`.
        case unchangedSince(prefix: String, revision: Int64)
    }

    public enum Op: Sendable {
        case put(String, [UInt8], lease: Int64)
        case delete(String)
        case get(String)
    }

    public struct TxnResult: Sendable {
        public var succeeded: Bool
        public var revision: Int64
        /// The key-values of `get` operations, in order.
        public var ranges: [[KeyValue]]
    }

    public let endpoints: [String]
    private let state: NIOLockedValueBox<State>

    struct State {
        var current = 0
        var requests: Int64 = 0
        var failures: Int64 = 0
        var shutDown = false
        /// One HTTP client per member, and whether a request to it failed since it was made.
        var clients: [HTTPClient]
        var failed: [Bool]
    }

    /// `endpoints`: `host:port` of each member.
    public init(endpoints: [String]) {
        self.endpoints = endpoints.map { "http://\($0)" }
        let clients = endpoints.map { _ in Self.makeClient() }
        state = NIOLockedValueBox(State(clients: clients, failed: clients.map { _ in false }))
    }

    private static func makeClient() -> HTTPClient {
        var config = HTTPClient.Configuration()
        config.timeout = .init(connect: .seconds(2), read: nil)
        config.connectionPool = .init(idleTimeout: .seconds(30))
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: config)
    }

    /// The client for member `index`; a fresh one if a request to it failed.
    ///
    /// Why: AsyncHTTPClient backs off new connections to a host after failed connects
    /// (100 ms × 1.25 per failure, up to a minute) until one succeeds. After thirty seconds
    /// of a dead member that back-off had grown to seconds, and requests waited in the pool
    /// (`getConnectionFromPoolTimeout`) after etcd was back, long enough for a 4-second
    /// lease to lapse (seen in CI). When to try again is this client's callers' business
    /// (a keepalive every third of the lease, the watch's own back-off), so a member that
    /// failed gets a new pool, and the old one is shut down, with whatever it still held.
    private func client(_ index: Int) -> HTTPClient {
        let (client, retired) = state.withLockedValue { s -> (HTTPClient, HTTPClient?) in
            guard s.failed[index], !s.shutDown else { return (s.clients[index], nil) }
            let old = s.clients[index]
            s.clients[index] = Self.makeClient()
            s.failed[index] = false
            return (s.clients[index], old)
        }
        if let retired { Task { try? await retired.shutdown() } }
        return client
    }

    public func shutdown() async {
        let clients = state.withLockedValue { s in
            s.shutDown = true
            return s.clients
        }
        for client in clients { try? await client.shutdown() }
    }

    /// A client dropped without `shutdown()` (meshd leaving on an error) closes its
    /// connections here: AsyncHTTPClient stops the process otherwise.
    deinit {
        let (down, clients) = state.withLockedValue { ($0.shutDown, $0.clients) }
        if !down { for client in clients { try? client.syncShutdown() } }
    }

    /// Requests sent so far, and how many failed (member down, timeout, error answer).
    public var requestCounts: (requests: Int64, failures: Int64) { state.withLockedValue { ($0.requests, $0.failures) } }

    // MARK: requests

    public func range(_ key: String, prefix: Bool = false) async throws(MeshError) -> (kvs: [KeyValue], revision: Int64) {
        var body: [String: Any] = ["key": Self.b64(key)]
        if prefix { body["range_end"] = Self.b64(Self.prefixEnd(key)) }
        let answer = try await call("/v3/kv/range", body)
        return (try Self.kvs(answer["kvs"]), Self.revision(answer))
    }

    @discardableResult
    public func put(_ key: String, _ value: [UInt8], lease: Int64 = 0) async throws(MeshError) -> Int64 {
        var body: [String: Any] = ["key": Self.b64(key), "value": Data(value).base64EncodedString()]
        if lease != 0 { body["lease"] = String(lease) }
        return Self.revision(try await call("/v3/kv/put", body))
    }

    @discardableResult
    public func delete(_ key: String, prefix: Bool = false) async throws(MeshError) -> Int {
        var body: [String: Any] = ["key": Self.b64(key)]
        if prefix { body["range_end"] = Self.b64(Self.prefixEnd(key)) }
        return Int(Self.int(try await call("/v3/kv/deleterange", body)["deleted"]))
    }

    public func txn(_ compares: [Compare], success: [Op], failure: [Op] = []) async throws(MeshError) -> TxnResult {
        let body: [String: Any] = ["compare": compares.map(Self.json), "success": success.map(Self.json), "failure": failure.map(Self.json)]
        let answer = try await call("/v3/kv/txn", body)
        var ranges: [[KeyValue]] = []
        for r in answer["responses"] as? [[String: Any]] ?? [] {
            if let rr = r["response_range"] as? [String: Any] { ranges.append(try Self.kvs(rr["kvs"])) }
        }
        return TxnResult(succeeded: answer["succeeded"] as? Bool ?? false, revision: Self.revision(answer), ranges: ranges)
    }

    /// A lease of `ttl` seconds; its id.
    public func grantLease(ttl: Int) async throws(MeshError) -> Int64 {
        let id = Self.int(try await call("/v3/lease/grant", ["TTL": String(ttl)])["ID"])
        guard id != 0 else { throw MeshError(.unavailable, "etcd granted no lease") }
        return id
    }

    /// Renews the lease; its TTL now (0 when it has expired, or never was) and the store's
    /// revision.
    public func keepAlive(_ lease: Int64) async throws(MeshError) -> (ttl: Int64, revision: Int64) {
        let answer = try await call("/v3/lease/keepalive", ["ID": String(lease)])
        let result = answer["result"] as? [String: Any] ?? [:]
        return (Self.int(result["TTL"]), Self.revision(result))
    }

    public func revoke(_ lease: Int64) async throws(MeshError) {
        _ = try await call("/v3/lease/revoke", ["ID": String(lease)])
    }

    /// The answering member's version and the store's revision.
    public func status() async throws(MeshError) -> (version: String, revision: Int64, leader: String) {
        let answer = try await call("/v3/maintenance/status", [:])
        return (answer["version"] as? String ?? "?", Self.revision(answer), answer["leader"] as? String ?? "?")
    }

    /// Every change under `prefix` from `revision` on, until the stream ends (a member going
    /// away, a compaction past `revision`: the error says which). Consumers resume from the
    /// last revision they saw, plus one.
    public func watch(prefix: String, from revision: Int64) -> AsyncThrowingStream<WatchBatch, Error> {
        let body: [String: Any] = ["create_request": ["key": Self.b64(prefix), "range_end": Self.b64(Self.prefixEnd(prefix)),
                                                      "start_revision": String(revision)]]
        let data = (try? JSONSerialization.data(withJSONObject: body)) ?? Data()
        return AsyncThrowingStream { continuation in
            let task = Task {
                do {
                    let response = try await self.open("/v3/watch", data, timeout: .hours(24 * 365))
                    var pending = ByteBuffer()
                    for try await chunk in response.body {
                        var chunk = chunk
                        pending.writeBuffer(&chunk)
                        while let nl = pending.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
                            let length = nl - pending.readerIndex
                            let line = pending.readBytes(length: length) ?? []
                            pending.moveReaderIndex(forwardBy: 1)
                            if let batch = try Self.watchBatch(line) { continuation.yield(batch) }
                        }
                        pending.discardReadBytes()
                        // A line of a megabyte is no watch answer etcd sends (its own limit is 1.5 MiB a value).
                        guard pending.readableBytes < 16 << 20 else {
                            throw MeshError(.internalError, "etcd watch answer longer than 16 MiB without a line end")
                        }
                    }
                    continuation.finish(throwing: MeshError(.unavailable, "etcd ended the watch of \(prefix)"))
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    // MARK: transport

    private func call(_ path: String, _ body: [String: Any]) async throws(MeshError) -> [String: Any] {
        let data: Data
        do { data = try JSONSerialization.data(withJSONObject: body) } catch {
            throw MeshError(.internalError, "etcd \(path): cannot encode the request: \(error)")
        }
        let response = try await open(path, data, timeout: .seconds(5))
        let bytes: ByteBuffer
        do { bytes = try await response.body.collect(upTo: 64 << 20) } catch {
            state.withLockedValue { $0.failures += 1 }
            throw MeshError(.unavailable, "etcd \(path): reading the answer failed: \(error)")
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(buffer: bytes)) as? [String: Any] else {
            state.withLockedValue { $0.failures += 1 }
            throw MeshError(.internalError, "etcd \(path): the answer is not a JSON object")
        }
        if response.status != .ok {
            state.withLockedValue { $0.failures += 1 }
            let message = object["message"] as? String ?? object["error"] as? String ?? "\(response.status)"
            throw MeshError(.unavailable, "etcd \(path): \(message)")
        }
        return object
    }

    /// Sends the request to the member that answered last, then to each other member in
    /// turn while they cannot be reached or have no leader.
    private func open(_ path: String, _ data: Data, timeout: TimeAmount) async throws(MeshError) -> HTTPClientResponse {
        let start = state.withLockedValue { $0.current }
        var errors: [String] = []
        for step in 0..<endpoints.count {
            let index = (start + step) % endpoints.count
            var request = HTTPClientRequest(url: endpoints[index] + path)
            request.method = .POST
            request.headers.add(name: "content-type", value: "application/json")
            request.body = .bytes(ByteBuffer(data: data))
            state.withLockedValue { $0.requests += 1 }
            do {
                let response = try await client(index).execute(request, timeout: timeout)
                // No leader (an election in progress) is worth another member's try.
                if response.status == .serviceUnavailable, step + 1 < endpoints.count {
                    errors.append("\(endpoints[index]): \(response.status)")
                    state.withLockedValue { $0.failures += 1 }
                    continue
                }
                state.withLockedValue { $0.current = index }
                return response
            } catch {
                if Task.isCancelled { throw MeshError(.unavailable, "etcd \(path): cancelled") }
                state.withLockedValue {
                    $0.failures += 1
                    $0.failed[index] = true
                }
                errors.append("\(endpoints[index]): \(error)")
            }
        }
        throw MeshError(.unavailable, "etcd unreachable (\(path)): \(errors.joined(separator: "; "))")
    }

    // MARK: JSON

    static func b64(_ s: String) -> String { Data(s.utf8).base64EncodedString() }

    /// The first key after every key that starts with `prefix`.
    static func prefixEnd(_ prefix: String) -> String {
        var bytes = Array(prefix.utf8)
        while let last = bytes.last {
            if last < 0xff {
                bytes[bytes.count - 1] = last + 1
                return String(decoding: bytes, as: UTF8.self)
            }
            bytes.removeLast()
        }
        return "\0"
    }

    static func int(_ v: Any?) -> Int64 {
        if let s = v as? String { return Int64(s) ?? 0 }
        if let n = v as? NSNumber { return n.int64Value }
        return 0
    }

    static func revision(_ answer: [String: Any]) -> Int64 { int((answer["header"] as? [String: Any])?["revision"]) }

    static func bytes(_ v: Any?) -> [UInt8] {
        guard let s = v as? String, let d = Data(base64Encoded: s) else { return [] }
        return [UInt8](d)
    }

    static func kv(_ o: [String: Any]) -> KeyValue {
        KeyValue(key: String(decoding: bytes(o["key"]), as: UTF8.self), value: bytes(o["value"]),
                 createRevision: int(o["create_revision"]), modRevision: int(o["mod_revision"]), lease: int(o["lease"]))
    }

    static func kvs(_ v: Any?) throws(MeshError) -> [KeyValue] {
        guard let v else { return [] }
        guard let list = v as? [[String: Any]] else { throw MeshError(.internalError, "etcd answer: kvs is not a list") }
        return list.map(kv)
    }

    static func json(_ c: Compare) -> [String: Any] {
        switch c {
        case .absent(let key): ["key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"]
        case .present(let key): ["key": b64(key), "target": "CREATE", "result": "GREATER", "create_revision": "0"]
        case .value(let key, let value): ["key": b64(key), "target": "VALUE", "result": "EQUAL", "value": Data(value).base64EncodedString()]
        case .unchangedSince(let prefix, let revision):
            ["key": b64(prefix), "range_end": b64(prefixEnd(prefix)), "target": "MOD", "result": "LESS", "mod_revision": String(revision + 1)]
        }
    }

    static func json(_ op: Op) -> [String: Any] {
        switch op {
        case .put(let key, let value, let lease):
            var p: [String: Any] = ["key": b64(key), "value": Data(value).base64EncodedString()]
            if lease != 0 { p["lease"] = String(lease) }
            return ["request_put": p]
        case .delete(let key): return ["request_delete_range": ["key": b64(key)]]
        case .get(let key): return ["request_range": ["key": b64(key)]]
        }
    }

    /// One line of a watch stream: nil for the "created" answer and progress notices.
    static func watchBatch(_ line: [UInt8]) throws -> WatchBatch? {
        guard !line.isEmpty else { return nil }
        guard let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] else {
            throw MeshError(.internalError, "etcd watch: an answer is not JSON")
        }
        if let error = object["error"] as? [String: Any] {
            throw MeshError(.unavailable, "etcd watch: \(error["message"] as? String ?? "error")")
        }
        guard let result = object["result"] as? [String: Any] else { return nil }
        if result["canceled"] as? Bool == true {
            let compacted = int(result["compact_revision"])
            throw MeshError(.unavailable, compacted > 0 ? "etcd watch: revision compacted (now from \(compacted))"
                                                        : "etcd watch cancelled: \(result["cancel_reason"] as? String ?? "no reason given")")
        }
        // The "created" answer and progress notices carry no events: nothing was applied.
        guard let list = result["events"] as? [[String: Any]], !list.isEmpty else { return nil }
        let events = list.compactMap { e -> Event? in
            guard let kvo = e["kv"] as? [String: Any] else { return nil }
            let kv = kv(kvo)
            return (e["type"] as? String) == "DELETE" ? .delete(key: kv.key, modRevision: kv.modRevision) : .put(kv)
        }
        return WatchBatch(revision: revision(result), events: events)
    }
}
