// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tc programs on each endpoint's host-side veth: attribute every packet to its endpoint,
 * count it, and enforce L4 policy in both directions with connection tracking.
 *
 *   tc ingress (packets leaving the endpoint)  -> mesh_from_endpoint, direction EGRESS
 *   tc egress  (packets entering the endpoint) -> mesh_to_endpoint,   direction INGRESS
 *
 * A TCP flow that L7 policy must see goes to the L7 proxy instead (see mesh_abi.h):
 *
 *   client endpoint --veth--> tc ingress: the SYN is assigned to the proxy's listener,
 *       every packet is marked MESH_MARK_TO_PROXY and the node delivers it locally;
 *       the proxy answers from the original destination's address (IP_TRANSPARENT).
 *   proxy --(client's address and port, SO_MARK MESH_MARK_FROM_PROXY)--> tc egress of
 *       the receiver's veth: its ingress policy, and the client's egress policy, for the
 *       original client; the entry is marked so that the receiver's replies go back to
 *       the proxy, not to the client.
 *
 * A connection to an endpoint of another node whose node accepts it only through an mTLS
 * tunnel (MESH_IPCACHE_TUNNEL), or one its own egress rule allows only authenticated
 * (MESH_POLICY_AUTH on an egress entry), goes to the proxy the same way; the proxy
 * carries it to the other node's proxy inside the tunnel. That node drops such flows arriving in the clear
 * (MESH_DROP_AUTH_REQUIRED): its proxy's upstream connection, made after it checked the
 * peer's certificate, is the only way in.
 *
 * A connection to a routed service VIP (MESH_LB_ROUTED: connect() left the VIP in place)
 * goes to the proxy the same way, whatever the client's egress policy says of the VIP:
 * the proxy picks a backend per request, and the client's egress policy is judged then,
 * on the proxy's upstream connection to that backend (above).
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "mesh_abi.h"
#include "lib/maps.h"
#include "lib/packet.h"
#include "lib/policy.h"
#include "lib/conntrack.h"
#include "lib/events.h"
#include "lib/fragments.h"
#include "lib/lb_frontends.h"

/* Why a new TCP flow leaving an endpoint goes to the proxy before its own egress policy
 * says so (enforce's `want_proxy`). */
enum {
	WANT_PROXY_INGRESS = 1, /* the receiver's ingress has HTTP rules for it */
	WANT_PROXY_ROUTED = 2,  /* its destination is a routed service frontend */
	WANT_PROXY_TUNNEL = 4,  /* its destination's node accepts it only through an mTLS tunnel */
};

/* The receiver's ingress verdict for the SYN of a new TCP flow to another endpoint of this
 * node: ingress_wants_proxy decides it before the sender's egress, and the receiver's
 * enforce uses it rather than deciding the same again (a verdict is a function of the
 * slot, endpoint, direction, peer, protocol and port, all the same for both). */
struct local_ingress {
	__u32 ep;   /* the receiver's endpoint id; 0: nothing decided */
	__u32 peer; /* the sender's identity, as the receiver's policy sees it */
	struct verdict v;
};

/* Set by meshd between open and load; never a recompile. */
const volatile __u32 cfg_node_id = 0;
const volatile __u8 cfg_report_unknown = 1;
/* The L7 proxy's transparent listener in the node's namespace; 0: no proxy, so flows that
 * need one are dropped (MESH_DROP_PROXY_UNAVAILABLE). */
const volatile __u16 cfg_proxy_port = 0;
/* 1: `mtls: strict`: endpoints accept flows from other nodes' endpoints only through the
 * proxy's mTLS tunnel, whatever their policy says. */
const volatile __u8 cfg_mtls_strict = 0;

static __always_inline void report_unknown(__u32 ifindex, __u8 direction)
{
	struct mesh_event_unknown_interface *ev;

	if (!cfg_report_unknown)
		return;
	ev = bpf_ringbuf_reserve(&mesh_events, sizeof(*ev), 0);
	if (!ev)
		return; /* ring full: the reader is behind; losing a report is fine */
	event_header(&ev->hdr, MESH_EVENT_UNKNOWN_INTERFACE, sizeof(*ev), cfg_node_id);
	ev->ifindex = ifindex;
	ev->direction = direction;
	ev->pad[0] = ev->pad[1] = ev->pad[2] = 0;
	bpf_ringbuf_submit(ev, 0);
}

/* A new flow into an endpoint that only a proven peer may open (MESH_POLICY_AUTH, or any
 * other node's endpoint under `mtls: strict`), which did not come through the proxy's
 * tunnel: nothing but its source address speaks for it. Flows from this node's own
 * endpoints need no proof (the datapath drops what an endpoint sends from another's
 * address). */
static __always_inline int unproven(const struct verdict *v, __u32 peer, __u32 saddr)
{
	if (!v->auth && !(cfg_mtls_strict && is_endpoint_identity(peer)))
		return 0;
	return !bpf_map_lookup_elem(&mesh_local_ep, &saddr);
}

/* A new flow leaving an endpoint under an egress rule that requires authentication, to
 * anything but this node's own endpoints: it may leave only inside the proxy's mTLS
 * tunnel (the proxy refuses it where no tunnel leads). */
static __always_inline int egress_needs_tunnel(const struct verdict *v, __u32 daddr)
{
	return v->auth && !bpf_map_lookup_elem(&mesh_local_ep, &daddr);
}

static __always_inline int drop(struct __sk_buff *skb, __u8 reason, __u8 dir)
{
	struct mesh_drop_key dk = { .reason = reason, .direction = dir };

	counter_add(&mesh_drops, &dk, skb->len);
	return TC_ACT_SHOT;
}

static __always_inline void count_verdict(const struct verdict *v, __u8 dir, __u32 len)
{
	struct mesh_verdict_key vk = { .policy_id = v->policy_id, .direction = dir, .action = v->action };

	counter_add(&mesh_verdicts, &vk, len);
}

static __always_inline void report_flow(__u16 type, __u32 ep, __u32 peer, const struct flow *f, __u8 dir,
					const struct verdict *v, __u32 revision)
{
	report_policy(type, cfg_node_id, ep, peer, f->saddr, f->daddr, f->sport, f->dport, f->proto, dir, v, revision);
}

/* Drops a packet no policy rule decided (a reason of its own), reporting it like any
 * other drop. */
static __always_inline int drop_unjudged(struct __sk_buff *skb, __u32 ep, const struct flow *f, __u8 dir,
					 __u8 reason, __u32 revision)
{
	struct verdict v = { .action = MESH_ACTION_DENY, .reason = reason, .enforced = 1 };

	report_flow(MESH_EVENT_DROP, ep, 0, f, dir, &v, revision);
	return drop(skb, reason, dir);
}

/*
 * A packet of a tracked flow. The flow was allowed under ct->revision; under a newer
 * revision it is decided again as the original flow (`flow_dir`, its peer and port), and
 * a flow the new revision denies is dropped and forgotten.
 */
static __always_inline int established(struct __sk_buff *skb, struct mesh_ct_value *ct, struct mesh_ct_key *ck,
				       __u32 ep, __u8 flow_dir, __u32 peer_addr, __u16 dport, const struct flow *f,
				       __u8 dir, __u8 slot, __u32 revision, __u64 now, int reply, __u8 *proxy)
{
	/* Packets leaving the endpoint of a proxied flow belong to the proxy. */
	if (dir == MESH_DIR_EGRESS && ct->proxy)
		*proxy = 1;
	/* A routed flow's peer is a VIP, not what policy judges: its upstream connections are. */
	if (ct->revision != revision && !ct->routed) {
		/* The gateway's identity came with its first packet's mark, not from its address. */
		__u32 peer = ct->peer_identity == MESH_ID_INGRESS ? MESH_ID_INGRESS : identity_of(slot, peer_addr);
		struct verdict v = policy_decide(slot, flow_dir, ep, peer, f->proto, dport);

		/* A flow that came in the clear, when the new revision wants its peer proven. */
		if (v.action == MESH_ACTION_ALLOW && !ct->proxy &&
		    (flow_dir == MESH_DIR_INGRESS ? unproven(&v, peer, peer_addr) : egress_needs_tunnel(&v, peer_addr))) {
			v.action = MESH_ACTION_DENY;
			v.reason = MESH_DROP_AUTH_REQUIRED;
		}
		if (v.action == MESH_ACTION_DENY) {
			ct_remove(ck);
			report_flow(MESH_EVENT_DROP, ep, peer, f, dir, &v, revision);
			return drop(skb, v.reason, dir);
		}
		ct->revision = revision;
		ct->rule_id = v.rule_id;
	}
	/* Written only when they change: the entry is read on both CPUs (the two ends of a
	 * local flow), and a store, even of the same value, takes its cache line from the other. */
	if (now - ct->last_seen >= MESH_CT_REFRESH_NS)
		ct->last_seen = now;
	if (reply && !ct->seen_reply)
		ct->seen_reply = 1;
	if ((f->tcp_flags & 0x05) && !ct->closing)
		ct->closing = 1;
	return TC_ACT_OK;
}

/* Policy for one packet of endpoint `ep` travelling in `dir` (as the endpoint sees it);
 * `pr` and `f` are what parse_flow made of it, `revision` what the program run read
 * (policy_revision): every lookup and every record of this packet uses that revision.
 * `*proxy` becomes 1 when the packet leaves the endpoint for the L7 proxy; `want_proxy`
 * (WANT_PROXY_*) says why a new flow needs the proxy before its own policy is read. `li`,
 * when not NULL, is the receiver's ingress verdict that handle() already decided. */
static __always_inline int enforce(struct __sk_buff *skb, __u32 ep, __u8 dir, enum parse_result pr,
				   const struct flow *f, __u32 revision, __u8 want_proxy, const struct local_ingress *li,
				   __u8 *proxy)
{
	__u32 zero = 0;
	struct mesh_ct_key ck;
	struct mesh_ct_value *ct;
	struct verdict v;
	/* The coarse clock: CT lifetimes are seconds, and in a VM the precise one costs a
	 * paravirtual clock read on every packet. Same clock (CLOCK_MONOTONIC) as meshd's GC. */
	__u64 now = bpf_ktime_get_coarse_ns();
	__u32 peer;
	__u8 slot = MESH_SLOT_OF(revision), odir = dir ^ 1, ct_proxy = 0;

	if (skb->mark == MESH_TRACE_MARK && pr == PARSE_IPV4) {
		/* Trace: the new-flow decision, no side effects (see mesh_abi.h). */
		peer = identity_of(slot, dir == MESH_DIR_EGRESS ? f->daddr : f->saddr);
		v = policy_decide(slot, dir, ep, peer, f->proto, f->dport);
		skb->cb[MESH_TRACE_CB_ACTION] = v.action;
		skb->cb[MESH_TRACE_CB_REASON] = v.reason;
		skb->cb[MESH_TRACE_CB_RULE] = v.rule_id;
		skb->cb[MESH_TRACE_CB_PEER] = peer;
		skb->cb[MESH_TRACE_CB_FLAGS] = (v.enforced ? MESH_TRACE_ENFORCED : 0) | MESH_TRACE_EVALUATED |
					       (v.action == MESH_ACTION_ALLOW && v.l7 ? MESH_TRACE_L7 : 0) |
					       (v.action == MESH_ACTION_ALLOW && v.auth ? MESH_TRACE_AUTH : 0);
		return v.action == MESH_ACTION_DENY ? TC_ACT_SHOT : TC_ACT_OK;
	}
	if (pr == PARSE_ARP)
		return TC_ACT_OK;
	if (pr != PARSE_IPV4) {
		/* Not IPv4, or an IPv4 header no stack accepts: nothing policy can judge, so an
		 * enforced direction drops it, and says so like any other drop. */
		struct mesh_policy_ep_key ek = { .endpoint_id = ep, .slot = slot };
		struct mesh_policy_ep_value *ev = bpf_map_lookup_elem(&mesh_policy_ep, &ek);

		if (!ev || !ev->enforce[dir & 1])
			return TC_ACT_OK;
		return drop_unjudged(skb, ep, f, dir,
				     pr == PARSE_BAD_IPV4 ? MESH_DROP_MALFORMED_IPV4 : MESH_DROP_UNSUPPORTED_L3, revision);
	}

	/* An ICMP error about a tracked flow is part of it; one about nothing tracked is a
	 * new flow like any other (its type is the port). */
	if (f->icmp_error && ct_related(ep, dir, f, revision, now))
		return TC_ACT_OK;

	/* A SYN opens a new connection even if an entry of an earlier one with the same
	 * tuple is still closing: decide (and count, and report) it afresh. */
	if (f->proto == IPPROTO_TCP && (f->tcp_flags & 0x12) == 0x02)
		goto new_flow;

	/* Established in this direction? */
	ct_key(&ck, ep, f, dir, 0);
	ct = bpf_map_lookup_elem(&mesh_ct, &ck);
	if (ct && !ct_expired(ct, f->proto, now))
		return established(skb, ct, &ck, ep, dir, dir == MESH_DIR_EGRESS ? f->daddr : f->saddr, f->dport,
				   f, dir, slot, revision, now, 0, proxy);

	/* A reply of a flow the endpoint's other direction allowed? Its peer and port are
	 * the original flow's. An echo request is never a reply: with identifier 8 its ports
	 * (8, 8) would read as the reply to one (see icmp_ports). */
	if (f->icmp_echo_request)
		goto new_flow;
	ct_key(&ck, ep, f, odir, 1);
	ct = bpf_map_lookup_elem(&mesh_ct, &ck);
	if (ct && !ct_expired(ct, f->proto, now))
		return established(skb, ct, &ck, ep, odir, odir == MESH_DIR_EGRESS ? f->saddr : f->daddr, f->sport,
				   f, dir, slot, revision, now, 1, proxy);

new_flow:
	if (want_proxy & WANT_PROXY_ROUTED) {
		struct mesh_ct_value nv = {
			.created = now,
			.last_seen = now,
			.revision = revision,
			.proxy = 1,
			.routed = 1,
		};

		ct_key(&ck, ep, f, dir, 0);
		ct_create(&ck, &nv);
		*proxy = 1;
		return TC_ACT_OK;
	}
	peer = li && li->ep == ep && dir == MESH_DIR_INGRESS ? li->peer
								: identity_of(slot, dir == MESH_DIR_EGRESS ? f->daddr : f->saddr);
	if (dir == MESH_DIR_INGRESS && (skb->mark & MESH_MARK_MASK) == MESH_MARK_FROM_PROXY && (skb->mark & MESH_MARK_GATEWAY))
		peer = MESH_ID_INGRESS;
	if (li && li->ep == ep && dir == MESH_DIR_INGRESS && li->peer == peer && f->proto == IPPROTO_TCP)
		v = li->v;
	else
		v = policy_decide(slot, dir, ep, peer, f->proto, f->dport);
	if (v.enforced)
		count_verdict(&v, dir, skb->len);
	if (v.action == MESH_ACTION_DENY) {
		report_flow(MESH_EVENT_DROP, ep, peer, f, dir, &v, revision);
		return drop(skb, v.reason, dir);
	}
	if (dir == MESH_DIR_EGRESS) {
		int tunnel = egress_needs_tunnel(&v, f->daddr);

		/* The tunnel carries TCP only. */
		if (tunnel && f->proto != IPPROTO_TCP) {
			v.action = MESH_ACTION_DENY;
			v.reason = MESH_DROP_AUTH_REQUIRED;
			report_flow(MESH_EVENT_DROP, ep, peer, f, dir, &v, revision);
			return drop(skb, v.reason, dir);
		}
		/* The proxy speaks TCP; UDP to an L7 port was allowed at L4 only by its rule. */
		*proxy = f->proto == IPPROTO_TCP && (v.l7 || want_proxy || tunnel);
		ct_proxy = *proxy;
	} else if ((skb->mark & MESH_MARK_MASK) == MESH_MARK_FROM_PROXY) {
		/* The proxy's upstream connection, judged as its original client: the proxy has
		 * applied the L7 rules, and the endpoint's replies go back to it. A client on
		 * this node is held to its own egress policy here too: for a routed service this
		 * is the first time its real peer is known. */
		if (f->proto == IPPROTO_TCP && (f->tcp_flags & 0x12) == 0x02) {
			struct mesh_local_endpoint *from = bpf_map_lookup_elem(&mesh_local_ep, &f->saddr);

			if (from) {
				__u32 to = identity_of(slot, f->daddr);
				struct verdict ev = policy_decide(slot, MESH_DIR_EGRESS, from->endpoint_id, to, f->proto, f->dport);

				if (ev.action == MESH_ACTION_DENY) {
					report_flow(MESH_EVENT_DROP, from->endpoint_id, to, f, MESH_DIR_EGRESS, &ev, revision);
					return drop(skb, ev.reason, MESH_DIR_EGRESS);
				}
			}
		}
		ct_proxy = 1;
	} else if (unproven(&v, peer, f->saddr)) {
		v.action = MESH_ACTION_DENY;
		v.reason = MESH_DROP_AUTH_REQUIRED;
		report_flow(MESH_EVENT_DROP, ep, peer, f, dir, &v, revision);
		return drop(skb, v.reason, dir);
	} else if (v.l7) {
		/* Only flows from this node's endpoints can be handed to the proxy. */
		v.action = MESH_ACTION_DENY;
		v.reason = MESH_DROP_PROXY_UNAVAILABLE;
		report_flow(MESH_EVENT_DROP, ep, peer, f, dir, &v, revision);
		return drop(skb, v.reason, dir);
	}
	v.l7 = ct_proxy;
	{
		struct mesh_ct_value nv = {
			.created = now,
			.last_seen = now,
			.revision = revision,
			.rule_id = v.rule_id,
			.peer_identity = peer,
			.closing = (f->tcp_flags & 0x05) ? 1 : 0,
			.proxy = ct_proxy,
		};

		ct_key(&ck, ep, f, dir, 0);
		ct_create(&ck, &nv);
	}
	if (v.enforced) {
		struct mesh_monitor_config *mon = bpf_map_lookup_elem(&mesh_monitor, &zero);

		if (mon && mon->verdict_events)
			report_flow(MESH_EVENT_VERDICT, ep, peer, f, dir, &v, revision);
	}
	return TC_ACT_OK;
}

/*
 * A packet leaving an endpoint (allowed by its egress policy) for another endpoint of this
 * node: the receiver's ingress policy and counters here, then straight to the receiver's
 * eth0, as a router would hand it over (TTL down by one, MACs of the receiver's link).
 * Returns -1 when the packet takes the node's stack instead (not for a local endpoint,
 * TTL expiring: the stack answers that).
 */
static __always_inline int deliver_locally(struct __sk_buff *skb, const struct flow *f, __u32 revision,
					   const struct local_ingress *li)
{
	struct mesh_local_endpoint *to = bpf_map_lookup_elem(&mesh_local_ep, &f->daddr);
	/* TTL and protocol: one 16-bit word of the header checksum. */
	__u8 old_word[2] = { f->ttl, f->proto }, new_word[2] = { f->ttl - 1, f->proto };
	__u8 proxy = 0;
	int verdict;

	if (!to || to->ifindex == skb->ifindex || f->ttl <= 1)
		return -1;
	/* The sender's egress was decided under `revision`; so is the receiver's ingress. */
	verdict = enforce(skb, to->endpoint_id, MESH_DIR_INGRESS, PARSE_IPV4, f, revision, 0, li, &proxy);
	if (verdict != TC_ACT_OK)
		return verdict;
	count_traffic(to->endpoint_id, MESH_DIR_INGRESS, skb->len);
	/* These writes stay inside the headers parse_flow read; should one fail all the same,
	 * the stack delivers the packet (to_endpoint then sees it too). */
	if (bpf_l3_csum_replace(skb, ETH_HLEN + __builtin_offsetof(struct iphdr, check), *(__u16 *)old_word,
				*(__u16 *)new_word, 2) ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + __builtin_offsetof(struct iphdr, ttl), &new_word[0], 1, 0) ||
	    bpf_skb_store_bytes(skb, 0, to->mac, 6, 0) || bpf_skb_store_bytes(skb, 6, to->gateway_mac, 6, 0))
		return -1;
	return bpf_redirect_peer(to->ifindex, 0);
}

/*
 * For the SYN of a new TCP flow from an endpoint to another of this node: 1 when the
 * receiver's ingress allows it only through the L7 proxy. The verdict stays in `li` for
 * deliver_locally, which drops and reports a deny. `li->ep` stays 0 for a destination
 * that is not a local endpoint.
 */
static __always_inline __u8 ingress_wants_proxy(const struct flow *f, __u32 revision, struct local_ingress *li)
{
	struct mesh_local_endpoint *to = bpf_map_lookup_elem(&mesh_local_ep, &f->daddr);
	__u8 slot = MESH_SLOT_OF(revision);

	if (!to)
		return 0;
	li->ep = to->endpoint_id;
	li->peer = identity_of(slot, f->saddr);
	li->v = policy_decide(slot, MESH_DIR_INGRESS, li->ep, li->peer, IPPROTO_TCP, f->dport);
	return li->v.action == MESH_ACTION_ALLOW && li->v.l7;
}

/* Whether a new TCP flow's destination is another node's endpoint that its node accepts
 * only through an mTLS tunnel. */
static __always_inline int tunnelled(const struct flow *f, __u32 revision)
{
	struct mesh_ipcache_value *v = ipcache_lookup(MESH_SLOT_OF(revision), f->daddr);

	return v && (v->flags & MESH_IPCACHE_TUNNEL);
}

/* Whether a new TCP flow's destination is a service frontend an HTTPRoute binds. */
static __always_inline int routed_frontend(const struct flow *f)
{
	struct mesh_lb_frontend_key fk = { .vip = f->daddr, .port = bpf_htons(f->dport), .proto = IPPROTO_TCP };
	const struct mesh_lb_frontend *fe = bpf_map_lookup_elem(&mesh_lb_svc, &fk);

	return fe && (fe->flags & MESH_LB_ROUTED);
}

/*
 * Hands a packet of a proxied flow to the node's stack, marked for local delivery (the
 * proxy's routing rule). A SYN is assigned to the proxy's listener, which accepts it
 * with the original destination as its local address; later packets find the accepted
 * (or upstream) socket by their own addresses. No listener: the flow is dropped, and
 * the client's SYN retransmission reaches a proxy that is back by then.
 */
static __always_inline int to_proxy(struct __sk_buff *skb, const struct flow *f, __u32 ep, __u32 revision)
{
	if ((f->tcp_flags & 0x12) == 0x02) {
		struct bpf_sock_tuple t = {};
		struct bpf_sock *sk;
		long err;

		if (!cfg_proxy_port)
			goto unavailable;
		t.ipv4.saddr = f->saddr;
		t.ipv4.daddr = f->daddr;
		t.ipv4.sport = bpf_htons(f->sport);
		t.ipv4.dport = bpf_htons(cfg_proxy_port);
		sk = bpf_sk_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			goto unavailable;
		if (sk->state != BPF_TCP_LISTEN) {
			bpf_sk_release(sk);
			goto unavailable;
		}
		err = bpf_sk_assign(skb, sk, 0);
		bpf_sk_release(sk);
		if (err)
			goto unavailable;
	}
	skb->mark = (skb->mark & ~MESH_MARK_MASK) | MESH_MARK_TO_PROXY;
	return TC_ACT_OK;
unavailable:
	return drop_unjudged(skb, ep, f, MESH_DIR_EGRESS, MESH_DROP_PROXY_UNAVAILABLE, revision);
}

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	struct mesh_endpoint_key ek = { .ifindex = skb->ifindex };
	struct mesh_endpoint_info *ep = bpf_map_lookup_elem(&mesh_endpoints, &ek);
	enum parse_result pr;
	struct flow f = {};
	struct local_ingress li = {};
	__u32 id, revision;
	__u8 want_proxy = 0, proxy = 0;
	int verdict;

	if (!ep) {
		report_unknown(skb->ifindex, dir);
		return TC_ACT_OK;
	}
	id = ep->endpoint_id;
	pr = parse_flow(skb, &f);
	/* One read of the revision for everything this packet meets, local delivery too. */
	revision = policy_revision();
	/* An endpoint speaks only from its own address: another's would carry that one's
	 * identity into every ingress policy it meets (and its fragments' record). */
	if (dir == MESH_DIR_EGRESS && pr == PARSE_IPV4 && f.saddr != ep->ipv4 && skb->mark != MESH_TRACE_MARK)
		return drop_unjudged(skb, id, &f, dir, MESH_DROP_SPOOFED_SOURCE, revision);
	if (pr == PARSE_IPV4 && f.frag != FLOW_WHOLE && skb->mark != MESH_TRACE_MARK)
		fragment_ports(&f);
	if (dir == MESH_DIR_EGRESS && pr == PARSE_IPV4 && f.proto == IPPROTO_TCP && (f.tcp_flags & 0x12) == 0x02 &&
	    skb->mark != MESH_TRACE_MARK)
		/* A destination on this node is never behind another node's tunnel. */
		want_proxy = routed_frontend(&f)                      ? WANT_PROXY_ROUTED
			     : ingress_wants_proxy(&f, revision, &li) ? WANT_PROXY_INGRESS
			     : !li.ep && tunnelled(&f, revision)      ? WANT_PROXY_TUNNEL
								      : 0;
	verdict = enforce(skb, id, dir, pr, &f, revision, want_proxy, NULL, &proxy);
	if (verdict != TC_ACT_OK || skb->mark == MESH_TRACE_MARK)
		return verdict;
	if (proxy && dir == MESH_DIR_EGRESS) {
		verdict = to_proxy(skb, &f, id, revision);
		if (verdict == TC_ACT_OK)
			count_traffic(id, dir, skb->len);
		return verdict;
	}
	/* Forwarded traffic only: drops are counted in mesh_drops. */
	count_traffic(id, dir, skb->len);
	if (dir == MESH_DIR_EGRESS && pr == PARSE_IPV4) {
		int local = deliver_locally(skb, &f, revision, &li);

		if (local >= 0)
			return local;
	}
	return TC_ACT_OK;
}

SEC("tc")
int mesh_from_endpoint(struct __sk_buff *skb)
{
	return handle(skb, MESH_DIR_EGRESS);
}

SEC("tc")
int mesh_to_endpoint(struct __sk_buff *skb)
{
	return handle(skb, MESH_DIR_INGRESS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
