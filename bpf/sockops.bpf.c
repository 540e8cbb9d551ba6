// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Socket redirection between local endpoints (see mesh_abi.h for the ordering rules).
 *
 *   mesh_sockops  cgroup sock_ops on the node's cgroup: established TCP connections whose
 *                 both ends are local endpoints get the node-local congestion control
 *                 and go into mesh_sockhash; a socket whose connection fell back leaves
 *                 it again once that is safe.
 *   mesh_skmsg    sk_msg on mesh_sockhash: each message goes to the peer's receive queue,
 *                 unless the direction has fallen back; policy is re-checked when the
 *                 revision changes, so acceleration never lets through what policy denies.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

#include "mesh_abi.h"
#include "lib/maps.h"
#include "lib/policy.h"
#include "lib/conntrack.h"
#include "lib/events.h"

#define AF_INET 2
#define SOL_TCP 6
#define TCP_CONGESTION 13

const volatile __u32 cfg_node_id = 0;

/*
 * The few kernel fields the sk_msg program reads, relocated by CO-RE against the running
 * kernel's BTF (libbpf matches "sock___mesh" to "sock", and so on). They are read with
 * bpf_probe_read_kernel, so a field that moved or a socket that is going away can only
 * make a read fail, never fault.
 */
struct sock___mesh {
	void *sk_user_data; /* the psock, with flag bits in the low 3 bits */
} __attribute__((preserve_access_index));

typedef struct {
	struct {
		int counter;
	} refs;
} refcount___mesh;

struct sk_psock___mesh {
	__u32 msg_tot_len; /* bytes redirected to this socket and not read yet */
	refcount___mesh refcnt;
} __attribute__((preserve_access_index));

/* The sk_msg context is the kernel's struct sk_msg, the sock_ops one its
 * struct bpf_sock_ops_kern. */
struct sk_msg___mesh {
	struct sock___mesh *sk_redir; /* set by bpf_msg_redirect_hash */
} __attribute__((preserve_access_index));

struct bpf_sock_ops_kern___mesh {
	struct sock___mesh *sk;
} __attribute__((preserve_access_index));

/* Set when the application chose the socket's congestion control with setsockopt (or its
 * listener did), or the route did (`ip route ... congctl lock`). */
struct inet_connection_sock___mesh {
	__u8 icsk_ca_setsockopt : 1;
	__u8 icsk_ca_dst_locked : 1;
} __attribute__((preserve_access_index));

#define SK_USER_DATA_FLAG_BITS 7ULL

/* The struct sock a sock_ops callback is about, or NULL. */
static __always_inline struct sock___mesh *ops_sock(struct bpf_sock_ops *skops)
{
	struct sock___mesh *sk = NULL;

	if (bpf_core_read(&sk, sizeof(sk), &((struct bpf_sock_ops_kern___mesh *)skops)->sk))
		return NULL;
	return sk;
}

static __always_inline void stat_add(__u32 idx, __u64 n)
{
	percpu_array_add(&mesh_redir_stats, idx, n);
}

/* remote_port is a big-endian 16-bit value inside a u32; where it sits has changed
 * between kernels, so take whichever half holds it. */
static __always_inline __u16 port_from_be32(__u32 v)
{
	if (v > 0xffff)
		v >>= 16;
	return bpf_ntohs((__u16)v);
}

/* The key of the other socket of the same connection. */
static __always_inline struct mesh_sock_key peer_key(const struct mesh_sock_key *key)
{
	struct mesh_sock_key peer = {
		.local_ip = key->remote_ip,
		.remote_ip = key->local_ip,
		.local_port = key->remote_port,
		.remote_port = key->local_port,
	};

	return peer;
}

static __always_inline struct mesh_redirect_config *redirect_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&mesh_redir_cfg, &zero);
}

/* The endpoint id of a local endpoint's address, 0 for any other. A hash lookup in the
 * local-delivery map: cheaper, on every new connection, than the ipcache's LPM trie. */
static __always_inline __u32 local_endpoint(__u32 addr)
{
	struct mesh_local_endpoint *e = bpf_map_lookup_elem(&mesh_local_ep, &addr);

	return e ? e->endpoint_id : 0;
}

static __always_inline struct sk_psock___mesh *psock_of(struct sock___mesh *sk)
{
	__u64 data = 0;

	if (!sk || bpf_core_read(&data, sizeof(data), &sk->sk_user_data))
		return NULL;
	return (struct sk_psock___mesh *)(data & ~SK_USER_DATA_FLAG_BITS);
}

/* The peer of `s` (its state `other`) stopped redirecting long enough ago that none of
 * its messages can still be on the way; no state at all means closed or never accelerated. */
static __always_inline int stopped_long_ago(struct mesh_sock_state *other)
{
	if (!other)
		return 1;
	if (other->mode != MESH_SOCK_PASSTHROUGH && other->mode != MESH_SOCK_DENIED)
		return 0;
	return other->stopped && bpf_ktime_get_ns() - other->stopped >= MESH_REDIRECT_GRACE_NS;
}

/*
 * A socket that no longer redirects still pays for the kernel's redirect-aware socket
 * operations for as long as it is in the sockhash. Taking it out frees its psock, and with
 * it whatever is still queued for its reader, so it leaves only when nothing can be lost:
 *   - it sends through the stack (PASSTHROUGH); what it sent before through the redirect
 *     is in its peer's queue, which the peer's reader drains before the stack's bytes;
 *   - its peer stopped redirecting to it MESH_REDIRECT_GRACE_NS ago or more (or has no
 *     state: closed, or never accelerated), so no message the peer decided to redirect
 *     is still on its way;
 *   - its own redirect queue is empty: its reader has everything the peer redirected.
 * `sk` is the socket's struct sock. Returns 1 when the socket is out of the sockhash.
 */
static __always_inline int leave(struct mesh_sock_key *key, struct mesh_sock_state *s, struct sock___mesh *sk,
				 struct mesh_sock_state *other)
{
	struct sk_psock___mesh *psock;
	__u32 queued = 1;

	if (s->left)
		return 1;
	if (s->mode != MESH_SOCK_PASSTHROUGH || !stopped_long_ago(other))
		return 0;
	psock = psock_of(sk);
	if (!psock || bpf_core_read(&queued, sizeof(queued), &psock->msg_tot_len) || queued)
		return 0;
	if (bpf_map_delete_elem(&mesh_sockhash, key))
		return 0;
	s->left = 1;
	stat_add(MESH_REDIR_SOCKETS_LEFT, 1);
	return 1;
}

/*
 * On a socket's RTT callback: the socket leaves the sockhash once its connection fell back
 * and it is safe (leave). Only the socket itself: its struct sock comes with the callback,
 * while the peer's could be reached only through a pointer kept in a map, which may by now
 * name a freed socket, or another one in its memory (TCP sockets are SLAB_TYPESAFE_BY_RCU),
 * whose empty queue would let the peer leave with bytes still queued. A socket that only
 * reads gets no RTT samples and so stays until it writes or closes; reading plain TCP
 * through the sockhash costs it little, since tcp_bpf_recvmsg hands a socket whose redirect
 * queue is empty straight to tcp_recvmsg. The writer, whose every sendmsg would otherwise
 * run sk_msg, is the side that gets the ACKs and leaves. Returns 1 when the socket is out.
 */
static __always_inline int maybe_leave(struct bpf_sock_ops *skops, struct mesh_sock_key *key)
{
	struct sock___mesh *sk;
	struct mesh_sock_state *s, *ps;
	struct mesh_sock_key peer = peer_key(key);

	s = bpf_map_lookup_elem(&mesh_sock_state, key);
	if (!s)
		return 1; /* not ours */
	if (s->mode == MESH_SOCK_UNDECIDED || s->mode == MESH_SOCK_ACCELERATED)
		return 0;
	ps = bpf_map_lookup_elem(&mesh_sock_state, &peer);
	sk = ops_sock(skops);
	if (!sk)
		return 0;
	return leave(key, s, sk, ps);
}

/*
 * The conntrack entry of this socket's handshake, made by the tc programs at the socket's
 * own endpoint. Its revision is the one the handshake was last checked under (the tc programs check the sender's
 * egress and the receiver's ingress of a local packet in one run, under one revision, and
 * tag both entries with it). sk_msg re-checks the flow when the revision in force differs,
 * so a revision that arrived between the handshake and this callback is never skipped.
 * Without an entry, MESH_REVISION_UNCHECKED: the first message is checked. It also says
 * whether the flow goes through the L7 proxy.
 */
static __always_inline struct mesh_ct_value *handshake_entry(const struct mesh_sock_key *key, __u32 ep, int active)
{
	struct mesh_ct_key ck = {
		.endpoint_id = ep,
		/* The client's first packet, as the tc programs keyed it: the client's egress
		 * entry, or the server's ingress one. */
		.saddr = active ? key->local_ip : key->remote_ip,
		.daddr = active ? key->remote_ip : key->local_ip,
		.sport = active ? key->local_port : key->remote_port,
		.dport = active ? key->remote_port : key->local_port,
		.proto = IPPROTO_TCP,
		.direction = active ? MESH_DIR_EGRESS : MESH_DIR_INGRESS,
	};

	return bpf_map_lookup_elem(&mesh_ct, &ck);
}

/*
 * Node-local congestion control: a connection between two local endpoints gets
 * cfg->local_cc as it is established (the kernel initialises congestion control after
 * this callback, with what it sets). Such a connection has no bottleneck link and a
 * round trip of microseconds; an algorithm that paces, as BBR does without an fq qdisc,
 * only spreads one stream's segments over both CPUs, where they arrive out of order
 * (tools/bench-sockmap --cc: ~20k spurious retransmits in 5 s and about half the
 * throughput of reno). An application's or route's own choice stays. Asking for the
 * algorithm a socket already has changes nothing in the kernel, so there is no need to
 * read it first.
 */
static __always_inline void set_local_cc(struct bpf_sock_ops *skops, struct mesh_redirect_config *cfg)
{
	struct inet_connection_sock___mesh *icsk;
	char want[MESH_CC_NAME_MAX];

	if (!cfg->local_cc[0])
		return;
	/* A TCP socket's struct sock is the start of its struct inet_connection_sock. */
	icsk = (void *)ops_sock(skops);
	if (icsk && bpf_core_field_exists(icsk->icsk_ca_setsockopt) &&
	    (BPF_CORE_READ_BITFIELD_PROBED(icsk, icsk_ca_setsockopt) ||
	     BPF_CORE_READ_BITFIELD_PROBED(icsk, icsk_ca_dst_locked))) {
		stat_add(MESH_REDIR_CC_OWN, 1);
		return;
	}
	__builtin_memcpy(want, cfg->local_cc, sizeof(want));
	want[MESH_CC_NAME_MAX - 1] = 0;
	if (bpf_setsockopt(skops, SOL_TCP, TCP_CONGESTION, want, sizeof(want))) {
		stat_add(MESH_REDIR_CC_FAILED, 1);
		return;
	}
	stat_add(MESH_REDIR_CC_APPLIED, 1);
}

SEC("sockops")
int mesh_sockops(struct bpf_sock_ops *skops)
{
	struct mesh_sock_key key = {};
	struct mesh_redirect_config *cfg;
	struct mesh_ct_value *ct;
	__u32 lep, rep;
	int active;

	/* Most callbacks of a connection are none of ours: leave before reading anything. */
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_STATE_CB:
	case BPF_SOCK_OPS_RTT_CB:
		break;
	default:
		return 1;
	}
	if (skops->family != AF_INET)
		return 1;
	key.local_ip = skops->local_ip4;
	key.remote_ip = skops->remote_ip4;
	key.local_port = (__u16)skops->local_port;
	key.remote_port = port_from_be32(skops->remote_port);

	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == BPF_TCP_CLOSE)
			bpf_map_delete_elem(&mesh_sock_state, &key);
		return 1;
	case BPF_SOCK_OPS_RTT_CB:
		if (maybe_leave(skops, &key))
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags & ~BPF_SOCK_OPS_RTT_CB_FLAG);
		return 1;
	default:
		return 1;
	}

	active = skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB;
	cfg = redirect_config();
	if (!cfg)
		return 1;
	lep = local_endpoint(key.local_ip);
	rep = key.remote_ip == key.local_ip ? lep : local_endpoint(key.remote_ip);
	if (lep && rep)
		set_local_cc(skops, cfg);
	if (!cfg->enabled) {
		stat_add(MESH_REDIR_FB_DISABLED, 1);
		return 1;
	}
	if (key.local_ip == key.remote_ip)
		return 1; /* an endpoint talking to itself: loopback already skips the veth */
	if (!lep || !rep) {
		stat_add(MESH_REDIR_FB_NOT_LOCAL, 1);
		return 1;
	}
	/* Without it a stalled reader could queue without bound (see mesh_skmsg). */
	if (!bpf_core_field_exists(struct sk_psock___mesh, msg_tot_len)) {
		stat_add(MESH_REDIR_FB_UNSUPPORTED, 1);
		return 1;
	}
	ct = handshake_entry(&key, lep, active);
	/* A proxied connection ends at the proxy, whose upstream reuses the client's address
	 * and port: the two sockets the sockhash would pair are not each other's peers. */
	if (ct && ct->proxy) {
		stat_add(MESH_REDIR_FB_PROXIED, 1);
		return 1;
	}
	{
		struct mesh_sock_state s = {
			.client_ip = active ? key.local_ip : key.remote_ip,
			.server_ip = active ? key.remote_ip : key.local_ip,
			.client_port = active ? key.local_port : key.remote_port,
			.server_port = active ? key.remote_port : key.local_port,
			.client_endpoint = active ? lep : rep,
			.server_endpoint = active ? rep : lep,
			.revision = ct ? *(volatile __u32 *)&ct->revision : MESH_REVISION_UNCHECKED,
			.mode = MESH_SOCK_UNDECIDED,
			.created = bpf_ktime_get_ns(),
		};

		if (bpf_map_update_elem(&mesh_sock_state, &key, &s, BPF_ANY))
			return 1;
		if (bpf_sock_hash_update(skops, &mesh_sockhash, &key, BPF_ANY)) {
			bpf_map_delete_elem(&mesh_sock_state, &key);
			return 1;
		}
	}
	/* Be told when the socket closes, to drop its state, and of ACKs, which only come
	 * once the connection sends through the stack (maybe_leave). */
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG |
					 BPF_SOCK_OPS_RTT_CB_FLAG);
	stat_add(MESH_REDIR_SOCKETS_ADDED, 1);
	return 1;
}

/* The connection's verdict under the current revision, at both hooks it would cross. */
static __always_inline int recheck(struct mesh_sock_state *s, __u32 len)
{
	__u32 revision = policy_revision();
	struct verdict v;
	__u32 peer;
	__u8 slot;

	if (revision == s->revision)
		return s->mode != MESH_SOCK_DENIED;
	slot = MESH_SLOT_OF(revision);
	peer = identity_of(slot, s->server_ip);
	v = policy_decide(slot, MESH_DIR_EGRESS, s->client_endpoint, peer, IPPROTO_TCP, s->server_port);
	if (v.action != MESH_ACTION_DENY) {
		peer = identity_of(slot, s->client_ip);
		v = policy_decide(slot, MESH_DIR_INGRESS, s->server_endpoint, peer, IPPROTO_TCP, s->server_port);
	}
	s->revision = revision;
	if (v.action == MESH_ACTION_DENY) {
		struct mesh_drop_key dk = { .reason = v.reason, .direction = MESH_DIR_EGRESS };

		if (!s->stopped)
			s->stopped = bpf_ktime_get_ns();
		s->mode = MESH_SOCK_DENIED;
		counter_add(&mesh_drops, &dk, len);
		report_policy(MESH_EVENT_DROP, cfg_node_id, s->client_endpoint, peer, s->client_ip, s->server_ip, s->client_port,
			      s->server_port, IPPROTO_TCP, MESH_DIR_EGRESS, &v, revision);
		return 0;
	}
	if (s->mode == MESH_SOCK_DENIED)
		s->mode = MESH_SOCK_PASSTHROUGH; /* allowed again: through the stack, never back */
	return 1;
}

/* Bytes waiting in the redirect queue of the socket a message was just redirected to. */
static __always_inline __u32 peer_queued(struct sk_msg_md *msg)
{
	struct sk_msg___mesh *m = (void *)msg;
	struct sock___mesh *peer = NULL;
	struct sk_psock___mesh *psock;
	__u32 queued = 0;

	if (bpf_core_read(&peer, sizeof(peer), &m->sk_redir))
		return 0;
	psock = psock_of(peer);
	if (psock)
		bpf_core_read(&queued, sizeof(queued), &psock->msg_tot_len);
	return queued;
}

/*
 * mesh_sock_state.stopped for a direction leaving `was`: now, or for one that never
 * redirected anything (it was UNDECIDED, and the swap means it never will), a time long
 * past, since none of its messages can be on the way (maybe_leave).
 */
static __always_inline __u64 stop_time(__u32 was)
{
	return was == MESH_SOCK_UNDECIDED ? 1 : bpf_ktime_get_ns();
}

/*
 * This direction takes the stack from now on, and so does the other one (the socket
 * `peer`): a connection is either accelerated both ways or on its way out of the sockhash.
 * The peer's state is looked up here, on the rare path, and not for every message.
 */
static __always_inline int fall_back(struct mesh_sock_state *s, struct mesh_sock_key *peer, __u8 reason)
{
	struct mesh_sock_state *ps;
	__u32 was = s->mode;

	s->mode = MESH_SOCK_PASSTHROUGH;
	s->fallback = reason;
	if (!s->stopped)
		s->stopped = stop_time(was);
	stat_add(reason, 1);
	ps = bpf_map_lookup_elem(&mesh_sock_state, peer);
	if (!ps)
		return SK_PASS;
	if (__sync_bool_compare_and_swap(&ps->mode, MESH_SOCK_ACCELERATED, MESH_SOCK_PASSTHROUGH))
		was = MESH_SOCK_ACCELERATED;
	else if (__sync_bool_compare_and_swap(&ps->mode, MESH_SOCK_UNDECIDED, MESH_SOCK_PASSTHROUGH))
		was = MESH_SOCK_UNDECIDED;
	else
		return SK_PASS;
	/* Stamped after the swap: whatever the peer decided before is older. */
	ps->fallback = MESH_REDIR_FB_PEER;
	ps->stopped = stop_time(was);
	stat_add(MESH_REDIR_FB_PEER, 1);
	return SK_PASS;
}

SEC("sk_msg")
int mesh_skmsg(struct sk_msg_md *msg)
{
	struct mesh_sock_key key = {}, peer;
	struct mesh_redirect_config *cfg;
	struct mesh_sock_state *s;
	long ret;

	if (msg->family != AF_INET)
		return SK_PASS;
	key.local_ip = msg->local_ip4;
	key.remote_ip = msg->remote_ip4;
	key.local_port = (__u16)msg->local_port;
	key.remote_port = port_from_be32(msg->remote_port);
	s = bpf_map_lookup_elem(&mesh_sock_state, &key);
	if (!s)
		return SK_PASS;
	if (!recheck(s, msg->size)) {
		stat_add(MESH_REDIR_DENIED_MESSAGES, 1);
		return SK_DROP;
	}
	if (s->mode == MESH_SOCK_PASSTHROUGH)
		return SK_PASS;
	peer = peer_key(&key);
	cfg = redirect_config();
	if (!cfg || !cfg->enabled)
		return fall_back(s, &peer, MESH_REDIR_FB_DISABLED);
	if (cfg->max_message_bytes && msg->size > cfg->max_message_bytes)
		return fall_back(s, &peer, MESH_REDIR_FB_LARGE_WRITE);
	if (s->mode == MESH_SOCK_UNDECIDED) {
		if (!bpf_map_lookup_elem(&mesh_sock_state, &peer))
			return fall_back(s, &peer, MESH_REDIR_FB_NO_PEER);
		if (!__sync_bool_compare_and_swap(&s->mode, MESH_SOCK_UNDECIDED, MESH_SOCK_ACCELERATED))
			return SK_PASS; /* the peer's direction fell back just now, and took this one */
	}
	ret = bpf_msg_redirect_hash(msg, &mesh_sockhash, &peer, BPF_F_INGRESS);
	if (ret != SK_PASS) /* the peer left the map (it closed): the stack delivers the usual reset */
		return fall_back(s, &peer, MESH_REDIR_FB_REDIRECT_FAILED);
	stat_add(MESH_REDIR_MESSAGES, 1);
	stat_add(MESH_REDIR_BYTES, msg->size);
	/* These bytes never cross a veth: count them for both endpoints here, one message as
	 * one packet, so an endpoint's counters hold what it sent and received either way. */
	if (key.local_ip == s->client_ip) {
		count_traffic(s->client_endpoint, MESH_DIR_EGRESS, msg->size);
		count_traffic(s->server_endpoint, MESH_DIR_INGRESS, msg->size);
	} else {
		count_traffic(s->server_endpoint, MESH_DIR_EGRESS, msg->size);
		count_traffic(s->client_endpoint, MESH_DIR_INGRESS, msg->size);
	}
	/* Back-pressure: this message goes to the peer's queue (the redirect is set and
	 * cannot be taken back), the next ones through the stack if the reader is behind.
	 * A stalled reader so holds at most max_queued_bytes and one message. */
	if (cfg->max_queued_bytes && peer_queued(msg) > cfg->max_queued_bytes)
		fall_back(s, &peer, MESH_REDIR_FB_READER_BEHIND);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
