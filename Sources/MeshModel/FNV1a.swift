/// FNV-1a, 32 bits: a stable hash of a name, the same in every process and release (Swift's
/// own `Hasher` is seeded per process). Node ids in events, veth name tags, policy ids and
/// remote backend ids are all derived from it.
public enum FNV1a {
    public static func hash32(_ text: String) -> UInt32 {
        text.utf8.reduce(UInt32(2_166_136_261)) { ($0 ^ UInt32($1)) &* 16_777_619 }
    }
}
