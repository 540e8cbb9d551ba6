/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* SwiftMesh's own connection tracking: enough state to let replies of allowed flows pass
 * and to re-check established flows when the policy revision changes. */
#ifndef SWIFTMESH_LIB_CONNTRACK_H
#define SWIFTMESH_LIB_CONNTRACK_H

#include "maps.h"
#include "packet.h"

static __always_inline int ct_expired(const struct mesh_ct_value *v, __u8 proto, __u64 now)
{
	__u64 life = v->closing ? MESH_CT_CLOSING_LIFETIME_S :
		     proto == IPPROTO_TCP ? MESH_CT_TCP_LIFETIME_S : MESH_CT_OTHER_LIFETIME_S;
	return now - v->last_seen > life * 1000000000ULL;
}

static __always_inline void ct_key(struct mesh_ct_key *k, __u32 ep, const struct flow *f, __u8 dir, int reverse)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->endpoint_id = ep;
	k->proto = f->proto;
	k->direction = dir;
	if (!reverse) {
		k->saddr = f->saddr;
		k->daddr = f->daddr;
		k->sport = f->sport;
		k->dport = f->dport;
	} else {
		k->saddr = f->daddr;
		k->daddr = f->saddr;
		k->sport = f->dport;
		k->dport = f->sport;
	}
}

#endif
