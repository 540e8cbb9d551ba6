// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tc programs on each endpoint's host-side veth. Today they attribute every packet to
 * its endpoint and count it per direction; L4 policy will sit here (DESIGN.md).
 * Both always pass the packet: counting must never change forwarding.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "mesh_abi.h"

/* Set by meshd between open and load; never a recompile. */
const volatile __u32 cfg_node_id = 0;
const volatile __u8 cfg_report_unknown = 1;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MESH_MAX_ENDPOINTS);
	__type(key, struct mesh_endpoint_key);
	__type(value, struct mesh_endpoint_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mesh_endpoints SEC(".maps");

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

static __always_inline void report_unknown(__u32 ifindex, __u8 direction)
{
	struct mesh_event_unknown_interface *ev;

	if (!cfg_report_unknown)
		return;
	ev = bpf_ringbuf_reserve(&mesh_events, sizeof(*ev), 0);
	if (!ev)
		return; /* ring full: the reader is behind; losing a report is fine */
	ev->hdr.type = MESH_EVENT_UNKNOWN_INTERFACE;
	ev->hdr.len = sizeof(*ev);
	ev->hdr.node_id = cfg_node_id;
	ev->hdr.timestamp = bpf_ktime_get_ns();
	ev->ifindex = ifindex;
	ev->direction = direction;
	ev->pad[0] = ev->pad[1] = ev->pad[2] = 0;
	bpf_ringbuf_submit(ev, 0);
}

static __always_inline void count(struct __sk_buff *skb, __u8 direction)
{
	struct mesh_endpoint_key ek = { .ifindex = skb->ifindex };
	struct mesh_endpoint_info *ep;
	struct mesh_traffic_key tk = {};
	struct mesh_traffic_value *tv;

	ep = bpf_map_lookup_elem(&mesh_endpoints, &ek);
	if (!ep) {
		report_unknown(skb->ifindex, direction);
		return;
	}
	tk.endpoint_id = ep->endpoint_id;
	tk.direction = direction;
	tv = bpf_map_lookup_elem(&mesh_traffic, &tk);
	if (!tv) {
		struct mesh_traffic_value init = {};

		/* NOEXIST: another CPU may have created it first; then look it up again. */
		bpf_map_update_elem(&mesh_traffic, &tk, &init, BPF_NOEXIST);
		tv = bpf_map_lookup_elem(&mesh_traffic, &tk);
		if (!tv)
			return; /* map full: counted in map pressure, never a drop */
	}
	/* Per-CPU value: no atomics needed. */
	tv->packets += 1;
	tv->bytes += skb->len;
}

/* tc ingress of the host-side veth: packets leaving the endpoint. */
SEC("tc")
int mesh_from_endpoint(struct __sk_buff *skb)
{
	count(skb, MESH_DIR_EGRESS);
	return TC_ACT_OK;
}

/* tc egress of the host-side veth: packets entering the endpoint. */
SEC("tc")
int mesh_to_endpoint(struct __sk_buff *skb)
{
	count(skb, MESH_DIR_INGRESS);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
