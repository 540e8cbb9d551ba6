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

/* ICMP message types (RFC 792), as linux/icmp.h names them: that header pulls in the C
 * library's, which the BPF target does not have. */
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

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
	/* An ICMP error (destination unreachable, time exceeded, parameter problem) carries
	 * the head of the packet it is about: that packet's flow, as parse_flow reads flows. */
	__u8 icmp_error;
	__u8 inner_proto;
	__u16 inner_sport;
	__u16 inner_dport;
	__u8 icmp_echo_request; /* an echo request: never the reply of a tracked flow */
	__u8 pad;
	__u32 inner_saddr;
	__u32 inner_daddr;
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

/*
 * What stands for ports in an ICMP flow: policy matches the ICMP type as the destination
 * port (a CiliumNetworkPolicy `icmps` type), and an echo and its reply must be one flow to
 * conntrack. So an echo request is (source port: its identifier, destination port: type 8)
 * and a reply (8, identifier): the reply's ports are the request's, swapped, as for TCP.
 * Other messages are (0, their type).
 */
static __always_inline void icmp_ports(__u8 type, __u16 id, __u16 *sport, __u16 *dport)
{
	if (type == ICMP_ECHO) {
		*sport = id;
		*dport = ICMP_ECHO;
	} else if (type == ICMP_ECHOREPLY) {
		*sport = ICMP_ECHO;
		*dport = id;
	} else {
		*sport = 0;
		*dport = type;
	}
}

/* The flow of the packet an ICMP error quotes (its IPv4 header and first 8 bytes, at
 * `off`). Returns 0 when the quote is too short to name a flow. */
static __always_inline int parse_quoted(struct __sk_buff *skb, __u32 off, struct flow *f)
{
	struct iphdr ip;
	__u8 l4[8];

	if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0 || ip.version != 4 || ip.ihl < 5)
		return 0;
	if (bpf_skb_load_bytes(skb, off + ip.ihl * 4, l4, sizeof(l4)) < 0)
		return 0;
	f->inner_saddr = ip.saddr;
	f->inner_daddr = ip.daddr;
	f->inner_proto = ip.protocol;
	if (ip.protocol == IPPROTO_ICMP) {
		icmp_ports(l4[0], (__u16)l4[4] << 8 | l4[5], &f->inner_sport, &f->inner_dport);
	} else {
		f->inner_sport = (__u16)l4[0] << 8 | l4[1];
		f->inner_dport = (__u16)l4[2] << 8 | l4[3];
	}
	return 1;
}

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
	f->icmp_error = 0;
	f->icmp_echo_request = 0;
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
	} else if (ip.protocol == IPPROTO_ICMP) {
		__u8 ih[8]; /* type, code, checksum, then identifier and sequence (echo) */

		if (bpf_skb_load_bytes(skb, l4, ih, sizeof(ih)) < 0)
			return PARSE_IPV4;
		icmp_ports(ih[0], (__u16)ih[4] << 8 | ih[5], &f->sport, &f->dport);
		f->icmp_echo_request = ih[0] == ICMP_ECHO;
		if (ih[0] == ICMP_DEST_UNREACH || ih[0] == ICMP_TIME_EXCEEDED || ih[0] == ICMP_PARAMETERPROB)
			f->icmp_error = parse_quoted(skb, l4 + sizeof(ih), f);
	}
	return PARSE_IPV4;
}

#endif
