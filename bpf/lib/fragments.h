/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* IPv4 fragments: later fragments take the ports of their datagram's first one. */
#ifndef SWIFTMESH_LIB_FRAGMENTS_H
#define SWIFTMESH_LIB_FRAGMENTS_H

#include "maps.h"
#include "packet.h"

/*
 * A first fragment records its ports; a later one takes them, so it is decided and
 * conntracked as a packet of the same flow. A later fragment whose first one was never
 * seen here (reordered, or sent elsewhere) keeps ports 0: port-specific rules do not
 * match it, as no rule could know its ports.
 */
static __always_inline void fragment_ports(struct flow *f)
{
	struct mesh_frag_key k = { .saddr = f->saddr, .daddr = f->daddr, .id = f->ip_id, .proto = f->proto };
	struct mesh_frag_value *v;

	if (f->frag == FLOW_FIRST_FRAG) {
		struct mesh_frag_value nv = { .sport = f->sport, .dport = f->dport };

		bpf_map_update_elem(&mesh_frags, &k, &nv, BPF_ANY);
	} else if (f->frag == FLOW_LATER_FRAG) {
		v = bpf_map_lookup_elem(&mesh_frags, &k);
		if (v) {
			f->sport = v->sport;
			f->dport = v->dport;
		}
	}
}

#endif
