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
#ifdef __bpf__
#include <linux/in.h>    /* IPPROTO_*: the kernel's own header on the BPF side... */
#else
#include <netinet/in.h>  /* ...and the C library's in userspace, which must not mix the two */
#endif

/* Map names; meshd pins each under <bpffs>/<node>/<name>. */
#define MESH_MAP_ENDPOINTS "mesh_endpoints"
#define MESH_MAP_LOCAL "mesh_local_ep"
#define MESH_MAP_TRAFFIC "mesh_traffic"
#define MESH_MAP_EVENTS "mesh_events"
#define MESH_MAP_IPCACHE "mesh_ipcache"
#define MESH_MAP_POLICY "mesh_policy"
#define MESH_MAP_POLICY_EP "mesh_policy_ep"
#define MESH_MAP_REVISION "mesh_revision"
/* The map an earlier meshd kept the revision in (struct mesh_policy_state); a start that
 * finds its pin carries the revision over into mesh_revision and removes it. */
#define MESH_MAP_POLICY_STATE_V1 "mesh_pol_state"
#define MESH_MAP_CT "mesh_ct"
#define MESH_MAP_DROPS "mesh_drops"
#define MESH_MAP_VERDICTS "mesh_verdicts"
#define MESH_MAP_SOCKHASH "mesh_sockhash"
#define MESH_MAP_SOCK_STATE "mesh_sock_state"
#define MESH_MAP_REDIRECT_CFG "mesh_redir_cfg"
#define MESH_MAP_REDIRECT_STATS "mesh_redir_stats"
#define MESH_MAP_MONITOR "mesh_monitor"
#define MESH_MAP_FRAGS "mesh_frags"
#define MESH_MAP_CT_STATS "mesh_ct_stats"
#define MESH_MAP_LB_SERVICES "mesh_lb_svc"
#define MESH_MAP_LB_SLOTS "mesh_lb_slot"
#define MESH_MAP_LB_BACKENDS "mesh_lb_be"
#define MESH_MAP_LB_AFFINITY "mesh_lb_aff"
#define MESH_MAP_LB_REVNAT "mesh_lb_revnat"
#define MESH_MAP_LB_STATS "mesh_lb_stats"
#define MESH_MAP_LB_SOCK "mesh_lb_sk"

/* Default capacities; meshd may resize before load with --max-endpoints. */
#define MESH_MAX_ENDPOINTS 1024
#define MESH_EVENTS_BYTES (256 * 1024)
#define MESH_IPCACHE_ENTRIES (2 * 16384)   /* two revision slots */
#define MESH_POLICY_ENTRIES (2 * 131072)   /* two revision slots */
#define MESH_CT_ENTRIES 65536              /* the object's default; meshd sizes it (conntrack-max) */
#define MESH_VERDICT_ENTRIES 16384
#define MESH_SOCKHASH_ENTRIES 65536
#define MESH_FRAG_ENTRIES 8192
#define MESH_LB_FRONTENDS 65536        /* service ports (VIP, port, protocol) */
#define MESH_LB_BACKEND_ENTRIES 262144 /* (frontend, backend) pairs; as many slots */
#define MESH_LB_AFFINITY_ENTRIES 65536
#define MESH_LB_REVNAT_ENTRIES 262144  /* sockets whose peer a translation changed */

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

/*
 * mesh_local_ep: endpoint address -> where to deliver it. A packet from one endpoint to
 * another of the same node is handed by the sender's tc program straight to the
 * receiver's eth0 (bpf_redirect_peer), after the receiver's ingress policy: it skips the
 * node's IP forwarding and the receiver's tc egress program. Written by meshd only.
 */
struct mesh_local_endpoint {
	__u32 ifindex;      /* host-side veth */
	__u32 endpoint_id;
	__u8 mac[6];        /* the endpoint's eth0 */
	__u8 gateway_mac[6];/* the host-side veth: the endpoint's gateway, 169.254.1.1 */
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

/*
 * Policy. Everything a verdict depends on lives in one of two revision slots: revision r
 * lives in slot r & 1 (MESH_SLOT_OF). meshd writes revision r + 1 into the inactive slot,
 * then makes it active by storing it into mesh_revision, one aligned 32-bit word that meshd
 * writes with a single atomic store through the map's mmap (a map update would copy the
 * value with memcpy, which promises readers no whole word). A
 * program reads that word once per run and derives the slot from it, so everything it
 * looks up and every revision it records is that one revision's: never a mix. Before
 * meshd rewrites a slot it waits for an RCU grace period, so no program that read the
 * slot's old revision is still running (Datapath, PolicyMaps.swift).
 */
#define MESH_SLOT_OF(revision) ((__u8)((revision) & 1))
/* A revision no publish ever makes: "not checked under any revision yet". */
#define MESH_REVISION_UNCHECKED 0xffffffffu

/* Identities: a number per distinct label set (endpoints) or per CIDR (outside peers). */
enum mesh_identity {
	MESH_ID_ANY = 0,          /* in policy keys: every peer */
	MESH_ID_HOST = 1,         /* the node itself */
	MESH_ID_WORLD = 2,        /* any address the ipcache does not know */
	MESH_ID_INGRESS = 8,      /* the ingress gateway's connections to backends (Cilium's number) */
	MESH_ID_FIRST_ENDPOINT = 256,
	MESH_ID_FIRST_CIDR = 0x01000000,
};

/* mesh_ipcache (LPM trie): address -> identity of the peer. */
struct mesh_ipcache_key {
	__u32 prefixlen; /* 8 (slot) + 0..32 address bits */
	__u8 slot;
	__u8 addr[4];    /* network order */
	__u8 pad[3];
};

enum mesh_ipcache_flags {
	/* An endpoint of another node whose node accepts TCP to it only through an mTLS
	 * tunnel between the nodes' proxies (an ingress rule requires authentication, or the
	 * node is `mtls: strict`): this node hands its endpoints' connections to it to the
	 * proxy, which opens the tunnel. */
	MESH_IPCACHE_TUNNEL = 1,
};

struct mesh_ipcache_value {
	__u32 identity;
	__u32 endpoint_id; /* 0 unless the address is a local endpoint */
	__u32 flags;       /* enum mesh_ipcache_flags */
};

/* mesh_policy (LPM trie). The fixed part (slot..identity, 96 bits) is always matched in
 * full; then protocol (8 bits, 0 = any protocol), a zero byte, and the destination port
 * (16 bits, network order) as a prefix, so one entry covers a power-of-two port block. */
#define MESH_POLICY_FIXED_BITS 96
struct mesh_policy_key {
	__u32 prefixlen;
	__u8 slot;
	__u8 direction;   /* enum mesh_direction, as seen by endpoint_id */
	__u8 pad1[2];
	__u32 endpoint_id;
	__u32 identity;   /* peer identity, MESH_ID_ANY for every peer */
	__u8 proto;       /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 pad2;
	__u16 dport;      /* network order */
};

enum mesh_policy_action {
	MESH_ACTION_NONE = 0,
	MESH_ACTION_ALLOW = 1,
	MESH_ACTION_DENY = 2,
};

enum mesh_policy_flags {
	/* Allowed through the L7 proxy: every allow rule covering the entry has HTTP rules. */
	MESH_POLICY_L7 = 1,
	/* Allowed only for a peer that proved its identity: an allow rule covering the entry
	 * requires authentication. A flow from another node must arrive through the proxy's
	 * mTLS tunnel (the proxy has checked the peer's certificate); one from this node's
	 * own endpoints needs none (the datapath knows who sent it). */
	MESH_POLICY_AUTH = 2,
};

struct mesh_policy_value {
	__u8 action;     /* enum mesh_policy_action */
	__u8 flags;      /* enum mesh_policy_flags */
	__u8 pad[2];
	__u32 rule_id;   /* index into the revision's rule table held by meshd */
	__u32 policy_id; /* stable hash of the deciding policy, for verdict counters */
	__u32 pad2;
};

/* mesh_policy_ep (hash): per endpoint and slot, whether a direction is enforced. */
struct mesh_policy_ep_key {
	__u32 endpoint_id;
	__u8 slot;
	__u8 pad[3];
};

struct mesh_policy_ep_value {
	__u8 enforce[MESH_DIR_MAX]; /* by enum mesh_direction */
	__u8 pad[2];
	__u32 default_rule_id[MESH_DIR_MAX]; /* "default deny: selected by ..." */
};

/* mesh_revision (array, one __u32, mmapable): the revision in force. The layout below is
 * that of the map earlier versions used instead (MESH_MAP_POLICY_STATE_V1). */
struct mesh_policy_state {
	__u32 reserved; /* 0; was the active slot, which is now always MESH_SLOT_OF(revision) */
	__u32 revision; /* the revision in force */
};

/* mesh_ct (LRU hash, one LRU list for all CPUs): SwiftMesh's own connection tracking, one
 * entry per endpoint, flow and direction of the flow's first packet. Replies match the
 * entry of their original. When the table is full, a new flow evicts the least recently
 * used entries; a flow that keeps sending keeps its entry. */
struct mesh_ct_key {
	__u32 endpoint_id;
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 direction;
	__u8 pad[2];
};

struct mesh_ct_value {
	__u64 created;   /* bpf_ktime_get_coarse_ns(): CLOCK_MONOTONIC, to a tick */
	__u64 last_seen;
	__u32 revision;  /* policy revision the flow was last allowed under */
	__u32 rule_id;
	__u32 peer_identity;
	__u8 closing;    /* FIN or RST seen: expires sooner */
	__u8 seen_reply; /* a packet of the other direction matched it: the flow is established */
	/* 1: the flow's packets from this endpoint go to the L7 proxy. The client's egress
	 * entry of a proxied flow, or the receiver's ingress entry of the proxy's upstream
	 * connection (whose replies belong to the proxy, not to the client's endpoint). Set
	 * when the flow starts and kept for its life: a connection never moves mid-stream. */
	__u8 proxy;
	/* 1: the client's entry of a flow to a routed service VIP (MESH_LB_ROUTED). Its real
	 * peer is whichever backend the proxy picks per request, so the endpoint's egress
	 * policy is judged on the proxy's upstream connections (as the original client, at
	 * the backend), never against the VIP. */
	__u8 routed;
};

/* Conntrack idle lifetimes in seconds, by TCP state: the programs ignore older entries, and
 * meshd's garbage collector deletes them, by the same numbers (mesh_ct_lifetime_s). */
#define MESH_CT_TCP_LIFETIME_S 3600     /* established: a reply was seen */
#define MESH_CT_TCP_SYN_LIFETIME_S 60   /* opening: no reply yet (a scan, a dead server) */
#define MESH_CT_CLOSING_LIFETIME_S 10   /* FIN or RST seen */
#define MESH_CT_OTHER_LIFETIME_S 60     /* UDP and everything else */

static inline __u32 mesh_ct_lifetime_s(__u8 proto, __u8 closing, __u8 seen_reply)
{
	if (closing)
		return MESH_CT_CLOSING_LIFETIME_S;
	if (proto != IPPROTO_TCP)
		return MESH_CT_OTHER_LIFETIME_S;
	return seen_reply ? MESH_CT_TCP_LIFETIME_S : MESH_CT_TCP_SYN_LIFETIME_S;
}

/* mesh_ct_stats (per-CPU array): what became of conntrack entries. An LRU map evicts
 * silently, so meshd derives evictions: created - removed - collected - entries now. */
enum mesh_ct_stat {
	MESH_CT_STAT_CREATED = 0,   /* entries the programs inserted */
	MESH_CT_STAT_REMOVED = 1,   /* entries the programs deleted (a new revision denied the flow) */
	MESH_CT_STAT_COLLECTED = 2, /* entries meshd deleted (expired, endpoint gone); meshd writes it */
	MESH_CT_STAT_MAX = 3,
};

/* Why a packet was dropped. One enum for kernel, metrics and monitor. */
enum mesh_drop_reason {
	MESH_DROP_NONE = 0,
	MESH_DROP_POLICY_DENY = 1,         /* an explicit deny rule */
	MESH_DROP_POLICY_DEFAULT_DENY = 2, /* enforced direction, no rule allows it */
	MESH_DROP_UNSUPPORTED_L3 = 3,      /* not IPv4 (nor ARP) on an enforced endpoint */
	MESH_DROP_MALFORMED_IPV4 = 4,      /* a bad IPv4 header (version, IHL, lengths) on an enforced endpoint */
	MESH_DROP_SPOOFED_SOURCE = 5,      /* an endpoint sent IPv4 from an address not its own */
	/* A flow that policy sends through the L7 proxy, when the proxy is not listening, or
	 * the flow comes from where the redirect cannot reach (the node itself, another node)
	 * or was not seen from its first packet: L7 rules fail closed. */
	MESH_DROP_PROXY_UNAVAILABLE = 6,
	/* A flow from another node that policy (MESH_POLICY_AUTH) or `mtls: strict` accepts
	 * only through the mTLS tunnel, arriving in the clear: whatever address it carries,
	 * nothing proved who sent it. */
	MESH_DROP_AUTH_REQUIRED = 7,
	MESH_DROP_MAX = 8,
};

/*
 * mesh_frags (LRU hash): an IPv4 datagram in fragments -> the ports of its first
 * fragment. Later fragments carry no L4 header; with these ports they are decided (and
 * conntracked) as packets of the first fragment's flow, so every fragment of an allowed
 * datagram passes and every fragment of a denied one is dropped.
 */
struct mesh_frag_key {
	__u32 saddr; /* network order */
	__u32 daddr;
	__u16 id;    /* IPv4 identification, network order */
	__u8 proto;
	__u8 pad;
};

struct mesh_frag_value {
	__u16 sport; /* host order */
	__u16 dport;
};

/* mesh_drops (per-CPU hash): by reason and direction. */
struct mesh_drop_key {
	__u8 reason;
	__u8 direction;
	__u8 pad[2];
};

/* mesh_verdicts (per-CPU hash): new flows decided on enforced endpoints, by policy. */
struct mesh_verdict_key {
	__u32 policy_id; /* 0: default deny */
	__u8 direction;
	__u8 action;     /* enum mesh_policy_action */
	__u8 pad[2];
};

struct mesh_counter {
	__u64 packets;
	__u64 bytes;
};

/*
 * Policy trace: meshd runs the real programs on a synthetic packet with
 * BPF_PROG_TEST_RUN and this skb mark. The program then skips every side effect
 * (conntrack, counters, events), evaluates the packet as a new flow, and returns its
 * decision in skb->cb[], so `meshctl policy trace` can never disagree with the datapath.
 */
#define MESH_TRACE_MARK 0x534d5452 /* "SMTR" */
enum mesh_trace_cb {
	MESH_TRACE_CB_ACTION = 0,   /* enum mesh_policy_action */
	MESH_TRACE_CB_REASON = 1,   /* enum mesh_drop_reason */
	MESH_TRACE_CB_RULE = 2,     /* rule id */
	MESH_TRACE_CB_PEER = 3,     /* peer identity */
	MESH_TRACE_CB_FLAGS = 4,    /* enum mesh_trace_flags */
};

enum mesh_trace_flags {
	MESH_TRACE_ENFORCED = 1,  /* the direction is enforced for the endpoint */
	MESH_TRACE_EVALUATED = 2, /* the program ran the policy (the ifindex is an endpoint's) */
	MESH_TRACE_L7 = 4,        /* allowed through the L7 proxy, whose HTTP rules then apply */
	MESH_TRACE_AUTH = 8,      /* allowed for a proven peer only (MESH_POLICY_AUTH) */
};

/*
 * Socket redirection. A TCP connection between two local endpoints is put in the
 * sockhash (both sockets, keyed by their own 4-tuple; endpoint addresses are unique on a
 * node, so keys are unique across network namespaces). The sk_msg program then hands
 * each message straight to the peer socket's receive queue.
 *
 * Each direction of a connection starts UNDECIDED and makes one decision on its first
 * message: ACCELERATED (the peer is in the map) or PASSTHROUGH. ACCELERATED may later
 * fall back to PASSTHROUGH; PASSTHROUGH never goes back. That is what keeps bytes in
 * order: the receiver drains redirected data before anything that came through the stack,
 * and nothing redirected can overtake data that is already in the stack. When one
 * direction falls back, the other does too, and each socket that writes then leaves the
 * sockhash as soon as that is safe (sockops.bpf.c, maybe_leave), so the connection costs
 * no more than plain TCP from then on. No map holds a kernel pointer.
 */
struct mesh_sock_key {
	__u32 local_ip;   /* network order */
	__u32 remote_ip;
	__u16 local_port; /* host order */
	__u16 remote_port;
};

enum mesh_sock_mode {
	MESH_SOCK_UNDECIDED = 0,
	MESH_SOCK_ACCELERATED = 1,
	MESH_SOCK_PASSTHROUGH = 2,
	MESH_SOCK_DENIED = 3, /* a policy revision refused the flow: every message dropped */
};

struct mesh_sock_state {
	__u32 client_ip;   /* the connection's original direction, for policy re-checks */
	__u32 server_ip;
	__u16 client_port;
	__u16 server_port;
	__u32 client_endpoint;
	__u32 server_endpoint;
	__u32 revision;    /* policy revision the flow was last allowed under */
	/* enum mesh_sock_mode, for messages this socket sends. The peer's program may move
	 * it from UNDECIDED or ACCELERATED to PASSTHROUGH, so both change it only with
	 * compare-and-swap when leaving those two. */
	__u32 mode;
	__u8 fallback;     /* enum mesh_redirect_counter of the fallback, if any */
	__u8 left;         /* 1: the socket has left the sockhash (plain TCP from then on) */
	__u8 pad[2];
	__u64 created;
	/* When this direction stopped redirecting (PASSTHROUGH or DENIED), in
	 * bpf_ktime_get_ns time; 1 if it never redirected; 0 while it may still redirect. */
	__u64 stopped;
};

/* A socket leaves the sockhash only once its peer stopped redirecting to it at least this
 * long ago, so that a message the peer's sk_msg decided to redirect just before has
 * reached the queue by then (see maybe_leave). A second of the slower send path is
 * cheap next to that guarantee: by then the connection's reader is behind anyway, or the
 * switch is off. */
#define MESH_REDIRECT_GRACE_NS (1000ULL * 1000 * 1000)

/* The kernel's TCP_CA_NAME_MAX: a congestion control's name and its NUL. */
#define MESH_CC_NAME_MAX 16

/* mesh_redir_cfg (array, one entry), written by meshd: the sock_ops and sk_msg programs'
 * settings. */
struct mesh_redirect_config {
	__u32 enabled;             /* 0: new connections are not accelerated, existing ones fall back */
	__u32 max_message_bytes;   /* a larger write makes the direction fall back for good; 0: none */
	/* Bytes a reader may leave unread in its redirect queue. The kernel does not hold a
	 * redirecting writer back when the reader stalls, so past this the direction takes
	 * the stack, whose flow control does. 0: no limit. */
	__u32 max_queued_bytes;
	__u32 pad;
	/* Congestion control for TCP connections whose two ends are local endpoints, set as
	 * they are established, whether or not they are accelerated (sockops.bpf.c,
	 * set_local_cc). "" leaves every socket the algorithm it has. */
	char local_cc[MESH_CC_NAME_MAX];
};

/* mesh_redir_stats (per-CPU array): indexes. */
enum mesh_redirect_counter {
	MESH_REDIR_MESSAGES = 0,        /* messages redirected */
	MESH_REDIR_BYTES = 1,           /* bytes redirected */
	MESH_REDIR_SOCKETS_ADDED = 2,   /* sockets put in the sockhash */
	MESH_REDIR_FB_NOT_LOCAL = 3,    /* fallbacks by reason: peer is not a local endpoint */
	MESH_REDIR_FB_DISABLED = 4,     /* the switch is off */
	MESH_REDIR_FB_NO_PEER = 5,      /* first message before the peer socket was known */
	MESH_REDIR_FB_LARGE_WRITE = 6,  /* a write above max_message_bytes (bulk) */
	MESH_REDIR_FB_REDIRECT_FAILED = 7,
	MESH_REDIR_DENIED_MESSAGES = 8, /* messages dropped by a policy revision */
	MESH_REDIR_FB_READER_BEHIND = 9,/* the reader left more than max_queued_bytes unread */
	MESH_REDIR_FB_PEER = 10,        /* the other direction of the connection fell back */
	MESH_REDIR_SOCKETS_LEFT = 11,   /* sockets that left the sockhash after falling back */
	MESH_REDIR_FB_UNSUPPORTED = 12, /* the kernel cannot tell how much a reader has queued */
	MESH_REDIR_CC_APPLIED = 13,     /* local connections' sockets running local_cc from now */
	MESH_REDIR_CC_OWN = 14,         /* ... that keep the algorithm their application or route chose */
	MESH_REDIR_CC_FAILED = 15,      /* ... where the kernel refused local_cc (not available) */
	MESH_REDIR_FB_PROXIED = 16,     /* connections not accelerated: they go through the L7 proxy */
	MESH_REDIR_MAX = 17,
};

/* mesh_monitor (array, one entry): which optional events meshd wants now. Verdict events
 * cost a ring-buffer write per new flow, so they are on only while a `meshctl monitor`
 * asks for them; drops are always reported. */
struct mesh_monitor_config {
	__u32 verdict_events;
	__u32 lb_events; /* a ring-buffer write per load-balancing decision (MESH_EVENT_LB) */
};

/*
 * The L7 proxy (a process of its own in the node's network namespace). A TCP flow whose
 * verdict carries MESH_POLICY_L7 (the sender's egress or the receiver's ingress has HTTP
 * rules for it) is handed to the proxy's transparent listener at tc ingress of the
 * sender's veth (bpf_sk_assign), marked MESH_MARK_TO_PROXY so that the node routes it to
 * itself (a policy rule sends that mark to table MESH_PROXY_ROUTE_TABLE, whose one route is
 * `local 0.0.0.0/0 dev lo`). The proxy's upstream sockets carry SO_MARK
 * MESH_MARK_FROM_PROXY and the client's own address and port (IP_TRANSPARENT), so the
 * receiver's ingress policy judges them as the client, and the datapath neither sends them
 * to the proxy again nor delivers their replies anywhere but to the proxy.
 */
#define MESH_MARK_MASK 0x0f00
#define MESH_MARK_TO_PROXY 0x0a00
#define MESH_MARK_FROM_PROXY 0x0b00
/* With MESH_MARK_FROM_PROXY, outside the mask: the proxy's connection on behalf of the
 * ingress gateway. The receiver's ingress policy judges it as MESH_ID_INGRESS, not as the
 * node address it comes from (only on the proxy's own node: a mark does not cross the wire). */
#define MESH_MARK_GATEWAY 0x1000
#define MESH_PROXY_ROUTE_TABLE 2004
#define MESH_PROXY_RULE_PRIORITY 90
#define MESH_PROXY_DEFAULT_PORT 15001
/* The proxy's mTLS tunnel listener, on every node (HBONE's port). */
#define MESH_TUNNEL_DEFAULT_PORT 15008

/* Ring-buffer events (mesh_events). Every event starts with this header. */
enum mesh_event_type {
	/* A packet crossed a veth whose ifindex has no mesh_endpoints entry: the map and
	 * the attached programs have drifted apart (meshd repairs it on reconcile). */
	MESH_EVENT_UNKNOWN_INTERFACE = 1,
	/* A packet dropped by policy. */
	MESH_EVENT_DROP = 2,
	/* A new flow allowed on an enforced endpoint (first packet only). */
	MESH_EVENT_VERDICT = 3,
	/* A connect() or sendmsg() to a service's VIP translated, or refused (no backend). */
	MESH_EVENT_LB = 4,
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

struct mesh_event_policy {
	struct mesh_event_header hdr;
	__u32 endpoint_id;
	__u32 peer_identity;
	__u32 saddr;      /* network order */
	__u32 daddr;
	__u16 sport;      /* host order */
	__u16 dport;
	__u8 proto;
	__u8 direction;   /* enum mesh_direction, as seen by endpoint_id */
	__u8 action;      /* enum mesh_policy_action */
	__u8 reason;      /* enum mesh_drop_reason, NONE when allowed */
	__u32 rule_id;
	__u32 revision;
	__u32 flags;      /* enum mesh_event_flags */
};

enum mesh_event_flags {
	MESH_EVENT_F_PROXY = 1, /* the flow goes through the L7 proxy */
};

/*
 * Socket-level service load balancing (bpf/lb.bpf.c). cgroup programs on the node's
 * cgroup translate a service's VIP:port to a backend's address and port when a socket
 * connects (TCP, connected UDP) or sends (unconnected UDP), so no packet is ever NATed:
 * an established connection keeps its backend whatever the backend set does later, and
 * the tc programs see (and police) the backend address. recvmsg4 and getpeername4 show
 * the VIP back to the application.
 *
 * A frontend is one port of a service: (VIP, port, protocol). Its backends sit in slots
 * 1..count (mesh_lb_slot), each naming a backend (mesh_lb_be) by endpoint id. meshd
 * changes a backend set so that every slot below count always names a live backend:
 * new backends are written before the count grows; a removed backend's slot is first
 * given another backend, then the count shrinks, then its entries go.
 */
struct mesh_lb_frontend_key {
	__u32 vip;   /* network order */
	__u16 port;  /* network order */
	__u8 proto;  /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 pad;
};

enum mesh_lb_flags {
	MESH_LB_AFFINITY_CLIENT = 1, /* sessionAffinity: ClientIP (per client network namespace) */
	/* An HTTPRoute binds this (TCP) frontend: connect() keeps the VIP, and the tc programs
	 * hand the flow to the L7 proxy, which picks a backend per request. */
	MESH_LB_ROUTED = 2,
};

struct mesh_lb_frontend {
	__u32 frontend_id;        /* meshd's number for (service, port), never 0 */
	__u16 count;              /* backends in slots 1..count; 0: refuse (ECONNREFUSED) */
	__u8 flags;               /* enum mesh_lb_flags */
	__u8 pad;
	__u32 affinity_timeout_s; /* with MESH_LB_AFFINITY_CLIENT */
	__u32 pad2;
};

struct mesh_lb_slot_key {
	__u32 frontend_id;
	__u32 slot; /* 1..count */
};

struct mesh_lb_backend_key {
	__u32 frontend_id;
	__u32 backend_id; /* the endpoint id */
};

struct mesh_lb_backend {
	__u32 addr;   /* network order */
	__u16 port;   /* network order: the resolved targetPort */
	__u16 weight; /* kept for traffic splitting; the choice is uniform today */
};

/* mesh_lb_aff (LRU): the backend a client network namespace last got for a frontend with
 * client affinity; used while younger than the frontend's timeout and still a backend. */
struct mesh_lb_affinity_key {
	__u64 netns_cookie;
	__u32 frontend_id;
	__u32 pad;
};

struct mesh_lb_affinity {
	__u32 backend_id;
	__u32 pad;
	__u64 last_used; /* bpf_ktime_get_ns() */
};

/* mesh_lb_sk (socket storage): a connected socket (TCP, connected UDP) that was
 * translated: its backend, and the VIP and port to show instead (getpeername, replies).
 * It lives and dies with the socket, so a busy client costs no LRU churn. */
struct mesh_lb_sock {
	__u32 backend_addr; /* network order */
	__u16 backend_port; /* network order */
	__u16 vport;        /* network order */
	__u32 vip;
};

/* mesh_lb_revnat (LRU): an unconnected UDP socket that was translated, and the backend a
 * datagram went to -> the VIP and port its replies read as coming from. */
struct mesh_lb_revnat_key {
	__u64 socket_cookie;
	__u32 addr;  /* backend, network order */
	__u16 port;  /* network order */
	__u16 pad;
};

struct mesh_lb_revnat {
	__u32 vip;
	__u16 port;
	__u16 pad;
};

/* mesh_lb_stats (per-CPU hash): decisions per frontend and backend; backend 0 counts the
 * refusals of a frontend without backends. */
struct mesh_lb_stat_key {
	__u32 frontend_id;
	__u32 backend_id;
};

struct mesh_lb_counter {
	__u64 connects; /* connect(): TCP connections and connected UDP sockets */
	__u64 sends;    /* unconnected UDP datagrams */
};

enum mesh_lb_hook {
	MESH_LB_HOOK_CONNECT = 1,
	MESH_LB_HOOK_SENDMSG = 2,
};

struct mesh_event_lb {
	struct mesh_event_header hdr;
	__u64 cgroup_id;   /* the client's cgroup (an endpoint's) */
	__u32 vip;         /* network order */
	__u32 backend_addr;
	__u16 vport;       /* host order */
	__u16 backend_port;
	__u32 frontend_id;
	__u32 backend_id;  /* 0: refused, no backend */
	__u8 proto;
	__u8 hook;         /* enum mesh_lb_hook */
	__u8 affinity;     /* 1: the client's earlier backend, by session affinity */
	__u8 pad;
};

#endif /* SWIFTMESH_MESH_ABI_H */
