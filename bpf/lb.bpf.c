// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Socket-level service load balancing (see mesh_abi.h), cgroup programs on the node's
 * cgroup, so every endpoint's processes run them:
 *
 *   mesh_lb_connect4      connect() to a VIP:port (TCP, or UDP that connects): pick a
 *                         backend and connect to it instead; no backend: ECONNREFUSED
 *   mesh_lb_sendmsg4      the same for each unconnected UDP datagram
 *   mesh_lb_recvmsg4      a UDP reply from a backend the socket was sent to reads as
 *                         coming from the VIP
 *   mesh_lb_getpeername4  a connected socket's peer reads as the VIP
 *
 * The translation happens once per connection, before any packet exists: nothing is
 * rewritten per packet, and the tc programs see, count and police the backend's address.
 * A frontend an HTTPRoute binds (MESH_LB_ROUTED) is the exception: its TCP connections
 * keep the VIP and go to the L7 proxy (endpoint.bpf.c).
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "mesh_abi.h"
#include "lib/maps.h"
#include "lib/lb_maps.h"
#include "lib/events.h"

#define ECONNREFUSED 111
#define NSEC_PER_SEC 1000000000ULL

const volatile __u32 cfg_node_id = 0;

/* Counts one decision; the entry is created on first use (another CPU may create it
 * first: then the second lookup finds it). */
static __always_inline void lb_count(__u32 frontend_id, __u32 backend_id, __u8 hook)
{
	struct mesh_lb_stat_key k = { .frontend_id = frontend_id, .backend_id = backend_id };
	struct mesh_lb_counter *c = bpf_map_lookup_elem(&mesh_lb_stats, &k);

	if (!c) {
		struct mesh_lb_counter init = {};

		bpf_map_update_elem(&mesh_lb_stats, &k, &init, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&mesh_lb_stats, &k);
		if (!c)
			return;
	}
	if (hook == MESH_LB_HOOK_CONNECT)
		c->connects += 1;
	else
		c->sends += 1;
}

static __always_inline void lb_report(struct bpf_sock_addr *ctx, const struct mesh_lb_frontend_key *fk,
				      const struct mesh_lb_frontend *fe, __u32 backend_id,
				      const struct mesh_lb_backend *be, __u8 hook, __u8 affinity)
{
	__u32 zero = 0;
	struct mesh_monitor_config *mon = bpf_map_lookup_elem(&mesh_monitor, &zero);
	struct mesh_event_lb *ev;

	if (!mon || !mon->lb_events)
		return;
	ev = bpf_ringbuf_reserve(&mesh_events, sizeof(*ev), 0);
	if (!ev)
		return;
	event_header(&ev->hdr, MESH_EVENT_LB, sizeof(*ev), cfg_node_id);
	ev->cgroup_id = bpf_get_current_cgroup_id();
	ev->vip = fk->vip;
	ev->vport = bpf_ntohs(fk->port);
	ev->backend_addr = be ? be->addr : 0;
	ev->backend_port = be ? bpf_ntohs(be->port) : 0;
	ev->frontend_id = fe->frontend_id;
	ev->backend_id = backend_id;
	ev->proto = fk->proto;
	ev->hook = hook;
	ev->affinity = affinity;
	ev->pad = 0;
	bpf_ringbuf_submit(ev, 0);
}

/* The backend an earlier connection of this client namespace got, while the frontend's
 * affinity timeout has not run out since and it is still one of the frontend's backends. */
static __always_inline const struct mesh_lb_backend *
affine_backend(const struct mesh_lb_affinity_key *ak, const struct mesh_lb_frontend *fe, __u64 now, __u32 *backend_id)
{
	struct mesh_lb_affinity *a = bpf_map_lookup_elem(&mesh_lb_aff, ak);
	struct mesh_lb_backend_key bk;

	if (!a || now - a->last_used > (__u64)fe->affinity_timeout_s * NSEC_PER_SEC)
		return NULL;
	bk.frontend_id = fe->frontend_id;
	bk.backend_id = a->backend_id;
	*backend_id = a->backend_id;
	return bpf_map_lookup_elem(&mesh_lb_be, &bk);
}

/* A backend chosen uniformly among slots 1..count. */
static __always_inline const struct mesh_lb_backend *pick_backend(const struct mesh_lb_frontend *fe, __u32 *backend_id)
{
	struct mesh_lb_slot_key sk = { .frontend_id = fe->frontend_id };
	struct mesh_lb_backend_key bk = { .frontend_id = fe->frontend_id };
	__u32 *id;

	sk.slot = bpf_get_prandom_u32() % fe->count + 1;
	id = bpf_map_lookup_elem(&mesh_lb_slot, &sk);
	if (!id)
		return NULL;
	bk.backend_id = *id;
	*backend_id = *id;
	return bpf_map_lookup_elem(&mesh_lb_be, &bk);
}

/* Translates ctx's destination when it is a frontend. Returns 1 to let the call go on
 * (translated or not), 0 with ECONNREFUSED when the frontend has no backend. */
static __always_inline int translate(struct bpf_sock_addr *ctx, __u8 proto, __u8 hook)
{
	struct mesh_lb_frontend_key fk = {
		.vip = ctx->user_ip4,
		.port = (__u16)ctx->user_port,
		.proto = proto,
	};
	const struct mesh_lb_frontend *fe = bpf_map_lookup_elem(&mesh_lb_svc, &fk);
	const struct mesh_lb_backend *be = NULL;
	struct mesh_lb_affinity_key ak = {};
	__u32 backend_id = 0;
	__u8 affinity = 0;
	__u64 now = 0;

	if (!fe) {
		/* A UDP socket may connect again, elsewhere: forget an earlier translation, or
		 * its replies would read as from that VIP. (A TCP socket connects once.) */
		if (hook == MESH_LB_HOOK_CONNECT && proto == IPPROTO_UDP && ctx->sk)
			bpf_sk_storage_delete(&mesh_lb_sk, ctx->sk);
		return 1;
	}
	/* A routed frontend's connections go to the VIP itself: the tc programs hand them to
	 * the L7 proxy, which picks a backend per request (and answers when there is none). */
	if ((fe->flags & MESH_LB_ROUTED) && proto == IPPROTO_TCP)
		return 1;
	if (fe->count == 0)
		goto refuse;
	if (fe->flags & MESH_LB_AFFINITY_CLIENT) {
		ak.netns_cookie = bpf_get_netns_cookie(ctx);
		ak.frontend_id = fe->frontend_id;
		now = bpf_ktime_get_ns();
		be = affine_backend(&ak, fe, now, &backend_id);
		affinity = be != NULL;
	}
	if (!be)
		be = pick_backend(fe, &backend_id);
	if (!be)
		goto refuse; /* a slot meshd has not written: never seen outside a bug */
	if (fe->flags & MESH_LB_AFFINITY_CLIENT) {
		struct mesh_lb_affinity a = { .backend_id = backend_id, .last_used = now };

		bpf_map_update_elem(&mesh_lb_aff, &ak, &a, BPF_ANY);
	}
	if (hook == MESH_LB_HOOK_CONNECT) {
		/* One peer for the socket's life: kept with the socket itself. */
		struct mesh_lb_sock *st = ctx->sk ? bpf_sk_storage_get(&mesh_lb_sk, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE) : NULL;

		if (st) {
			st->backend_addr = be->addr;
			st->backend_port = be->port;
			st->vip = fk.vip;
			st->vport = fk.port;
		}
	} else {
		struct mesh_lb_revnat_key rk = {
			.socket_cookie = bpf_get_socket_cookie(ctx),
			.addr = be->addr,
			.port = be->port,
		};
		struct mesh_lb_revnat *old = bpf_map_lookup_elem(&mesh_lb_revnat, &rk);

		/* Every datagram comes through here: write only what changed. */
		if (!old || old->vip != fk.vip || old->port != fk.port) {
			struct mesh_lb_revnat rv = { .vip = fk.vip, .port = fk.port };

			bpf_map_update_elem(&mesh_lb_revnat, &rk, &rv, BPF_ANY);
		}
	}
	ctx->user_ip4 = be->addr;
	ctx->user_port = be->port;
	lb_count(fe->frontend_id, backend_id, hook);
	lb_report(ctx, &fk, fe, backend_id, be, hook, affinity);
	return 1;

refuse:
	lb_count(fe->frontend_id, 0, hook);
	lb_report(ctx, &fk, fe, 0, NULL, hook, 0);
	bpf_set_retval(-ECONNREFUSED);
	return 0;
}

SEC("cgroup/connect4")
int mesh_lb_connect4(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return 1;
	return translate(ctx, (__u8)ctx->protocol, MESH_LB_HOOK_CONNECT);
}

SEC("cgroup/sendmsg4")
int mesh_lb_sendmsg4(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_UDP)
		return 1;
	return translate(ctx, IPPROTO_UDP, MESH_LB_HOOK_SENDMSG);
}

/* The VIP back in place of a backend this socket was translated to. */
static __always_inline void reverse(struct bpf_sock_addr *ctx)
{
	struct mesh_lb_sock *st = ctx->sk ? bpf_sk_storage_get(&mesh_lb_sk, ctx->sk, 0, 0) : NULL;
	struct mesh_lb_revnat_key rk;
	struct mesh_lb_revnat *rv;

	if (st && st->backend_addr == ctx->user_ip4 && st->backend_port == (__u16)ctx->user_port) {
		ctx->user_ip4 = st->vip;
		ctx->user_port = st->vport;
		return;
	}
	/* Only UDP sends (sendmsg4) write mesh_lb_revnat; a TCP socket's translation is in its
	 * storage. Not asking for a cookie spares every accepted or connected socket one. */
	if (ctx->protocol != IPPROTO_UDP)
		return;
	rk.socket_cookie = bpf_get_socket_cookie(ctx);
	rk.addr = ctx->user_ip4;
	rk.port = (__u16)ctx->user_port;
	rk.pad = 0;
	rv = bpf_map_lookup_elem(&mesh_lb_revnat, &rk);
	if (rv) {
		ctx->user_ip4 = rv->vip;
		ctx->user_port = rv->port;
	}
}

SEC("cgroup/recvmsg4")
int mesh_lb_recvmsg4(struct bpf_sock_addr *ctx)
{
	reverse(ctx);
	return 1;
}

SEC("cgroup/getpeername4")
int mesh_lb_getpeername4(struct bpf_sock_addr *ctx)
{
	reverse(ctx);
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
