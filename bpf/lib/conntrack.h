/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* SwiftMesh's own connection tracking: enough state to let replies of allowed flows pass
 * and to re-check established flows when the policy revision changes. */
#ifndef SWIFTMESH_LIB_CONNTRACK_H
#define SWIFTMESH_LIB_CONNTRACK_H

#include "maps.h"
#include "packet.h"

/* How stale an entry's last_seen may be: a packet refreshes it only when it is older. An
 * entry so expires up to this much before its lifetime (mesh_ct_lifetime_s, 10 s at the
 * least) after its flow's last packet, and `meshctl` shows its idle time to this much. */
#define MESH_CT_REFRESH_NS 1000000000ULL

static __always_inline int ct_expired(const struct mesh_ct_value *v, __u8 proto, __u64 now)
{
	__u64 life = mesh_ct_lifetime_s(proto, v->closing, v->seen_reply);

	return now - v->last_seen > life * 1000000000ULL;
}

static __always_inline void ct_stat_add(__u32 stat)
{
	percpu_array_add(&mesh_ct_stats, stat, 1);
}

/*
 * Inserts a new flow's entry, counting it as created, or writes it over the entry already
 * there (a new SYN on the tuple of a closing connection, or an entry that expired but was
 * not collected yet). A client that connects often reuses its ports while their entries
 * still close (at 15,000 connections/s a port comes back within two seconds), and an LRU
 * map's update, even of a key it has, takes a free element, locks the bucket and frees the
 * old one: about 1 us a flow on this VM. Written in place, a packet of the old connection
 * that another CPU handles at that very moment may see some fields of each; it belongs to
 * the same tuple, which the new connection now owns, as it would after a swap. A race
 * between the lookup and the update (the other CPU creating the same tuple) can only
 * miscount one.
 */
static __always_inline void ct_create(const struct mesh_ct_key *k, const struct mesh_ct_value *v)
{
	struct mesh_ct_value *old = bpf_map_lookup_elem(&mesh_ct, k);

	if (old) {
		*old = *v;
		return;
	}
	if (bpf_map_update_elem(&mesh_ct, k, v, BPF_ANY) == 0)
		ct_stat_add(MESH_CT_STAT_CREATED);
}

static __always_inline void ct_remove(const struct mesh_ct_key *k)
{
	if (bpf_map_delete_elem(&mesh_ct, k) == 0)
		ct_stat_add(MESH_CT_STAT_REMOVED);
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

/*
 * An ICMP error travelling in `dir` at endpoint `ep` is about a packet that travelled the
 * other way: one of a flow `ep` tracks, either as that flow's original direction or as
 * its reply. Returns 1 when such a flow is tracked under the revision in force, and the
 * error goes back to where the quoted packet came from: then it belongs to the flow (path
 * MTU discovery, a port unreachable) and passes like the flow's own packets. Anything
 * else is decided by policy as a new flow: an error addressed elsewhere would otherwise
 * carry data past egress policy, and a flow a newer revision denies is re-checked by its
 * own next packet first.
 */
static __always_inline int ct_related(__u32 ep, __u8 dir, const struct flow *f, __u32 revision, __u64 now)
{
	struct flow quoted = {
		.saddr = f->inner_saddr,
		.daddr = f->inner_daddr,
		.sport = f->inner_sport,
		.dport = f->inner_dport,
		.proto = f->inner_proto,
	};
	struct mesh_ct_key k;
	struct mesh_ct_value *ct;

	if (f->daddr != f->inner_saddr)
		return 0;
	ct_key(&k, ep, &quoted, dir ^ 1, 0);
	ct = bpf_map_lookup_elem(&mesh_ct, &k);
	if (!ct) {
		ct_key(&k, ep, &quoted, dir, 1);
		ct = bpf_map_lookup_elem(&mesh_ct, &k);
	}
	return ct && !ct_expired(ct, quoted.proto, now) && ct->revision == revision;
}

#endif
