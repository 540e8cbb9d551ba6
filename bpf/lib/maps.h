/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Every map of the node's datapath. All are pinned by name under the node's bpffs folder,
 * so a restarted meshd re-uses them and their contents. */
#ifndef SWIFTMESH_LIB_MAPS_H
#define SWIFTMESH_LIB_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "mesh_abi.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MESH_MAX_ENDPOINTS);
	__type(key, struct mesh_endpoint_key);
	__type(value, struct mesh_endpoint_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mesh_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MESH_MAX_ENDPOINTS);
	__type(key, __u32); /* IPv4 address, network order */
	__type(value, struct mesh_local_endpoint);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mesh_local_ep SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MESH_MAX_ENDPOINTS * MESH_DIR_MAX);
	__type(key, struct mesh_traffic_key);
	__type(value, struct mesh_traffic_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mesh_traffic SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, MESH_EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mesh_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MESH_IPCACHE_ENTRIES);
	__type(key, struct mesh_ipcache_key);
	__type(value, struct mesh_ipcache_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mesh_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MESH_POLICY_ENTRIES);
	__type(key, struct mesh_policy_key);
	__type(value, struct mesh_policy_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mesh_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MESH_MAX_ENDPOINTS * 2);
	__type(key, struct mesh_policy_ep_key);
	__type(value, struct mesh_policy_ep_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mesh_policy_ep SEC(".maps");

/* mmapable: meshd stores the revision with one atomic 32-bit write (see mesh_abi.h). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mesh_revision SEC(".maps");

/* One LRU list for all CPUs: with a list per CPU each CPU could use only its share of the
 * table, and a CPU busy with new flows would evict the flows it happens to hold. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MESH_CT_ENTRIES);
	__type(key, struct mesh_ct_key);
	__type(value, struct mesh_ct_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mesh_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MESH_DROP_MAX * MESH_DIR_MAX);
	__type(key, struct mesh_drop_key);
	__type(value, struct mesh_counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mesh_drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MESH_VERDICT_ENTRIES);
	__type(key, struct mesh_verdict_key);
	__type(value, struct mesh_counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mesh_verdicts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, MESH_SOCKHASH_ENTRIES);
	__type(key, struct mesh_sock_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mesh_sockhash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MESH_SOCKHASH_ENTRIES);
	__type(key, struct mesh_sock_key);
	__type(value, struct mesh_sock_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mesh_sock_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mesh_redirect_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mesh_redir_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MESH_REDIR_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mesh_redir_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mesh_monitor_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mesh_monitor SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MESH_CT_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mesh_ct_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MESH_FRAG_ENTRIES);
	__type(key, struct mesh_frag_key);
	__type(value, struct mesh_frag_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mesh_frags SEC(".maps");

/* Adds one packet of `len` bytes to a per-CPU counter, creating it on first use. */
static __always_inline void counter_add(void *map, const void *key, __u32 len)
{
	struct mesh_counter *c = bpf_map_lookup_elem(map, key);

	if (!c) {
		struct mesh_counter init = {};

		/* NOEXIST: another CPU may have created it first; then look it up again. */
		bpf_map_update_elem(map, key, &init, BPF_NOEXIST);
		c = bpf_map_lookup_elem(map, key);
		if (!c)
			return; /* map full: visible as map pressure, never a drop */
	}
	c->packets += 1;
	c->bytes += len;
}

/* Adds `n` to entry `idx` of a per-CPU array of __u64 counters (this CPU's copy). */
static __always_inline void percpu_array_add(void *map, __u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(map, &idx);

	if (v)
		*v += n;
}

/* An endpoint's traffic counters: `len` bytes in one packet (one message, for bytes that
 * socket redirection carried). */
static __always_inline void count_traffic(__u32 ep, __u8 dir, __u32 len)
{
	struct mesh_traffic_key tk = { .endpoint_id = ep, .direction = dir };

	counter_add(&mesh_traffic, &tk, len);
}

#endif
