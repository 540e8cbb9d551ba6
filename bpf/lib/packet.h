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

/* The fragment bits of iphdr.frag_off (host order), as the kernel's net/ip.h names them. */
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

struct flow {
	__u32 saddr; /* network order */
	__u32 daddr;
	__u16 sport; /* host order; 0 for protocols without ports */
	__u16 dport;
	__u8 proto;
	__u8 tcp_flags; /* FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10 */
	__u8 ttl;
	__u8 frag;   /* enum flow_fragment */
	__u16 ip_id; /* the IPv4 identification, network order (fragments only) */
};

enum flow_fragment {
	FLOW_WHOLE = 0,      /* not fragmented */
	FLOW_FIRST_FRAG = 1, /* offset 0, more fragments follow: carries the ports */
	FLOW_LATER_FRAG = 2, /* offset > 0: no L4 header (lib/fragments.h finds its ports) */
};

enum parse_result {
	PARSE_IPV4 = 0,
	PARSE_ARP = 1,   /* passes: neighbour discovery is not subject to L4 policy */
	PARSE_OTHER = 2, /* IPv6 and everything else */
	PARSE_BAD_IPV4 = 3, /* an IPv4 header no IPv4 stack accepts (version, IHL, lengths) */
};

/* bpf_skb_load_bytes rather than direct packet access: one bounds check in the kernel,
 * and a non-linear skb (GSO, veth with XDP off) reads the same. */
static __always_inline enum parse_result parse_flow(struct __sk_buff *skb, struct flow *f)
{
	struct iphdr ip;
	__u16 proto = bpf_ntohs(skb->protocol);
	__u32 l4, tot_len;

	if (proto == ETH_P_ARP)
		return PARSE_ARP;
	if (proto != ETH_P_IP)
		return PARSE_OTHER;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return PARSE_BAD_IPV4; /* shorter than an IPv4 header */
	f->saddr = ip.saddr;
	f->daddr = ip.daddr;
	f->proto = ip.protocol;
	f->ttl = ip.ttl;
	f->sport = f->dport = 0;
	f->tcp_flags = 0;
	f->frag = FLOW_WHOLE;
	f->ip_id = ip.id;
	if (ip.version != 4 || ip.ihl < 5)
		return PARSE_BAD_IPV4;
	tot_len = bpf_ntohs(ip.tot_len);
	/* tot_len 0 is how a GSO packet above 64 KiB (BIG TCP) says "see the skb". */
	if (tot_len == 0 ? !skb->gso_size : tot_len < ip.ihl * 4 || tot_len > skb->len - ETH_HLEN)
		return PARSE_BAD_IPV4;
	if (ip.frag_off & bpf_htons(IP_OFFSET)) {
		f->frag = FLOW_LATER_FRAG;
		return PARSE_IPV4;
	}
	if (ip.frag_off & bpf_htons(IP_MF))
		f->frag = FLOW_FIRST_FRAG;
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
