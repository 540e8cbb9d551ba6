/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Ring-buffer events shared by the tc and sk_msg programs. */
#ifndef SWIFTMESH_LIB_EVENTS_H
#define SWIFTMESH_LIB_EVENTS_H

#include "maps.h"
#include "policy.h"

/* The header every event starts with. */
static __always_inline void event_header(struct mesh_event_header *hdr, __u16 type, __u16 len, __u32 node_id)
{
	hdr->type = type;
	hdr->len = len;
	hdr->node_id = node_id;
	hdr->timestamp = bpf_ktime_get_ns();
}

/* A drop or a new-flow verdict. Addresses in network order, ports in host order. A full
 * ring means the reader is behind; losing an event never changes a verdict. */
static __always_inline void report_policy(__u16 type, __u32 node_id, __u32 ep, __u32 peer, __u32 saddr, __u32 daddr,
					  __u16 sport, __u16 dport, __u8 proto, __u8 dir, const struct verdict *v,
					  __u32 revision)
{
	struct mesh_event_policy *ev = bpf_ringbuf_reserve(&mesh_events, sizeof(*ev), 0);

	if (!ev)
		return;
	event_header(&ev->hdr, type, sizeof(*ev), node_id);
	ev->endpoint_id = ep;
	ev->peer_identity = peer;
	ev->saddr = saddr;
	ev->daddr = daddr;
	ev->sport = sport;
	ev->dport = dport;
	ev->proto = proto;
	ev->direction = dir;
	ev->action = v->action;
	ev->reason = v->reason;
	ev->rule_id = v->rule_id;
	ev->revision = revision;
	ev->flags = v->l7 ? MESH_EVENT_F_PROXY : 0;
	bpf_ringbuf_submit(ev, 0);
}

#endif
