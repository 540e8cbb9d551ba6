/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Reads the flow tuple of an IPv4 packet at the tc hook. */
#ifndef SWIFTMESH_LIB_PACKET_H
#define SWIFTMESH_LIB_PACKET_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct flow {
	__u32 saddr; /* network order */
	__u32 daddr;
	__u16 sport; /* host order; 0 for protocols without ports */
	__u16 dport;
	__u8 proto;
	__u8 tcp_flags; /* FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10 */
	__u8 ttl;
	__u8 pad[3];
};

enum parse_result {
	PARSE_IPV4 = 0,
	PARSE_ARP = 1,   /* passes: neighbour discovery is not subject to L4 policy */
	PARSE_OTHER = 2, /* IPv6 and everything else */
};

/* bpf_skb_load_bytes rather than direct packet access: one bounds check in the kernel,
 * and a non-linear skb (GSO, veth with XDP off) reads the same. */
static __always_inline enum parse_result parse_flow(struct __sk_buff *skb, struct flow *f)
{
	struct iphdr ip;
	__u16 proto = bpf_ntohs(skb->protocol);
	__u32 l4;

	if (proto == ETH_P_ARP)
		return PARSE_ARP;
	if (proto != ETH_P_IP)
		return PARSE_OTHER;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return PARSE_OTHER;
	f->saddr = ip.saddr;
	f->daddr = ip.daddr;
	f->proto = ip.protocol;
	f->ttl = ip.ttl;
	f->sport = f->dport = 0;
	f->tcp_flags = 0;
	/* Only the first fragment carries ports; later ones are matched as port 0. */
	if (ip.frag_off & bpf_htons(0x1fff))
		return PARSE_IPV4;
	l4 = ETH_HLEN + ip.ihl * 4;
	if (ip.protocol == IPPROTO_TCP) {
		struct tcphdr th;

		if (bpf_skb_load_bytes(skb, l4, &th, sizeof(th)) < 0)
			return PARSE_IPV4;
		f->sport = bpf_ntohs(th.source);
		f->dport = bpf_ntohs(th.dest);
		f->tcp_flags = (th.fin ? 0x01 : 0) | (th.syn ? 0x02 : 0) | (th.rst ? 0x04 : 0) | (th.ack ? 0x10 : 0);
	} else if (ip.protocol == IPPROTO_UDP) {
		__u16 ports[2];

		if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)) < 0)
			return PARSE_IPV4;
		f->sport = bpf_ntohs(ports[0]);
		f->dport = bpf_ntohs(ports[1]);
	}
	return PARSE_IPV4;
}

#endif
