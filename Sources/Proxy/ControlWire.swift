import Foundation
import MeshModel
import NIOCore

/// The control socket's framing: one ProxyControlMessage as compact JSON per line.
enum ControlWire {
    static func encode(_ message: ProxyControlMessage, allocator: ByteBufferAllocator) -> ByteBuffer? {
        guard var data = try? JSONEncoder().encode(message) else { return nil }
        data.append(UInt8(ascii: "\n"))
        return allocator.buffer(bytes: data)
    }

    static func decode(_ line: ByteBuffer) throws -> ProxyControlMessage {
        try JSONDecoder().decode(ProxyControlMessage.self, from: Data(line.readableBytesView))
    }
}
