// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Socket redirection between local endpoints (see mesh_abi.h for the ordering rules).
 *
 *   mesh_sockops  cgroup sock_ops on the node's cgroup: established TCP connections whose
 *                 both ends are local endpoints go into mesh_sockhash.
 *   mesh_skmsg    sk_msg on mesh_sockhash: each message goes to the peer's receive queue,
 *                 unless the direction has fallen back; policy is re-checked when the
 *                 revision changes, so acceleration never lets through what policy denies.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "mesh_abi.h"
#include "lib/maps.h"
#include "lib/policy.h"
#include "lib/events.h"

#define AF_INET 2

const volatile __u32 cfg_node_id = 0;

static __always_inline void stat_add(__u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&mesh_redir_stats, &idx);

	if (v)
		*v += n;
}

/* remote_port is a big-endian 16-bit value inside a u32; where it sits has changed
 * between kernels, so take whichever half holds it. */
static __always_inline __u16 port_from_be32(__u32 v)
{
	if (v > 0xffff)
		v >>= 16;
	return bpf_ntohs((__u16)v);
}

static __always_inline struct mesh_redirect_config *redirect_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&mesh_redir_cfg, &zero);
}

static __always_inline __u32 local_endpoint(__u8 slot, __u32 addr)
{
	struct mesh_ipcache_key k = { .prefixlen = 8 + 32, .slot = slot };
	struct mesh_ipcache_value *v;

	__builtin_memcpy(k.addr, &addr, 4);
	v = bpf_map_lookup_elem(&mesh_ipcache, &k);
	return v ? v->endpoint_id : 0;
}

SEC("sockops")
int mesh_sockops(struct bpf_sock_ops *skops)
{
	struct mesh_sock_key key = {};
	struct mesh_policy_state *st;
	struct mesh_redirect_config *cfg;
	__u32 zero = 0, lep, rep;
	__u8 slot;
	int active;

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
	default:
		return 1;
	}

	active = skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB;
	cfg = redirect_config();
	if (!cfg || !cfg->enabled) {
		stat_add(MESH_REDIR_FB_DISABLED, 1);
		return 1;
	}
	st = bpf_map_lookup_elem(&mesh_pol_state, &zero);
	if (!st)
		return 1;
	slot = st->active_slot & 1;
	if (key.local_ip == key.remote_ip)
		return 1; /* an endpoint talking to itself: loopback already skips the veth */
	lep = local_endpoint(slot, key.local_ip);
	rep = local_endpoint(slot, key.remote_ip);
	if (!lep || !rep) {
		stat_add(MESH_REDIR_FB_NOT_LOCAL, 1);
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
			/* The handshake just passed the tc programs under this revision. */
			.revision = st->revision,
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
	/* Be told when the socket closes, to drop its state. */
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
	stat_add(MESH_REDIR_SOCKETS_ADDED, 1);
	return 1;
}

/* The connection's verdict under the current revision, at both hooks it would cross. */
static __always_inline int recheck(struct mesh_sock_state *s, __u32 len)
{
	__u32 zero = 0;
	struct mesh_policy_state *st = bpf_map_lookup_elem(&mesh_pol_state, &zero);
	struct verdict v;
	__u32 peer;
	__u8 slot;

	if (!st || st->revision == s->revision)
		return s->mode != MESH_SOCK_DENIED;
	slot = st->active_slot & 1;
	peer = identity_of(slot, s->server_ip);
	v = policy_decide(slot, MESH_DIR_EGRESS, s->client_endpoint, peer, IPPROTO_TCP, s->server_port);
	if (v.action != MESH_ACTION_DENY) {
		peer = identity_of(slot, s->client_ip);
		v = policy_decide(slot, MESH_DIR_INGRESS, s->server_endpoint, peer, IPPROTO_TCP, s->server_port);
	}
	s->revision = st->revision;
	if (v.action == MESH_ACTION_DENY) {
		struct mesh_drop_key dk = { .reason = v.reason, .direction = MESH_DIR_EGRESS };

		s->mode = MESH_SOCK_DENIED;
		counter_add(&mesh_drops, &dk, len);
		report_policy(MESH_EVENT_DROP, cfg_node_id, s->client_endpoint, peer, s->client_ip, s->server_ip, s->client_port,
			      s->server_port, IPPROTO_TCP, MESH_DIR_EGRESS, &v, st->revision);
		return 0;
	}
	if (s->mode == MESH_SOCK_DENIED)
		s->mode = MESH_SOCK_PASSTHROUGH; /* allowed again: through the stack, never back */
	return 1;
}

SEC("sk_msg")
int mesh_skmsg(struct sk_msg_md *msg)
{
	struct mesh_sock_key key = {}, peer = {};
	struct mesh_redirect_config *cfg;
	struct mesh_sock_state *s, *ps;
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
	peer.local_ip = key.remote_ip;
	peer.remote_ip = key.local_ip;
	peer.local_port = key.remote_port;
	peer.remote_port = key.local_port;
	ps = bpf_map_lookup_elem(&mesh_sock_state, &peer);
	/* This socket spoke: whatever its peer redirected to it so far was answered. */
	if (ps)
		ps->unanswered = 0;
	if (s->mode == MESH_SOCK_PASSTHROUGH)
		return SK_PASS;
	cfg = redirect_config();
	if (!cfg || !cfg->enabled) {
		s->mode = MESH_SOCK_PASSTHROUGH;
		s->fallback = MESH_REDIR_FB_DISABLED;
		stat_add(MESH_REDIR_FB_DISABLED, 1);
		return SK_PASS;
	}
	/* Bulk goes through the stack: redirecting large writes costs more than it saves
	 * (no GSO, one wake-up and copy per message into a queue the reader drains). */
	if (cfg->max_message_bytes && msg->size > cfg->max_message_bytes) {
		s->mode = MESH_SOCK_PASSTHROUGH;
		s->fallback = MESH_REDIR_FB_LARGE_WRITE;
		stat_add(MESH_REDIR_FB_LARGE_WRITE, 1);
		return SK_PASS;
	}
	if (cfg->max_unanswered_bytes && s->unanswered + msg->size > cfg->max_unanswered_bytes) {
		s->mode = MESH_SOCK_PASSTHROUGH;
		s->fallback = MESH_REDIR_FB_UNANSWERED;
		stat_add(MESH_REDIR_FB_UNANSWERED, 1);
		return SK_PASS;
	}
	if (s->mode == MESH_SOCK_UNDECIDED) {
		if (!ps) {
			s->mode = MESH_SOCK_PASSTHROUGH;
			s->fallback = MESH_REDIR_FB_NO_PEER;
			stat_add(MESH_REDIR_FB_NO_PEER, 1);
			return SK_PASS;
		}
		s->mode = MESH_SOCK_ACCELERATED;
	}
	ret = bpf_msg_redirect_hash(msg, &mesh_sockhash, &peer, BPF_F_INGRESS);
	if (ret != SK_PASS) {
		/* The peer left the map (it closed): let the stack deliver the usual reset. */
		s->mode = MESH_SOCK_PASSTHROUGH;
		s->fallback = MESH_REDIR_FB_REDIRECT_FAILED;
		stat_add(MESH_REDIR_FB_REDIRECT_FAILED, 1);
		return SK_PASS;
	}
	s->unanswered += msg->size;
	stat_add(MESH_REDIR_MESSAGES, 1);
	stat_add(MESH_REDIR_BYTES, msg->size);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
