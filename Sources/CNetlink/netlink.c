/*
 * Endpoint plumbing through rtnetlink with libmnl (see CNetlink.h).
 *
 * libmnl builds and walks the messages; what is written here is only which messages an
 * endpoint needs (a veth pair across namespaces, addresses, routes, link state) and the
 * namespace calls around them. A request to another namespace uses a netlink socket
 * opened inside it: the calling thread enters the namespace with setns(), opens the
 * socket (which stays bound to that namespace) and returns at once.
 */
#define _GNU_SOURCE
#include "CNetlink.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <linux/if_link.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <linux/fib_rules.h>
#include <net/if.h>

#define NETNS_DIR "/run/netns"

_Static_assert(SM_SCOPE_LINK == RT_SCOPE_LINK && SM_RTN_UNREACHABLE == RTN_UNREACHABLE && SM_RTN_UNICAST == RTN_UNICAST,
	       "rtnetlink values");

static int fail(sm_nl_err *err, int e, const char *what, const char *name)
{
	snprintf(err->msg, sizeof(err->msg), "%s %s: %s", what, name ? name : "", strerror(e));
	return -e;
}

/* ---- namespaces ---------------------------------------------------------------- */

/* Enters `netns_fd` on this thread; *orig receives the way back (-1: nothing to undo). */
static int enter(int netns_fd, int *orig)
{
	*orig = -1;
	if (netns_fd < 0)
		return 0;
	*orig = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	if (*orig < 0)
		return -errno;
	if (setns(netns_fd, CLONE_NEWNET) < 0) {
		int e = errno;
		close(*orig);
		*orig = -1;
		return -e;
	}
	return 0;
}

static void leave(int orig)
{
	if (orig < 0)
		return;
	/* A thread left in an endpoint's namespace would plumb the next endpoint there. */
	if (setns(orig, CLONE_NEWNET) < 0)
		abort();
	close(orig);
}

/* A name that is one file right under /run/netns, or -EINVAL: never "", ".", ".." or a
 * path, and never cut short to fit. */
static int netns_path(const char *name, char *path, size_t size, sm_nl_err *err)
{
	if (!*name || strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, "..") ||
	    (size_t)snprintf(path, size, NETNS_DIR "/%s", name) >= size)
		return fail(err, EINVAL, "netns name", name);
	return 0;
}

int sm_netns_open(const char *name, sm_nl_err *err)
{
	char path[256];
	int rc = netns_path(name, path, sizeof(path), err);
	if (rc < 0)
		return rc;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	return fd < 0 ? fail(err, errno, "open netns", name) : fd;
}

struct unshare_job {
	const char *path;
	int rc;
};

/* On a thread of its own: a new namespace for this thread only, bound to the file. */
static void *unshare_thread(void *arg)
{
	struct unshare_job *job = arg;
	job->rc = 0;
	if (unshare(CLONE_NEWNET) < 0 || mount("/proc/thread-self/ns/net", job->path, "none", MS_BIND, NULL) < 0)
		job->rc = -errno;
	return NULL;
}

int sm_netns_add(const char *name, sm_nl_err *err)
{
	char path[256];
	int rc = netns_path(name, path, sizeof(path), err);
	if (rc < 0)
		return rc;
	if (mkdir(NETNS_DIR, 0755) < 0 && errno != EEXIST)
		return fail(err, errno, "mkdir", NETNS_DIR);
	/* Shared, so that the bind mounts below show in every mount namespace, as iproute2
	 * makes it; a folder that is not a mount point yet is bound onto itself first. */
	if (mount("", NETNS_DIR, "none", MS_SHARED | MS_REC, NULL) < 0) {
		if (errno != EINVAL || mount(NETNS_DIR, NETNS_DIR, "none", MS_BIND | MS_REC, NULL) < 0 ||
		    mount("", NETNS_DIR, "none", MS_SHARED | MS_REC, NULL) < 0)
			return fail(err, errno, "make shared", NETNS_DIR);
	}
	int fd = open(path, O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0);
	if (fd < 0)
		return fail(err, errno, "create netns", name);
	close(fd);
	struct unshare_job job = { .path = path };
	pthread_t t;
	rc = pthread_create(&t, NULL, unshare_thread, &job);
	if (rc == 0)
		pthread_join(t, NULL);
	else
		job.rc = -rc;
	if (job.rc < 0) {
		unlink(path);
		return fail(err, -job.rc, "create netns", name);
	}
	return 0;
}

int sm_netns_del(const char *name, sm_nl_err *err)
{
	char path[256];
	int rc = netns_path(name, path, sizeof(path), err);
	if (rc < 0)
		return rc;
	if (umount2(path, MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT)
		return fail(err, errno, "unmount netns", name);
	if (unlink(path) < 0 && errno != ENOENT)
		return fail(err, errno, "remove netns", name);
	return 0;
}

int sm_sysctl(int netns_fd, const char *path, const char *value, sm_nl_err *err)
{
	char full[256];
	int orig, rc = enter(netns_fd, &orig);
	if (rc < 0)
		return fail(err, -rc, "enter netns for sysctl", path);
	snprintf(full, sizeof(full), "/proc/sys/%s", path);
	/* /proc/sys/net shows the namespace of the thread that opens it. */
	int fd = open(full, O_WRONLY | O_CLOEXEC);
	leave(orig);
	if (fd < 0)
		return fail(err, errno, "open", full);
	ssize_t n = write(fd, value, strlen(value));
	int e = errno;
	close(fd);
	return n < 0 ? fail(err, e, "write", full) : 0;
}

/* ---- netlink ----------------------------------------------------------------------- */

struct nl {
	struct mnl_socket *sock;
	unsigned int portid;
	unsigned int seq;
};

static int nl_open(struct nl *nl, int netns_fd, sm_nl_err *err)
{
	int orig, rc = enter(netns_fd, &orig), one = 1;
	if (rc < 0)
		return fail(err, -rc, "enter netns", "");
	nl->sock = mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC);
	rc = nl->sock ? 0 : -errno;
	leave(orig);
	if (rc < 0)
		return fail(err, -rc, "netlink socket", "");
	/* Ask for the kernel's own words with each error. */
	mnl_socket_setsockopt(nl->sock, NETLINK_EXT_ACK, &one, sizeof(one));
	mnl_socket_setsockopt(nl->sock, NETLINK_CAP_ACK, &one, sizeof(one));
	if (mnl_socket_bind(nl->sock, 0, MNL_SOCKET_AUTOPID) < 0) {
		rc = errno;
		mnl_socket_close(nl->sock);
		return fail(err, rc, "netlink bind", "");
	}
	nl->portid = mnl_socket_get_portid(nl->sock);
	nl->seq = (unsigned int)time(NULL);
	return 0;
}

static void nl_close(struct nl *nl) { mnl_socket_close(nl->sock); }

/* The extended-ack text of an error message, if the kernel sent one. */
static const char *extack(const struct nlmsghdr *nlh)
{
	const struct nlmsgerr *e = mnl_nlmsg_get_payload(nlh);
	const struct nlattr *a;
	size_t off = sizeof(*e);
	if (!(nlh->nlmsg_flags & NLM_F_ACK_TLVS))
		return NULL;
	if (!(nlh->nlmsg_flags & NLM_F_CAPPED))
		off += e->msg.nlmsg_len - sizeof(struct nlmsghdr);
	mnl_attr_for_each(a, nlh, off) {
		if (mnl_attr_get_type(a) == NLMSGERR_ATTR_MSG && mnl_attr_validate(a, MNL_TYPE_NUL_STRING) == 0)
			return mnl_attr_get_str(a);
	}
	return NULL;
}

/* Sends one request with NLM_F_ACK and reads until its ack or error; other messages of
 * the answer go to `cb`. */
static int nl_talk(struct nl *nl, struct nlmsghdr *nlh, int (*cb)(const struct nlmsghdr *, void *), void *data,
		   sm_nl_err *err, const char *what, const char *name)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	nlh->nlmsg_flags |= NLM_F_ACK;
	nlh->nlmsg_seq = ++nl->seq;
	if (mnl_socket_sendto(nl->sock, nlh, nlh->nlmsg_len) < 0)
		return fail(err, errno, what, name);
	for (;;) {
		ssize_t n = mnl_socket_recvfrom(nl->sock, buf, sizeof(buf));
		if (n < 0)
			return fail(err, errno, what, name);
		const struct nlmsghdr *m = (const struct nlmsghdr *)buf;
		int len = (int)n;
		for (; mnl_nlmsg_ok(m, len); m = mnl_nlmsg_next(m, &len)) {
			if (m->nlmsg_seq != nl->seq || m->nlmsg_pid != nl->portid)
				continue;
			if (m->nlmsg_type == NLMSG_ERROR) {
				const struct nlmsgerr *e = mnl_nlmsg_get_payload(m);
				if (e->error == 0)
					return 0;
				const char *text = extack(m);
				if (text)
					snprintf(err->msg, sizeof(err->msg), "%s %s: %s (%s)", what, name ? name : "", text, strerror(-e->error));
				else
					fail(err, -e->error, what, name);
				return e->error;
			}
			if (m->nlmsg_type == NLMSG_DONE)
				return 0;
			if (cb && cb(m, data) < 0)
				return fail(err, EPROTO, what, name);
		}
	}
}

static struct nlmsghdr *link_msg(char *buf, uint16_t type, uint16_t flags, const char *ifname)
{
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	nlh->nlmsg_type = type;
	nlh->nlmsg_flags = NLM_F_REQUEST | flags;
	struct ifinfomsg *ifi = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifi));
	ifi->ifi_family = AF_UNSPEC;
	if (ifname)
		mnl_attr_put_strz(nlh, IFLA_IFNAME, ifname);
	return nlh;
}

int sm_veth_add(const char *host, const char *peer, int peer_netns_fd, sm_nl_err *err)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct nl nl;
	int rc = nl_open(&nl, -1, err);
	if (rc < 0)
		return rc;
	struct nlmsghdr *nlh = link_msg(buf, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, host);
	struct nlattr *info = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
	mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "veth");
	struct nlattr *data = mnl_attr_nest_start(nlh, IFLA_INFO_DATA);
	struct nlattr *p = mnl_attr_nest_start(nlh, VETH_INFO_PEER);
	/* The peer is an ifinfomsg of its own followed by its attributes. */
	struct ifinfomsg *pi = mnl_nlmsg_get_payload_tail(nlh);
	memset(pi, 0, sizeof(*pi));
	pi->ifi_family = AF_UNSPEC;
	nlh->nlmsg_len += MNL_ALIGN(sizeof(*pi));
	mnl_attr_put_strz(nlh, IFLA_IFNAME, peer);
	if (peer_netns_fd >= 0)
		mnl_attr_put_u32(nlh, IFLA_NET_NS_FD, (uint32_t)peer_netns_fd);
	mnl_attr_nest_end(nlh, p);
	mnl_attr_nest_end(nlh, data);
	mnl_attr_nest_end(nlh, info);
	rc = nl_talk(&nl, nlh, NULL, NULL, err, "add veth", host);
	nl_close(&nl);
	return rc;
}

int sm_link_del(int netns_fd, const char *ifname, sm_nl_err *err)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct nl nl;
	int rc = nl_open(&nl, netns_fd, err);
	if (rc < 0)
		return rc;
	rc = nl_talk(&nl, link_msg(buf, RTM_DELLINK, 0, ifname), NULL, NULL, err, "delete link", ifname);
	nl_close(&nl);
	return rc;
}

int sm_link_up(int netns_fd, const char *ifname, sm_nl_err *err)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct nl nl;
	int rc = nl_open(&nl, netns_fd, err);
	if (rc < 0)
		return rc;
	struct nlmsghdr *nlh = link_msg(buf, RTM_NEWLINK, 0, ifname);
	struct ifinfomsg *ifi = mnl_nlmsg_get_payload(nlh);
	ifi->ifi_change = IFF_UP;
	ifi->ifi_flags = IFF_UP;
	rc = nl_talk(&nl, nlh, NULL, NULL, err, "set link up", ifname);
	nl_close(&nl);
	return rc;
}

struct link_info {
	int index;
	uint8_t mac[6];
	int has_mac;
};

static int link_attr(const struct nlattr *a, void *data)
{
	struct link_info *li = data;
	if (mnl_attr_get_type(a) == IFLA_ADDRESS && mnl_attr_get_payload_len(a) == 6) {
		memcpy(li->mac, mnl_attr_get_payload(a), 6);
		li->has_mac = 1;
	}
	return MNL_CB_OK;
}

static int link_reply(const struct nlmsghdr *nlh, void *data)
{
	struct link_info *li = data;
	if (nlh->nlmsg_type != RTM_NEWLINK)
		return 0;
	const struct ifinfomsg *ifi = mnl_nlmsg_get_payload(nlh);
	li->index = ifi->ifi_index;
	mnl_attr_parse(nlh, sizeof(*ifi), link_attr, li);
	return 0;
}

static int link_get(int netns_fd, const char *ifname, struct link_info *li, sm_nl_err *err)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct nl nl;
	int rc = nl_open(&nl, netns_fd, err);
	if (rc < 0)
		return rc;
	memset(li, 0, sizeof(*li));
	rc = nl_talk(&nl, link_msg(buf, RTM_GETLINK, 0, ifname), link_reply, li, err, "get link", ifname);
	nl_close(&nl);
	if (rc == 0 && li->index <= 0)
		rc = fail(err, ENODEV, "get link", ifname);
	return rc;
}

int sm_link_index(int netns_fd, const char *ifname, sm_nl_err *err)
{
	struct link_info li;
	int rc = link_get(netns_fd, ifname, &li, err);
	return rc < 0 ? rc : li.index;
}

int sm_link_mac(int netns_fd, const char *ifname, uint8_t mac[6], sm_nl_err *err)
{
	struct link_info li;
	int rc = link_get(netns_fd, ifname, &li, err);
	if (rc < 0)
		return rc;
	if (!li.has_mac)
		return fail(err, ENODATA, "no MAC address on", ifname);
	memcpy(mac, li.mac, 6);
	return 0;
}

int sm_addr_add(int netns_fd, const char *ifname, uint32_t addr, uint8_t prefixlen, uint8_t scope, sm_nl_err *err)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct link_info li;
	struct nl nl;
	int rc = link_get(netns_fd, ifname, &li, err);
	if (rc < 0)
		return rc;
	if ((rc = nl_open(&nl, netns_fd, err)) < 0)
		return rc;
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	nlh->nlmsg_type = RTM_NEWADDR;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL;
	struct ifaddrmsg *ifa = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifa));
	ifa->ifa_family = AF_INET;
	ifa->ifa_prefixlen = prefixlen;
	ifa->ifa_scope = scope;
	ifa->ifa_index = (uint32_t)li.index;
	mnl_attr_put_u32(nlh, IFA_LOCAL, addr);
	mnl_attr_put_u32(nlh, IFA_ADDRESS, addr);
	rc = nl_talk(&nl, nlh, NULL, NULL, err, "add address on", ifname);
	nl_close(&nl);
	return rc;
}

int sm_route_add(int netns_fd, uint32_t dst, uint8_t prefixlen, uint32_t gateway, const char *ifname,
		 uint8_t scope, uint8_t type, int replace, sm_nl_err *err)
{
	return sm_route_add_proto(netns_fd, dst, prefixlen, gateway, ifname, scope, type, replace, RTPROT_BOOT, err);
}

int sm_route_add_proto(int netns_fd, uint32_t dst, uint8_t prefixlen, uint32_t gateway, const char *ifname,
		       uint8_t scope, uint8_t type, int replace, uint8_t protocol, sm_nl_err *err)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct link_info li = { 0 };
	struct nl nl;
	int rc;
	if (ifname && (rc = link_get(netns_fd, ifname, &li, err)) < 0)
		return rc;
	if ((rc = nl_open(&nl, netns_fd, err)) < 0)
		return rc;
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	nlh->nlmsg_type = RTM_NEWROUTE;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_CREATE | (replace ? NLM_F_REPLACE : NLM_F_EXCL);
	struct rtmsg *rtm = mnl_nlmsg_put_extra_header(nlh, sizeof(*rtm));
	rtm->rtm_family = AF_INET;
	rtm->rtm_dst_len = prefixlen;
	rtm->rtm_table = RT_TABLE_MAIN;
	rtm->rtm_protocol = protocol;
	rtm->rtm_scope = scope;
	rtm->rtm_type = type;
	if (prefixlen)
		mnl_attr_put_u32(nlh, RTA_DST, dst);
	if (gateway)
		mnl_attr_put_u32(nlh, RTA_GATEWAY, gateway);
	if (ifname)
		mnl_attr_put_u32(nlh, RTA_OIF, (uint32_t)li.index);
	char what[64];
	struct in_addr in = { .s_addr = dst };
	snprintf(what, sizeof(what), "%s/%u", inet_ntoa(in), prefixlen);
	rc = nl_talk(&nl, nlh, NULL, NULL, err, "add route", what);
	nl_close(&nl);
	return rc;
}

int sm_fwmark_local_table(int netns_fd, uint32_t mark, uint32_t mask, uint32_t table, uint32_t priority, sm_nl_err *err)
{
	char buf[MNL_SOCKET_BUFFER_SIZE], what[64];
	struct link_info lo = { 0 };
	struct nl nl;
	int rc;

	if ((rc = link_get(netns_fd, "lo", &lo, err)) < 0)
		return rc;
	if ((rc = nl_open(&nl, netns_fd, err)) < 0)
		return rc;
	snprintf(what, sizeof(what), "table %u", table);

	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	nlh->nlmsg_type = RTM_NEWROUTE;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE;
	struct rtmsg *rtm = mnl_nlmsg_put_extra_header(nlh, sizeof(*rtm));
	rtm->rtm_family = AF_INET;
	rtm->rtm_dst_len = 0;
	rtm->rtm_table = RT_TABLE_UNSPEC; /* the table is in RTA_TABLE: numbers above 255 */
	rtm->rtm_protocol = RTPROT_BOOT;
	rtm->rtm_scope = RT_SCOPE_HOST;
	rtm->rtm_type = RTN_LOCAL;
	mnl_attr_put_u32(nlh, RTA_TABLE, table);
	mnl_attr_put_u32(nlh, RTA_OIF, (uint32_t)lo.index);
	rc = nl_talk(&nl, nlh, NULL, NULL, err, "add local default route in", what);
	if (rc < 0)
		goto out;

	nlh = mnl_nlmsg_put_header(buf);
	nlh->nlmsg_type = RTM_NEWRULE;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL;
	struct fib_rule_hdr *frh = mnl_nlmsg_put_extra_header(nlh, sizeof(*frh));
	frh->family = AF_INET;
	frh->action = FR_ACT_TO_TBL;
	frh->table = RT_TABLE_UNSPEC;
	mnl_attr_put_u32(nlh, FRA_TABLE, table);
	mnl_attr_put_u32(nlh, FRA_FWMARK, mark);
	mnl_attr_put_u32(nlh, FRA_FWMASK, mask);
	mnl_attr_put_u32(nlh, FRA_PRIORITY, priority);
	rc = nl_talk(&nl, nlh, NULL, NULL, err, "add fwmark rule to", what);
	if (rc == -EEXIST) {
		memset(err, 0, sizeof(*err));
		rc = 0;
	}
out:
	nl_close(&nl);
	return rc;
}

static int route_attr(const struct nlattr *a, void *data)
{
	if (mnl_attr_get_type(a) == RTA_OIF && mnl_attr_get_payload_len(a) == 4)
		*(int *)data = (int)mnl_attr_get_u32(a);
	return MNL_CB_OK;
}

static int route_reply(const struct nlmsghdr *nlh, void *data)
{
	if (nlh->nlmsg_type == RTM_NEWROUTE)
		mnl_attr_parse(nlh, sizeof(struct rtmsg), route_attr, data);
	return 0;
}

int sm_route_oif(int netns_fd, uint32_t dst, sm_nl_err *err)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct nl nl;
	int rc = nl_open(&nl, netns_fd, err), oif = 0;
	if (rc < 0)
		return rc;
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	nlh->nlmsg_type = RTM_GETROUTE;
	nlh->nlmsg_flags = NLM_F_REQUEST;
	struct rtmsg *rtm = mnl_nlmsg_put_extra_header(nlh, sizeof(*rtm));
	rtm->rtm_family = AF_INET;
	rtm->rtm_dst_len = 32;
	mnl_attr_put_u32(nlh, RTA_DST, dst);
	struct in_addr in = { .s_addr = dst };
	rc = nl_talk(&nl, nlh, route_reply, &oif, err, "get route to", inet_ntoa(in));
	nl_close(&nl);
	return rc < 0 ? rc : oif;
}

int sm_route_del(int netns_fd, uint32_t dst, uint8_t prefixlen, sm_nl_err *err)
{
	char buf[MNL_SOCKET_BUFFER_SIZE], what[64];
	struct nl nl;
	int rc = nl_open(&nl, netns_fd, err);
	if (rc < 0)
		return rc;
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	nlh->nlmsg_type = RTM_DELROUTE;
	nlh->nlmsg_flags = NLM_F_REQUEST;
	struct rtmsg *rtm = mnl_nlmsg_put_extra_header(nlh, sizeof(*rtm));
	rtm->rtm_family = AF_INET;
	rtm->rtm_dst_len = prefixlen;
	rtm->rtm_table = RT_TABLE_MAIN;
	rtm->rtm_scope = RT_SCOPE_NOWHERE;
	if (prefixlen)
		mnl_attr_put_u32(nlh, RTA_DST, dst);
	struct in_addr in = { .s_addr = dst };
	snprintf(what, sizeof(what), "%s/%u", inet_ntoa(in), prefixlen);
	rc = nl_talk(&nl, nlh, NULL, NULL, err, "delete route", what);
	nl_close(&nl);
	return rc;
}

struct route_list {
	uint8_t protocol;
	uint32_t *dst, *gateway;
	uint8_t *len;
	int max, count;
};

struct route_attrs {
	uint32_t dst, gateway, table;
};

static int route_list_attr(const struct nlattr *a, void *data)
{
	struct route_attrs *r = data;
	if (mnl_attr_get_payload_len(a) != 4)
		return MNL_CB_OK;
	switch (mnl_attr_get_type(a)) {
	case RTA_DST: r->dst = mnl_attr_get_u32(a); break;
	case RTA_GATEWAY: r->gateway = mnl_attr_get_u32(a); break;
	case RTA_TABLE: r->table = mnl_attr_get_u32(a); break;
	}
	return MNL_CB_OK;
}

static int route_list_reply(const struct nlmsghdr *nlh, void *data)
{
	struct route_list *l = data;
	const struct rtmsg *rtm = mnl_nlmsg_get_payload(nlh);
	struct route_attrs r = { 0 };
	if (nlh->nlmsg_type != RTM_NEWROUTE || rtm->rtm_family != AF_INET || rtm->rtm_protocol != l->protocol)
		return 0;
	r.table = rtm->rtm_table;
	mnl_attr_parse(nlh, sizeof(*rtm), route_list_attr, &r);
	if (r.table != RT_TABLE_MAIN)
		return 0;
	if (l->count < l->max) {
		l->dst[l->count] = r.dst;
		l->len[l->count] = rtm->rtm_dst_len;
		l->gateway[l->count] = r.gateway;
	}
	l->count++;
	return 0;
}

int sm_route_list(int netns_fd, uint8_t protocol, uint32_t *dst, uint8_t *len, uint32_t *gateway, int max,
		  sm_nl_err *err)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct route_list l = { .protocol = protocol, .dst = dst, .gateway = gateway, .len = len, .max = max };
	struct nl nl;
	int rc = nl_open(&nl, netns_fd, err);
	if (rc < 0)
		return rc;
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	nlh->nlmsg_type = RTM_GETROUTE;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	struct rtmsg *rtm = mnl_nlmsg_put_extra_header(nlh, sizeof(*rtm));
	rtm->rtm_family = AF_INET;
	rc = nl_talk(&nl, nlh, route_list_reply, &l, err, "list routes", "");
	nl_close(&nl);
	return rc < 0 ? rc : l.count;
}

int sm_spawn_close_from(void *file_actions, int lowfd)
{
	return posix_spawn_file_actions_addclosefrom_np((posix_spawn_file_actions_t *)file_actions, lowfd);
}
