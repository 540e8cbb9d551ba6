/*
 * Endpoint plumbing through rtnetlink (libmnl) and the kernel's namespace calls, for the
 * Agent's Netlink.swift. Every call returns 0 or a negative errno, and on failure writes
 * the kernel's own words into `err`: the extended-ack message when the kernel sent one,
 * else strerror. `netns_fd` is a network namespace to act in (-1: the caller's).
 */
#ifndef SWIFTMESH_CNETLINK_H
#define SWIFTMESH_CNETLINK_H

#include <stdint.h>

#define SM_NL_ERRLEN 256

/* The rtnetlink values Swift passes (linux/rtnetlink.h, whose own header would clash with
 * the C library's net/if.h in Swift's Glibc module). */
enum {
	SM_SCOPE_UNIVERSE = 0,
	SM_SCOPE_LINK = 253,
	SM_RTN_UNICAST = 1,
	SM_RTN_UNREACHABLE = 7,
	SM_RTPROT_BOOT = 3,
	/* Routes to other nodes' pod CIDRs carry a routing protocol number of their own (197:
	 * iproute2's rt_protos names no daemon with it), so a restarted meshd finds exactly
	 * the routes it made, and nobody else's. */
	SM_RTPROT_SWIFTMESH = 197,
};

typedef struct sm_nl_err {
	char msg[SM_NL_ERRLEN];
} sm_nl_err;

/* Named network namespaces as iproute2 keeps them: a bind mount of a namespace on
 * /run/netns/NAME (the folder made a shared mount first, as `ip netns add` does). */
int sm_netns_add(const char *name, sm_nl_err *err);
int sm_netns_del(const char *name, sm_nl_err *err);
/* An O_RDONLY|O_CLOEXEC descriptor of /run/netns/NAME, or -errno. */
int sm_netns_open(const char *name, sm_nl_err *err);

/* A veth pair: `host` in the caller's namespace, `peer` in `peer_netns_fd`. */
int sm_veth_add(const char *host, const char *peer, int peer_netns_fd, sm_nl_err *err);
int sm_link_del(int netns_fd, const char *ifname, sm_nl_err *err);
int sm_link_up(int netns_fd, const char *ifname, sm_nl_err *err);
/* The interface's index in that namespace (>0), or -errno. */
int sm_link_index(int netns_fd, const char *ifname, sm_nl_err *err);
int sm_link_mac(int netns_fd, const char *ifname, uint8_t mac[6], sm_nl_err *err);
/* Addresses and routes take IPv4 addresses in network byte order. */
int sm_addr_add(int netns_fd, const char *ifname, uint32_t addr, uint8_t prefixlen, uint8_t scope, sm_nl_err *err);
/* RTN_UNICAST via `ifname` (and `gateway` unless 0), or RTN_UNREACHABLE with no device.
 * `replace`: NLM_F_REPLACE, else NLM_F_EXCL. */
int sm_route_add(int netns_fd, uint32_t dst, uint8_t prefixlen, uint32_t gateway, const char *ifname,
		 uint8_t scope, uint8_t type, int replace, sm_nl_err *err);
/* As sm_route_add, the route tagged with `protocol` (RTPROT_*). */
int sm_route_add_proto(int netns_fd, uint32_t dst, uint8_t prefixlen, uint32_t gateway, const char *ifname,
		       uint8_t scope, uint8_t type, int replace, uint8_t protocol, sm_nl_err *err);
/* Deletes the main table's route to dst/prefixlen (any type); -ESRCH when there is none. */
int sm_route_del(int netns_fd, uint32_t dst, uint8_t prefixlen, sm_nl_err *err);
/* The main table's IPv4 routes tagged `protocol`: up to `max` of them into dst, len and
 * gateway (0: none). Returns how many there are (may exceed `max`), or -errno. */
int sm_route_list(int netns_fd, uint8_t protocol, uint32_t *dst, uint8_t *len, uint32_t *gateway, int max,
		  sm_nl_err *err);
/* posix_spawn_file_actions_addclosefrom_np on a posix_spawn_file_actions_t: glibc declares
 * it only with _GNU_SOURCE, which Swift's Glibc module leaves out. */
int sm_spawn_close_from(void *file_actions, int lowfd);
/* The L7 proxy's routing: `ip rule add fwmark MARK/MASK lookup TABLE pref PRIORITY` and
 * `ip route replace local 0.0.0.0/0 dev lo table TABLE`. Idempotent: a rule that exists
 * already is kept. */
int sm_fwmark_local_table(int netns_fd, uint32_t mark, uint32_t mask, uint32_t table, uint32_t priority, sm_nl_err *err);
/* The output interface of the route the kernel picks for `dst` (as `ip route get`). */
int sm_route_oif(int netns_fd, uint32_t dst, sm_nl_err *err);
/* Writes `value` to /proc/sys/PATH as seen from `netns_fd`. */
int sm_sysctl(int netns_fd, const char *path, const char *value, sm_nl_err *err);

#endif
