import CBPF
import Glibc

/// A BPF map by file descriptor, with typed access. Keys and values are the C structs of
/// `bpf/include/mesh_abi.h` (imported through CBPF), so their layout is the kernel's.
public final class BPFMap: @unchecked Sendable {
    public let fd: Int32
    public let name: String
    public let type: bpf_map_type
    public let keySize: Int
    public let valueSize: Int
    public let maxEntries: Int

    convenience init(borrowingFD fd: Int32) throws {
        guard fd >= 0 else { throw DatapathError("map is not loaded", errno: EBADF) }
        let own = dup(fd)
        guard own >= 0 else { throw DatapathError("dup map fd", errno: Glibc.errno) }
        try self.init(ownedFD: own)
    }

    /// Opens a map pinned at `path` (e.g. by an earlier `meshd`).
    public convenience init(pinnedAt path: String) throws {
        let fd = bpf_obj_get(path)
        guard fd >= 0 else { throw DatapathError("open pinned map \(path)", errno: Glibc.errno) }
        try self.init(ownedFD: fd)
    }

    private init(ownedFD fd: Int32) throws {
        var info = bpf_map_info()
        var len = UInt32(MemoryLayout<bpf_map_info>.size)
        let rc = bpf_obj_get_info_by_fd(fd, &info, &len)
        guard rc == 0 else {
            Glibc.close(fd)
            throw DatapathError("read map info", errno: Glibc.errno)
        }
        self.fd = fd
        self.name = withUnsafeBytes(of: info.name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        self.type = bpf_map_type(rawValue: info.type)
        self.keySize = Int(info.key_size)
        self.valueSize = Int(info.value_size)
        self.maxEntries = Int(info.max_entries)
    }

    deinit { Glibc.close(fd) }

    public var isPerCPU: Bool {
        [BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH].contains(type)
    }

    /// A short, stable name for the map type (`hash`, `percpu_hash`, `ringbuf`, ...).
    public var typeName: String {
        let raw = libbpf_bpf_map_type_str(type).map { String(cString: $0) }
        return raw ?? "type_\(type.rawValue)"
    }

    private func checkSizes<K, V>(_: K.Type, _: V.Type, perCPU: Bool = false) throws {
        guard MemoryLayout<K>.size == keySize, MemoryLayout<V>.size == valueSize else {
            throw DatapathError("map \(name): key/value are \(keySize)/\(valueSize) bytes, caller used \(MemoryLayout<K>.size)/\(MemoryLayout<V>.size)", errno: EINVAL)
        }
        if isPerCPU != perCPU {
            throw DatapathError("map \(name): per-CPU map must be read with lookupPerCPU", errno: EINVAL)
        }
    }

    public func lookup<K: BitwiseCopyable, V: BitwiseCopyable>(_ key: K, as: V.Type = V.self) throws -> V? {
        try checkSizes(K.self, V.self)
        var k = key
        var v = unsafeBitCastZero(V.self)
        let rc = bpf_map_lookup_elem(fd, &k, &v)
        if rc == 0 { return v }
        if Glibc.errno == ENOENT { return nil }
        throw DatapathError("lookup in map \(name)", errno: Glibc.errno)
    }

    /// The value of every possible CPU, in CPU order. Sum them for a total.
    public func lookupPerCPU<K: BitwiseCopyable, V: BitwiseCopyable>(_ key: K, as: V.Type = V.self) throws -> [V]? {
        try checkSizes(K.self, V.self, perCPU: true)
        let cpus = Int(libbpf_num_possible_cpus())
        // The kernel copies round_up(value_size, 8) bytes per CPU.
        let stride = (valueSize + 7) & ~7
        var buf = [UInt8](repeating: 0, count: stride * cpus)
        var k = key
        let rc = buf.withUnsafeMutableBytes { bpf_map_lookup_elem(fd, &k, $0.baseAddress) }
        if rc != 0 {
            if Glibc.errno == ENOENT { return nil }
            throw DatapathError("lookup in per-CPU map \(name)", errno: Glibc.errno)
        }
        return buf.withUnsafeBytes { raw in
            (0..<cpus).map { raw.loadUnaligned(fromByteOffset: $0 * stride, as: V.self) }
        }
    }

    public enum UpdateMode: UInt64 { case any = 0, createOnly = 1, replaceOnly = 2 }

    public func update<K: BitwiseCopyable, V: BitwiseCopyable>(_ key: K, _ value: V, mode: UpdateMode = .any) throws {
        try checkSizes(K.self, V.self)
        var k = key, v = value
        guard bpf_map_update_elem(fd, &k, &v, mode.rawValue) == 0 else {
            throw DatapathError("update map \(name)", errno: Glibc.errno)
        }
    }

    /// Deletes `key`; returns false when it was not there.
    @discardableResult
    public func delete<K: BitwiseCopyable>(_ key: K) throws -> Bool {
        guard MemoryLayout<K>.size == keySize else { throw DatapathError("map \(name): wrong key size", errno: EINVAL) }
        var k = key
        if bpf_map_delete_elem(fd, &k) == 0 { return true }
        if Glibc.errno == ENOENT { return false }
        throw DatapathError("delete from map \(name)", errno: Glibc.errno)
    }

    /// Every key, by walking get_next_key. Concurrent deletes may skip or repeat a key,
    /// as with any BPF hash map walk.
    public func keys<K: BitwiseCopyable>(as: K.Type = K.self) throws -> [K] {
        guard MemoryLayout<K>.size == keySize else { throw DatapathError("map \(name): wrong key size", errno: EINVAL) }
        var out: [K] = []
        var cur = unsafeBitCastZero(K.self)
        var next = unsafeBitCastZero(K.self)
        var rc = bpf_map_get_next_key(fd, nil, &next)
        while rc == 0 {
            out.append(next)
            cur = next
            rc = bpf_map_get_next_key(fd, &cur, &next)
            if out.count > maxEntries * 2 { break } // a map rewritten under us: stop, never loop
        }
        if Glibc.errno != ENOENT { throw DatapathError("iterate map \(name)", errno: Glibc.errno) }
        return out
    }

    /// Entry `index` of a per-CPU array of UInt64 counters, summed over CPUs (0 if absent).
    public func sumPerCPU(_ index: UInt32) throws -> UInt64 {
        (try lookupPerCPU(index, as: UInt64.self) ?? []).reduce(0, &+)
    }

    /// Writes one value per possible CPU (in CPU order) for `key` of a per-CPU map.
    public func updatePerCPU<K: BitwiseCopyable, V: BitwiseCopyable>(_ key: K, _ values: [V]) throws {
        try checkSizes(K.self, V.self, perCPU: true)
        let cpus = Int(libbpf_num_possible_cpus())
        guard values.count == cpus else { throw DatapathError("update per-CPU map \(name): \(values.count) values for \(cpus) CPUs", errno: EINVAL) }
        let stride = (valueSize + 7) & ~7
        var buf = [UInt8](repeating: 0, count: stride * cpus)
        buf.withUnsafeMutableBytes { raw in
            for (i, v) in values.enumerated() { raw.storeBytes(of: v, toByteOffset: i * stride, as: V.self) }
        }
        var k = key
        let rc = buf.withUnsafeMutableBytes { bpf_map_update_elem(fd, &k, $0.baseAddress, 0) }
        guard rc == 0 else { throw DatapathError("update per-CPU map \(name)", errno: Glibc.errno) }
    }

    /// Number of entries, for map pressure. Hash maps are counted with the kernel's batch
    /// lookup (thousands of entries a call, and it does not touch an LRU's recency);
    /// other maps by walking their keys.
    public func count() throws -> Int {
        if type == BPF_MAP_TYPE_RINGBUF || type == BPF_MAP_TYPE_ARRAY || type == BPF_MAP_TYPE_PERCPU_ARRAY {
            return type == BPF_MAP_TYPE_RINGBUF ? 0 : maxEntries
        }
        if let n = batchCount() { return n }
        var cur = [UInt8](repeating: 0, count: keySize)
        var next = [UInt8](repeating: 0, count: keySize)
        var n = 0
        var rc = bpf_map_get_next_key(fd, nil, &next)
        while rc == 0 {
            n += 1
            swap(&cur, &next)
            rc = bpf_map_get_next_key(fd, &cur, &next)
            if n > maxEntries * 2 { break }
        }
        return n
    }

    /// The entry count by BPF_MAP_LOOKUP_BATCH, or nil where the map type (or kernel) has
    /// no batch operations.
    private func batchCount() -> Int? {
        var total = 0
        return batchWalk { _, _, n in total += n } ? total : nil
    }

    /// Walks the map with BPF_MAP_LOOKUP_BATCH, thousands of entries a system call, handing
    /// each chunk's keys and values (raw, back to back) to `body`. False, having called
    /// `body` for nothing, where the map type or kernel has no batch lookup (the caller
    /// walks key by key instead), or when the map is rewritten under the walk.
    func batchWalk(chunk: Int = 4096, _ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer, Int) -> Void) -> Bool {
        guard [BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH, BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_LRU_PERCPU_HASH].contains(type) else {
            return false
        }
        let stride = isPerCPU ? ((valueSize + 7) & ~7) * Int(libbpf_num_possible_cpus()) : valueSize
        var keys = [UInt8](repeating: 0, count: keySize * chunk)
        var values = [UInt8](repeating: 0, count: stride * chunk)
        var chunks: [(keys: [UInt8], values: [UInt8], n: Int)] = []
        // The hash maps' batch position is a bucket number (u32); 8 bytes leave room.
        var position: UInt64 = 0, next: UInt64 = 0
        var first = true, total = 0
        while true {
            var n = UInt32(chunk)
            let rc = keys.withUnsafeMutableBytes { k in
                values.withUnsafeMutableBytes { v in
                    first ? bpf_map_lookup_batch(fd, nil, &next, k.baseAddress, v.baseAddress, &n, nil)
                          : bpf_map_lookup_batch(fd, &position, &next, k.baseAddress, v.baseAddress, &n, nil)
                }
            }
            let err = rc < 0 ? Glibc.errno : 0
            if n > 0 { chunks.append((Array(keys[..<(Int(n) * keySize)]), Array(values[..<(Int(n) * stride)]), Int(n))) }
            total += Int(n)
            if rc < 0 {
                guard err == ENOENT else { return false }
                break
            }
            position = next
            first = false
            if total > maxEntries * 2 { return false } // a map rewritten under us: walk instead
        }
        for c in chunks {
            c.keys.withUnsafeBytes { k in c.values.withUnsafeBytes { v in body(k, v, c.n) } }
        }
        return true
    }

    /// Pins the map at `path`, replacing whatever was pinned there.
    public func pin(at path: String) throws {
        unlink(path)
        try check("pin map \(name) at \(path)", bpf_obj_pin(fd, path))
    }
}

/// A zero-filled value of a C struct type, for out-parameters.
@inline(__always)
func unsafeBitCastZero<T: BitwiseCopyable>(_: T.Type) -> T {
    withUnsafeTemporaryAllocation(of: T.self, capacity: 1) { p in
        UnsafeMutableRawPointer(p.baseAddress!).initializeMemory(as: UInt8.self, repeating: 0, count: MemoryLayout<T>.size)
        return p[0]
    }
}

extension BPFMap {
    /// Update with raw key/value bytes (sizes checked against the map).
    public func updateRaw(_ key: [UInt8], _ value: [UInt8]) throws {
        guard key.count == keySize, value.count == valueSize else {
            throw DatapathError("update map \(name): raw key/value of \(key.count)/\(value.count) bytes", errno: EINVAL)
        }
        var k = key, v = value
        guard bpf_map_update_elem(fd, &k, &v, 0) == 0 else { throw DatapathError("update map \(name)", errno: Glibc.errno) }
    }

    /// Deletes `key`; returns false when it was not there.
    @discardableResult
    public func deleteRaw(_ key: [UInt8]) throws -> Bool {
        var k = key
        if bpf_map_delete_elem(fd, &k) == 0 { return true }
        if Glibc.errno == ENOENT { return false }
        throw DatapathError("delete from map \(name)", errno: Glibc.errno)
    }

    /// Every (key, value) as raw bytes; for non-per-CPU maps. Hash maps are read with
    /// batch lookups; others (the LPM tries) key by key.
    public func entriesRaw() throws -> [([UInt8], [UInt8])] {
        var out: [([UInt8], [UInt8])] = []
        if !isPerCPU, batchWalk({ keys, values, n in
            for i in 0..<n {
                out.append((Array(keys[(i * keySize)..<((i + 1) * keySize)]), Array(values[(i * valueSize)..<((i + 1) * valueSize)])))
            }
        }) {
            return out
        }
        out = []
        // An LPM trie's walk starts over when the trie changes under it (a publish or a
        // slot's catch-up writing the other slot): keep each key once.
        var seen = Set<[UInt8]>()
        var steps = 0
        var cur = [UInt8](repeating: 0, count: keySize)
        var next = [UInt8](repeating: 0, count: keySize)
        var rc = bpf_map_get_next_key(fd, nil, &next)
        while rc == 0 {
            var value = [UInt8](repeating: 0, count: valueSize)
            if seen.insert(next).inserted, bpf_map_lookup_elem(fd, &next, &value) == 0 { out.append((next, value)) }
            swap(&cur, &next)
            rc = bpf_map_get_next_key(fd, &cur, &next)
            steps += 1
            if steps > maxEntries * 4 { break } // rewritten under us again and again: stop, never spin
        }
        return out
    }
}
