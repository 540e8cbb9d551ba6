/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* L4 policy lookups: ipcache (address -> identity) and the policy map. */
#ifndef SWIFTMESH_LIB_POLICY_H
#define SWIFTMESH_LIB_POLICY_H

#include "maps.h"

struct verdict {
	__u8 action;    /* enum mesh_policy_action */
	__u8 reason;    /* enum mesh_drop_reason */
	__u8 enforced;  /* the direction is enforced for this endpoint */
	__u8 l7;        /* allowed, through the L7 proxy (MESH_POLICY_L7) */
	__u8 auth;      /* allowed for a proven peer only (MESH_POLICY_AUTH) */
	__u8 pad[3];
	__u32 rule_id;
	__u32 policy_id;
};

/* The revision in force, read once per program run (see mesh_abi.h): its slot is
 * MESH_SLOT_OF(revision), and whatever the run records is tagged with it. */
static __always_inline __u32 policy_revision(void)
{
	__u32 zero = 0;
	__u32 *revision = bpf_map_lookup_elem(&mesh_revision, &zero);

	return revision ? *(volatile __u32 *)revision : 0;
}

static __always_inline struct mesh_ipcache_value *ipcache_lookup(__u8 slot, __u32 addr)
{
	struct mesh_ipcache_key k = { .prefixlen = 8 + 32, .slot = slot };

	__builtin_memcpy(k.addr, &addr, 4);
	return bpf_map_lookup_elem(&mesh_ipcache, &k);
}

static __always_inline __u32 identity_of(__u8 slot, __u32 addr)
{
	struct mesh_ipcache_value *v = ipcache_lookup(slot, addr);

	return v ? v->identity : MESH_ID_WORLD;
}

/* A label set's identity (an endpoint's, of this node or another), not a reserved or a
 * CIDR one. */
static __always_inline int is_endpoint_identity(__u32 identity)
{
	return identity >= MESH_ID_FIRST_ENDPOINT && identity < MESH_ID_FIRST_CIDR;
}

static __always_inline struct mesh_policy_value *
policy_lookup(__u8 slot, __u8 dir, __u32 ep, __u32 identity, __u8 proto, __u16 dport)
{
	struct mesh_policy_key k = {
		.prefixlen = MESH_POLICY_FIXED_BITS + 8 + 8 + 16,
		.slot = slot,
		.direction = dir,
		.endpoint_id = ep,
		.identity = identity,
		.proto = proto,
		.dport = bpf_htons(dport),
	};
	return bpf_map_lookup_elem(&mesh_policy, &k);
}

/*
 * The verdict for a new flow of endpoint `ep` in direction `dir` with peer `identity`.
 * Two lookups: the peer's own entries and the any-peer entries. meshd writes each lookup's
 * entries so that the longest match already has deny-over-allow applied within it; across
 * the two, a deny in either wins.
 */
static __always_inline struct verdict
policy_decide(__u8 slot, __u8 dir, __u32 ep, __u32 identity, __u8 proto, __u16 dport)
{
	struct mesh_policy_ep_key ek = { .endpoint_id = ep, .slot = slot };
	struct mesh_policy_ep_value *ev = bpf_map_lookup_elem(&mesh_policy_ep, &ek);
	struct verdict v = { .action = MESH_ACTION_ALLOW };
	struct mesh_policy_value *a, *b;

	if (!ev || dir >= MESH_DIR_MAX || !ev->enforce[dir])
		return v;
	v.enforced = 1;
	a = policy_lookup(slot, dir, ep, identity, proto, dport);
	b = policy_lookup(slot, dir, ep, MESH_ID_ANY, proto, dport);
	if (a && a->action == MESH_ACTION_DENY) {
		v.action = MESH_ACTION_DENY;
		v.reason = MESH_DROP_POLICY_DENY;
		v.rule_id = a->rule_id;
		v.policy_id = a->policy_id;
	} else if (b && b->action == MESH_ACTION_DENY) {
		v.action = MESH_ACTION_DENY;
		v.reason = MESH_DROP_POLICY_DENY;
		v.rule_id = b->rule_id;
		v.policy_id = b->policy_id;
	} else if (a && a->action == MESH_ACTION_ALLOW) {
		v.rule_id = a->rule_id;
		v.policy_id = a->policy_id;
		/* An L4 allow in either lookup opens the port to every request (as in Cilium). */
		v.l7 = (a->flags & MESH_POLICY_L7) && (!b || b->action != MESH_ACTION_ALLOW || (b->flags & MESH_POLICY_L7));
		/* A requirement to authenticate, in either lookup, stands. */
		v.auth = (a->flags & MESH_POLICY_AUTH) || (b && b->action == MESH_ACTION_ALLOW && (b->flags & MESH_POLICY_AUTH));
	} else if (b && b->action == MESH_ACTION_ALLOW) {
		v.rule_id = b->rule_id;
		v.policy_id = b->policy_id;
		v.l7 = (b->flags & MESH_POLICY_L7) ? 1 : 0;
		v.auth = (b->flags & MESH_POLICY_AUTH) ? 1 : 0;
	} else {
		v.action = MESH_ACTION_DENY;
		v.reason = MESH_DROP_POLICY_DEFAULT_DENY;
		v.rule_id = ev->default_rule_id[dir & 1];
		v.policy_id = 0;
	}
	return v;
}

#endif
