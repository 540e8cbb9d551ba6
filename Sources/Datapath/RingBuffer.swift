import CBPF
import Glibc

/// Reads records from a BPF ring buffer map. Each record is handed over as bytes; decode
/// it with the event structs of mesh_abi.h.
public final class RingBufferReader: @unchecked Sendable {
    private final class Sink {
        var records: [[UInt8]] = []
    }

    private var ring: OpaquePointer?
    private let sink = Sink()
    private let map: BPFMap

    public init(map: BPFMap) throws {
        guard map.type == BPF_MAP_TYPE_RINGBUF else {
            throw DatapathError("map \(map.name) is not a ring buffer", errno: EINVAL)
        }
        self.map = map
        let ctx = Unmanaged.passUnretained(sink).toOpaque()
        let rb = ring_buffer__new(map.fd, { ctx, data, size in
            let sink = Unmanaged<Sink>.fromOpaque(ctx!).takeUnretainedValue()
            sink.records.append([UInt8](UnsafeRawBufferPointer(start: data, count: size)))
            return 0
        }, ctx, nil)
        guard let rb else { throw DatapathError("open ring buffer \(map.name)", errno: Glibc.errno) }
        ring = rb
    }

    deinit { if let ring { ring_buffer__free(ring) } }

    /// Waits up to `timeoutMilliseconds` for records and returns those that arrived.
    /// Not for concurrent use: one reader task owns it.
    public func poll(timeoutMilliseconds: Int32) throws -> [[UInt8]] {
        let rc = ring_buffer__poll(ring, timeoutMilliseconds)
        if rc < 0 && rc != -EINTR { throw DatapathError("poll ring buffer \(map.name)", errno: -rc) }
        defer { sink.records.removeAll(keepingCapacity: true) }
        return sink.records
    }
}
