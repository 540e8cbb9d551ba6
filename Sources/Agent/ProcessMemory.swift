/// Keeps meshd's resident memory close to what it uses. glibc's allocator gives each busy
/// thread its own arena and keeps freed pages; a daemon that lives for months and sees
/// bursts (a large policy apply) should not hold on to them. Swift's Glibc module does
/// not import malloc.h's tuning calls, hence the two bindings below.
public enum ProcessMemory {
    /// At most two malloc arenas (M_ARENA_MAX). Call first thing in main.
    public static func limitArenas() { _ = mallopt(-8 /* M_ARENA_MAX */, 2) }

    /// Returns free heap pages to the system after an allocation burst.
    static func trim() { _ = malloc_trim(0) }
}

@_silgen_name("mallopt")
private func mallopt(_ param: Int32, _ value: Int32) -> Int32

@_silgen_name("malloc_trim")
private func malloc_trim(_ pad: Int) -> Int32
