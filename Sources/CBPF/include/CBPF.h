/*
 * CBPF: libbpf and SwiftMesh's kernel/userspace ABI (bpf/include/mesh_abi.h) as one C
 * module. Only the Datapath module imports it. The cbpf_* shims wrap what Swift cannot
 * call directly: libbpf's option macros (LIBBPF_OPTS) and its variadic print callback.
 */
#ifndef SWIFTMESH_CBPF_H
#define SWIFTMESH_CBPF_H

#include <stddef.h>
#include <stdint.h>
#include <sys/statfs.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/pkt_cls.h> /* TC_ACT_*: what a tc program returns */

#include "MeshABI.h"

/* Route libbpf's warnings (and the verifier log it prints on a failed load) into a
 * buffer that cbpf_log_take() drains, so errors can carry libbpf's own words. */
void cbpf_log_capture_start(void);
/* Returns a malloc'd, NUL-terminated copy of what was captured (caller frees). */
char *cbpf_log_take(void);

/* bpf_object__open_mem with an object name and a pin root for LIBBPF_PIN_BY_NAME maps. */
struct bpf_object *cbpf_open_mem(const void *buf, size_t len, const char *name,
				 const char *pin_root);

/* Before load: removes the pin of every LIBBPF_PIN_BY_NAME map whose pinned map no longer
 * matches what the object declares (type, key or value size, entries, flags), so that
 * load creates it anew instead of failing; a map whose layout changed between versions
 * cannot be reused. Appends "name: what differs" lines to report (NUL-terminated, cut at
 * report_len). Returns how many pins were removed, or -errno. */
int cbpf_unpin_incompatible(struct bpf_object *obj, char *report, size_t report_len);

/* Sets a `const volatile` global of the object's .rodata between open and load.
 * Returns 0, -ENOENT when there is no such variable, -EINVAL on a size mismatch. */
int cbpf_set_rodata(struct bpf_object *obj, const char *var, const void *value, size_t size);

/* Attaches prog_fd as a direct-action tc filter at (handle, priority) on the clsact hook
 * of ifindex, creating the hook when missing and atomically replacing an existing filter
 * at the same place. ingress != 0 selects the ingress hook. Returns 0 or -errno. */
int cbpf_tc_attach(int ifindex, int ingress, int prog_fd, uint32_t handle, uint32_t priority);
/* Removes that filter. Returns 0 or -errno (-ENOENT when nothing is there). */
int cbpf_tc_detach(int ifindex, int ingress, uint32_t handle, uint32_t priority);
/* Returns the id of the program at that place (>0), or -errno. */
int64_t cbpf_tc_query(int ifindex, int ingress, uint32_t handle, uint32_t priority);

/* Runs a tc program once on `data` with BPF_PROG_TEST_RUN. ctx_in/ctx_out are
 * struct __sk_buff (ifindex, mark, cb[] travel in and out). Returns 0 or -errno. */
int cbpf_test_run_skb(int prog_fd, const void *data, uint32_t len, struct __sk_buff *ctx_in,
		      struct __sk_buff *ctx_out, uint32_t *retval);

/* The revision word (mesh_revision, mmapped): one 32-bit store and load, whole on every
 * CPU. Swift has no atomics of its own without a package; C11's builtins are these. */
static inline void cbpf_store_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
static inline uint32_t cbpf_load_u32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }

/* MESH_SLOT_OF for Swift, which imports no function-like macro. */
static inline uint8_t cbpf_slot_of(uint32_t revision) { return MESH_SLOT_OF(revision); }

#endif
