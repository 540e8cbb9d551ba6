/// An IPv4 address held as a host-order integer.
public struct IPv4Address: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    public let value: UInt32

    public init(_ value: UInt32) { self.value = value }

    /// Parses dotted-quad text strictly: four decimal octets, no leading zeros, nothing else.
    /// Over the UTF-8 bytes: the proxy reads a thousand of these with every configuration.
    public init?(_ text: String) { self.init(utf8: text.utf8) }

    /// The same, from UTF-8 bytes (a part of a longer text, say).
    public init?<Bytes: Sequence>(utf8 bytes: Bytes) where Bytes.Element == UInt8 {
        var v: UInt32 = 0, octet: UInt32 = 0, digits = 0, dots = 0
        for b in bytes {
            if b == UInt8(ascii: ".") {
                guard digits > 0, dots < 3 else { return nil }
                v = v << 8 | octet
                octet = 0
                digits = 0
                dots += 1
            } else if b >= UInt8(ascii: "0"), b <= UInt8(ascii: "9") {
                // A leading zero: "0" is an octet, "01" is not.
                guard !(digits == 1 && octet == 0) else { return nil }
                octet = octet * 10 + UInt32(b - UInt8(ascii: "0"))
                digits += 1
                guard octet <= 255 else { return nil }
            } else {
                return nil
            }
        }
        guard dots == 3, digits > 0 else { return nil }
        value = v << 8 | octet
    }

    public var description: String {
        "\(value >> 24).\(value >> 16 & 0xff).\(value >> 8 & 0xff).\(value & 0xff)"
    }

    /// The address in network byte order, as the BPF maps store it.
    public var networkOrder: UInt32 { value.bigEndian }

    public static func < (a: IPv4Address, b: IPv4Address) -> Bool { a.value < b.value }

    public init(from decoder: Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let a = IPv4Address(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "\"\(text)\" is not an IPv4 address"))
        }
        self = a
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

/// An IPv4 prefix such as `10.200.0.0/24`; the address must be the network address.
public struct IPv4CIDR: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    public let network: IPv4Address
    public let prefixLength: Int

    public init(parsing text: String) throws(MeshError) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let addr = IPv4Address(String(parts[0])),
              let len = Int(parts[1]), String(len) == parts[1], (0...32).contains(len) else {
            throw .invalid("\"\(text)\" is not an IPv4 CIDR", hint: "for example 10.200.0.0/24")
        }
        let mask: UInt32 = len == 0 ? 0 : ~UInt32(0) << (32 - len)
        guard addr.value & ~mask == 0 else {
            throw .invalid("\"\(text)\" has host bits set; did you mean \(IPv4Address(addr.value & mask))/\(len)?")
        }
        network = addr
        prefixLength = len
    }

    /// By network address, then prefix length: the order of the ipcache (the prefixes
    /// inside a CIDR follow it as one run).
    public static func < (a: IPv4CIDR, b: IPv4CIDR) -> Bool { (a.network, a.prefixLength) < (b.network, b.prefixLength) }

    /// `network`/`prefixLength` when the length is 0...32 and no host bit is set.
    public init?(network: IPv4Address, prefixLength: Int) {
        guard (0...32).contains(prefixLength), network.value & ~Self.mask(bits: prefixLength) == 0 else { return nil }
        self.network = network
        self.prefixLength = prefixLength
    }

    /// The /32 of one address.
    public init(host: IPv4Address) {
        network = host
        prefixLength = 32
    }

    public var mask: UInt32 { Self.mask(bits: prefixLength) }

    /// The netmask of a prefix length (0...32).
    public static func mask(bits: Int) -> UInt32 { bits == 0 ? 0 : ~UInt32(0) << (32 - bits) }
    public var broadcast: IPv4Address { IPv4Address(network.value | ~mask) }
    public var description: String { "\(network)/\(prefixLength)" }

    public func contains(_ a: IPv4Address) -> Bool { a.value & mask == network.value }

    /// Whether the two share an address (prefixes either nest or are disjoint).
    public func overlaps(_ other: IPv4CIDR) -> Bool { contains(other.network) || other.contains(network) }

    /// Addresses that can be handed to endpoints: all but the network and broadcast
    /// addresses (a /31 or /32 has none to spare and so none to hand out).
    public var assignableCount: Int {
        prefixLength >= 31 ? 0 : (1 << (32 - prefixLength)) - 2
    }

    /// The lowest assignable address not in `used`, or nil when the prefix is exhausted.
    public func firstFree(excluding used: Set<IPv4Address>) -> IPv4Address? {
        guard assignableCount > 0 else { return nil }
        var v = network.value + 1
        while v < broadcast.value {
            let a = IPv4Address(v)
            if !used.contains(a) { return a }
            v += 1
        }
        return nil
    }

    public init(from decoder: Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        do { self = try IPv4CIDR(parsing: text) } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: error.message))
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}
