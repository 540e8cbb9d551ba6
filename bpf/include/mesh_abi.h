/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The one definition of everything the kernel programs and meshd both read:
 * map keys and values, enums and ring-buffer event layouts. The .bpf.c programs include it
 * directly; Swift imports it through the CBPF module. Never mirror these by hand.
 *
 * Layout rules: fixed-width types only, explicit padding, no bitfields, so that the
 * BPF target and the host compiler agree byte for byte.
 */
#ifndef SWIFTMESH_MESH_ABI_H
#define SWIFTMESH_MESH_ABI_H

#include <linux/types.h>

/* Map names; meshd pins each under <bpffs>/<node>/<name>. */
#define MESH_MAP_ENDPOINTS "mesh_endpoints"
#define MESH_MAP_TRAFFIC "mesh_traffic"
#define MESH_MAP_EVENTS "mesh_events"

/* Default capacities; meshd may resize before load with --max-endpoints. */
#define MESH_MAX_ENDPOINTS 1024
#define MESH_EVENTS_BYTES (256 * 1024)

/* Direction as seen by the endpoint (the workload), not by the host-side veth. */
enum mesh_direction {
	MESH_DIR_INGRESS = 0, /* towards the endpoint: tc egress of the host-side veth */
	MESH_DIR_EGRESS = 1,  /* from the endpoint: tc ingress of the host-side veth */
	MESH_DIR_MAX = 2,
};

/* mesh_endpoints: host-side veth ifindex -> endpoint. Written by meshd only. */
struct mesh_endpoint_key {
	__u32 ifindex;
};

struct mesh_endpoint_info {
	__u32 endpoint_id; /* stable id from meshd's store, never reused while pinned */
	__u32 ipv4;        /* endpoint address, network byte order */
	__u32 flags;       /* reserved for policy and redirect modes */
	__u32 pad;
};

/* mesh_traffic (per-CPU): per endpoint and direction, summed by meshd at read time. */
struct mesh_traffic_key {
	__u32 endpoint_id;
	__u8 direction; /* enum mesh_direction */
	__u8 pad[3];
};

struct mesh_traffic_value {
	__u64 packets;
	__u64 bytes;
};

/* Ring-buffer events (mesh_events). Every event starts with this header. */
enum mesh_event_type {
	/* A packet crossed a veth whose ifindex has no mesh_endpoints entry: the map and
	 * the attached programs have drifted apart (meshd repairs it on reconcile). */
	MESH_EVENT_UNKNOWN_INTERFACE = 1,
};

struct mesh_event_header {
	__u16 type;      /* enum mesh_event_type */
	__u16 len;       /* bytes of the whole event, header included */
	__u32 node_id;   /* cfg_node_id of the program that emitted it */
	__u64 timestamp; /* bpf_ktime_get_ns() */
};

struct mesh_event_unknown_interface {
	struct mesh_event_header hdr;
	__u32 ifindex;
	__u8 direction; /* enum mesh_direction */
	__u8 pad[3];
};

#endif /* SWIFTMESH_MESH_ABI_H */
