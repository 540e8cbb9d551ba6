import CBPF
import Dispatch
import Glibc

/// Knows when every BPF program that was running at the last revision flip has finished:
/// one RCU grace period after it. A policy publish waits for that before it rewrites the
/// inactive revision slot, which programs that started before the flip may still read.
///
/// libbpf has no call for this, and the kernel offers it only as a side effect: updating
/// a map-in-map from userspace waits for a grace period before it returns, so that the
/// caller knows no program still sees the old inner map (kernel/bpf/syscall.c,
/// maybe_wait_bpf_programs). This is a one-entry array of maps that no program reads,
/// written only for that wait. It is meshd's own and not pinned.
final class GracePeriod: @unchecked Sendable { // the fds never change; `passed` is a semaphore
    private let outer: Int32
    private let inner: Int32
    /// Signalled once the grace period after the last flip has passed.
    private let passed = DispatchSemaphore(value: 1)
    /// Not Swift's cooperative pool: the update blocks for the whole grace period.
    private let queue = DispatchQueue(label: "swiftmesh.grace-period")

    init() throws {
        inner = bpf_map_create(BPF_MAP_TYPE_ARRAY, "mesh_grace_in", 4, 4, 1, nil)
        guard inner >= 0 else { throw DatapathError("create the grace-period map", errno: -inner) }
        var opts = bpf_map_create_opts()
        opts.sz = MemoryLayout<bpf_map_create_opts>.size
        opts.inner_map_fd = UInt32(inner)
        let fd = bpf_map_create(BPF_MAP_TYPE_ARRAY_OF_MAPS, "mesh_grace", 4, 4, 1, &opts)
        guard fd >= 0 else {
            Glibc.close(inner)
            throw DatapathError("create the grace-period map", errno: -fd)
        }
        outer = fd
    }

    deinit { // never while a background wait runs: it holds a reference
        Glibc.close(outer)
        Glibc.close(inner)
    }

    /// Blocks until one RCU grace period has passed.
    func wait() throws {
        var key: UInt32 = 0
        var value = UInt32(inner)
        guard bpf_map_update_elem(outer, &key, &value, 0) == 0 else {
            throw DatapathError("wait for running BPF programs (map-in-map update)", errno: Glibc.errno)
        }
    }

    /// Called right after a flip (callers serialise flips): starts waiting in the background.
    func flipped() {
        passed.wait()
        queue.async { [self] in
            // Should the kernel refuse the update (no memory), a tenth of a second is
            // still many thousand times what any of these programs runs for.
            if (try? wait()) == nil { usleep(100_000) }
            passed.signal()
        }
    }

    /// Blocks until the grace period after the last flip has passed.
    func waitForLastFlip() {
        passed.wait()
        passed.signal()
    }
}
