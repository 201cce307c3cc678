// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * l2announcer ARP / IPv6 Neighbor Solicitation responder.
 *
 * Answers ARP requests and Neighbor Solicitations for the Service IPs listed
 * in l2_responder_v4 / l2_responder_v6 for the ingress interface, exactly as
 * Linux answers for an address it owns (RFC 826, RFC 5227, RFC 4861 §7.1.1;
 * bpf/README.md lists every rule), while three gates hold: the agent is alive
 * (agent_liveness), the entry's lease fence lies in the future (lease_fence)
 * and so does the node fence (l2_responder_node_fence). The reply is built in
 * place and sent back out of the interface it came in on. Every other frame
 * is left untouched and handed on (TC: TC_ACT_UNSPEC, so later TCX programs
 * and legacy tc filters still run; XDP: XDP_PASS).
 *
 * The same logic is compiled twice: `l2_responder` (TC, SEC("classifier"))
 * and `l2_responder_xdp` (XDP). See bpf/README.md for the map contract.
 *
 * Multi-byte fields are read byte by byte or through memcpy into locals:
 * nothing reads a struct through a pointer of another type, so the code is
 * correct under strict aliasing without -fno-strict-aliasing.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <stdbool.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* ---- map contract (mirrored by bpf/src/maps.rs) ------------------------ */

#define L2_RESPONDER_MAX_ENTRIES 16384
#define LEASE_FENCE_SLOTS 65536
#define IFMAC_MAX_ENTRIES 4096

struct l2_responder_v4_key {
	__be32 ip;
	__u32 ifindex;
};

struct l2_responder_v6_key {
	__u8 ip[16];
	__u32 ifindex;
	__u32 pad;
};

struct l2_responder_entry {
	__u64 responses_sent;
	__u32 fence_slot;
	__u32 flags;
};

struct l2_responder_ifmac {
	__u8 addr[6];
	__u16 pad;
};

struct l2_responder_config {
	__u64 max_liveness_ns;
	__u64 reserved;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct l2_responder_v4_key);
	__type(value, struct l2_responder_entry);
	__uint(max_entries, L2_RESPONDER_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} l2_responder_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct l2_responder_v6_key);
	__type(value, struct l2_responder_entry);
	__uint(max_entries, L2_RESPONDER_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} l2_responder_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} agent_liveness SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, LEASE_FENCE_SLOTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lease_fence SEC(".maps");

/* One deadline for every entry of this node (CLOCK_MONOTONIC ns): extended
 * by each node-heartbeat renewal, u64::MAX in per-Service election mode. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} l2_responder_node_fence SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct l2_responder_ifmac);
	__uint(max_entries, IFMAC_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} l2_responder_ifmac SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct l2_responder_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} l2_responder_config SEC(".maps");

/* ---- packet layouts ---------------------------------------------------- */

#define ARPHRD_ETHER 1
#define ARPOP_REQUEST 1
#define ARPOP_REPLY 2
#define IPPROTO_ICMPV6 58
#define ND_NEIGHBOR_SOLICIT 135
#define ND_NEIGHBOR_ADVERT 136
#define ND_OPT_SOURCE_LL_ADDR 1
#define ND_OPT_TARGET_LL_ADDR 2
#define NA_FLAG_SOLICITED 0x40
#define NA_FLAG_OVERRIDE 0x20
#define NDP_HOP_LIMIT 255

/* Smallest NS is 24 bytes (type, code, checksum, reserved, target); options
 * come in units of 8 bytes. Longer solicitations are passed to the kernel
 * (a real one carries a source link-layer address and at most a nonce). */
#define NS_MIN_LEN 24
#define NS_MAX_LEN 256
#define NS_MAX_OPTS ((NS_MAX_LEN - NS_MIN_LEN) / 8)
#define NA_LEN 32

/* The ARP reply is an Ethernet frame of the minimum size (60 bytes without
 * FCS): 14 + 28 bytes and 18 bytes of zero padding. */
#define ETH_MIN_FRAME 60

struct arp_eth {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[ETH_ALEN];
	__u8 spa[4];
	__u8 tha[ETH_ALEN];
	__u8 tpa[4];
} __attribute__((packed));

struct arp_reply_frame {
	struct ethhdr eth;
	struct arp_eth arp;
	__u8 pad[ETH_MIN_FRAME - sizeof(struct ethhdr) - sizeof(struct arp_eth)];
} __attribute__((packed));

struct ip6_hdr {
	__u8 vtc_flow[4];
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
} __attribute__((packed));

struct nd_msg {
	__u8 type;
	__u8 code;
	__be16 csum;
	__u8 flags;
	__u8 reserved[3];
	__u8 target[16];
} __attribute__((packed));

struct na_msg {
	struct nd_msg nd;
	__u8 opt_type;
	__u8 opt_len;
	__u8 opt_mac[ETH_ALEN];
} __attribute__((packed));

struct na_frame {
	struct ethhdr eth;
	struct ip6_hdr ip6;
	struct na_msg na;
} __attribute__((packed));

#define ETH_LEN sizeof(struct ethhdr)
#define ARP_FRAME_LEN (ETH_LEN + sizeof(struct arp_eth))
#define IP6_OFF ETH_LEN
#define ND_OFF (ETH_LEN + sizeof(struct ip6_hdr))
#define NA_FRAME_LEN (ND_OFF + NA_LEN)

/* ---- context abstraction: TC skb or XDP buffer -------------------------- */

static __always_inline void *ctx_data(void *ctx, const bool xdp)
{
	if (xdp)
		return (void *)(long)((struct xdp_md *)ctx)->data;
	return (void *)(long)((struct __sk_buff *)ctx)->data;
}

static __always_inline void *ctx_data_end(void *ctx, const bool xdp)
{
	if (xdp)
		return (void *)(long)((struct xdp_md *)ctx)->data_end;
	return (void *)(long)((struct __sk_buff *)ctx)->data_end;
}

static __always_inline __u32 ctx_ifindex(void *ctx, const bool xdp)
{
	if (xdp)
		return ((struct xdp_md *)ctx)->ingress_ifindex;
	return ((struct __sk_buff *)ctx)->ingress_ifindex;
}

static __always_inline int verdict_pass(const bool xdp)
{
	return xdp ? XDP_PASS : TC_ACT_UNSPEC;
}

static __always_inline int verdict_send(__u32 ifindex, const bool xdp)
{
	if (xdp)
		return XDP_TX;
	return bpf_redirect(ifindex, 0);
}

/* After a failed rewrite the frame is neither the request nor a reply. */
static __always_inline int verdict_drop(const bool xdp)
{
	return xdp ? XDP_DROP : TC_ACT_SHOT;
}

/* Makes at least `len` bytes directly readable (TC only: an skb may hold part
 * of a frame outside its linear area). Returns false when the frame is
 * shorter than `len`. */
static __always_inline bool ctx_pull(void *ctx, __u32 len, const bool xdp)
{
	void *data = ctx_data(ctx, xdp);
	void *end = ctx_data_end(ctx, xdp);

	if (data + len <= end)
		return true;
	if (xdp)
		return false;
	if (((struct __sk_buff *)ctx)->len < len)
		return false;
	return bpf_skb_pull_data(ctx, len) == 0;
}

/* Sets the frame length to exactly `len` bytes. Called even when the length
 * already fits (a no-op then): a single path keeps clang from merging packet
 * pointers of two paths, which the verifier cannot follow. */
static __always_inline bool ctx_resize(void *ctx, __u32 len, const bool xdp)
{
	if (xdp) {
		/* The verifier forbids pointer arithmetic on data_end, so ask. */
		__u64 cur = bpf_xdp_get_buff_len(ctx);

		return bpf_xdp_adjust_tail(ctx, (int)len - (int)cur) == 0;
	}
	return bpf_skb_change_tail(ctx, len, 0) == 0;
}

/* Copies `len` bytes at `off` of the frame into `buf` (which may span the
 * non-linear part of an skb or further XDP buffers); false when the frame is
 * shorter. */
static __always_inline bool ctx_load(void *ctx, __u32 off, void *buf, __u32 len, const bool xdp)
{
	if (xdp)
		return bpf_xdp_load_bytes(ctx, off, buf, len) == 0;
	return bpf_skb_load_bytes(ctx, off, buf, len) == 0;
}

/* ---- gates --------------------------------------------------------------- */

/* The agent refreshed agent_liveness[0] less than max_liveness_ns ago. An
 * unset liveness (0), an unset maximum (0) or a liveness in the future all
 * fail closed. */
static __always_inline bool agent_alive(__u64 now)
{
	__u32 zero = 0;
	__u64 *last = bpf_map_lookup_elem(&agent_liveness, &zero);
	struct l2_responder_config *cfg = bpf_map_lookup_elem(&l2_responder_config, &zero);

	if (!last || !cfg || *last == 0 || *last > now)
		return false;
	return now - *last < cfg->max_liveness_ns;
}

/* now < lease_fence[entry.fence_slot]; a slot never written (0) is closed. */
static __always_inline bool lease_fence_open(const struct l2_responder_entry *entry, __u64 now)
{
	__u32 slot = entry->fence_slot;
	__u64 *deadline = bpf_map_lookup_elem(&lease_fence, &slot);

	return deadline && now < *deadline;
}

/* now < l2_responder_node_fence[0]; never written (0) is closed. */
static __always_inline bool node_fence_open(__u64 now)
{
	__u32 zero = 0;
	__u64 *deadline = bpf_map_lookup_elem(&l2_responder_node_fence, &zero);

	return deadline && now < *deadline;
}

/* All three gates of an entry, against one reading of the clock. */
static __always_inline bool entry_gates_open(const struct l2_responder_entry *entry)
{
	__u64 now = bpf_ktime_get_ns();

	return agent_alive(now) && lease_fence_open(entry, now) && node_fence_open(now);
}

/* ---- addresses ----------------------------------------------------------- */

static __always_inline bool mac_eq(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] &&
	       a[5] == b[5];
}

static __always_inline bool mac_is_broadcast(const __u8 *a)
{
	return (a[0] & a[1] & a[2] & a[3] & a[4] & a[5]) == 0xff;
}

/* The I/G bit: multicast and broadcast addresses. */
static __always_inline bool mac_is_group(const __u8 *a)
{
	return a[0] & 0x01;
}

/* A station address that is not ours: where a reply may go, and where a
 * request we answer may come from. */
static __always_inline bool mac_is_other_station(const __u8 *a, const __u8 *ours)
{
	return !mac_is_group(a) && !mac_eq(a, ours);
}

/* A sender protocol address Linux accepts for an ARP request (not a martian
 * source of ip_route_input): 0.0.0.0 (an RFC 5227 probe) or a unicast
 * address outside 0/8 and 127/8. */
static __always_inline bool ipv4_sender_ok(const __u8 *a)
{
	if (a[0] == 0)
		return (a[1] | a[2] | a[3]) == 0;
	if (a[0] == 127 || (a[0] & 0xf0) == 0xe0)
		return false;
	return (a[0] & a[1] & a[2] & a[3]) != 0xff;
}

/* A target protocol address Linux may own: not 0/8, loopback, multicast or
 * the limited broadcast address. */
static __always_inline bool ipv4_target_ok(const __u8 *a)
{
	if (a[0] == 0 || a[0] == 127 || (a[0] & 0xf0) == 0xe0)
		return false;
	return (a[0] & a[1] & a[2] & a[3]) != 0xff;
}

static __always_inline bool ipv4_eq(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static __always_inline bool ipv6_is_unspecified(const __u8 *a)
{
	__u8 acc = 0;

#pragma unroll
	for (int i = 0; i < 16; i++)
		acc |= a[i];
	return acc == 0;
}

static __always_inline bool ipv6_is_loopback(const __u8 *a)
{
	__u8 acc = a[15] ^ 0x01;

#pragma unroll
	for (int i = 0; i < 15; i++)
		acc |= a[i];
	return acc == 0;
}

static __always_inline bool ipv6_is_multicast(const __u8 *a)
{
	return a[0] == 0xff;
}

static __always_inline bool ipv6_eq(const __u8 *a, const __u8 *b)
{
	__u8 acc = 0;

#pragma unroll
	for (int i = 0; i < 16; i++)
		acc |= a[i] ^ b[i];
	return acc == 0;
}

/* ff02::1:ffXX:XXXX for the last three bytes of `target`. */
static __always_inline bool ipv6_is_solicited_node_of(const __u8 *a, const __u8 *target)
{
	__u8 acc = (a[0] ^ 0xff) | (a[1] ^ 0x02) | (a[11] ^ 0x01) | (a[12] ^ 0xff);

#pragma unroll
	for (int i = 2; i < 11; i++)
		acc |= a[i];
	return acc == 0 && a[13] == target[13] && a[14] == target[14] && a[15] == target[15];
}

/* 33:33 followed by the last four bytes of the IPv6 multicast `group`
 * (RFC 2464 §7). */
static __always_inline bool mac_is_multicast_of(const __u8 *mac, const __u8 *group)
{
	return mac[0] == 0x33 && mac[1] == 0x33 && mac[2] == group[12] && mac[3] == group[13] &&
	       mac[4] == group[14] && mac[5] == group[15];
}

/* ---- ARP ----------------------------------------------------------------- */

static __always_inline int handle_arp(void *ctx, __u32 ifindex, const bool xdp)
{
	struct l2_responder_v4_key key = {};
	struct l2_responder_ifmac *ifmac;
	struct l2_responder_entry *entry;
	struct arp_reply_frame *reply;
	struct arp_eth *arp;
	struct ethhdr *eth;
	void *data, *end;
	__u8 requester_mac[ETH_ALEN];
	__u8 requester_ip[4];
	__u8 target_ip[4];

	if (!ctx_pull(ctx, ARP_FRAME_LEN, xdp))
		return verdict_pass(xdp);
	data = ctx_data(ctx, xdp);
	end = ctx_data_end(ctx, xdp);
	eth = data;
	arp = data + ETH_LEN;
	if ((void *)(arp + 1) > end)
		return verdict_pass(xdp);

	/* RFC 826: an Ethernet/IPv4 request. */
	if (arp->htype != bpf_htons(ARPHRD_ETHER) || arp->ptype != bpf_htons(ETH_P_IP) ||
	    arp->hlen != ETH_ALEN || arp->plen != 4 || arp->op != bpf_htons(ARPOP_REQUEST))
		return verdict_pass(xdp);

	/* To everyone or to this interface, from another station: never from a
	 * group address (RFC 5227 §2.1.1 drops those), never our own frames. */
	ifmac = bpf_map_lookup_elem(&l2_responder_ifmac, &ifindex);
	if (!ifmac)
		return verdict_pass(xdp);
	if (!mac_is_broadcast(eth->h_dest) && !mac_eq(eth->h_dest, ifmac->addr))
		return verdict_pass(xdp);
	if (!mac_is_other_station(eth->h_source, ifmac->addr) ||
	    !mac_is_other_station(arp->sha, ifmac->addr))
		return verdict_pass(xdp);

	__builtin_memcpy(requester_mac, arp->sha, ETH_ALEN);
	__builtin_memcpy(requester_ip, arp->spa, 4);
	__builtin_memcpy(target_ip, arp->tpa, 4);

	/* Probes (sender 0.0.0.0) are answered, announcements (sender = target)
	 * are not, nor are martian senders or targets. */
	if (!ipv4_sender_ok(requester_ip) || !ipv4_target_ok(target_ip) ||
	    ipv4_eq(requester_ip, target_ip))
		return verdict_pass(xdp);

	/* A sender claiming an address answered here is a conflict, not a
	 * neighbour: Linux drops requests from its own addresses. */
	__builtin_memcpy(&key.ip, requester_ip, 4);
	key.ifindex = ifindex;
	if (bpf_map_lookup_elem(&l2_responder_v4, &key))
		return verdict_pass(xdp);

	__builtin_memcpy(&key.ip, target_ip, 4);
	entry = bpf_map_lookup_elem(&l2_responder_v4, &key);
	if (!entry || !entry_gates_open(entry))
		return verdict_pass(xdp);

	/* The reply: a fresh minimum-size frame to the sender hardware address
	 * (RFC 826, as Linux sends it); nothing of the request's padding is
	 * echoed. */
	if (!ctx_resize(ctx, ETH_MIN_FRAME, xdp))
		return verdict_pass(xdp);
	data = ctx_data(ctx, xdp);
	end = ctx_data_end(ctx, xdp);
	reply = data;
	if ((void *)(reply + 1) > end)
		return verdict_drop(xdp);

	__builtin_memcpy(reply->eth.h_dest, requester_mac, ETH_ALEN);
	__builtin_memcpy(reply->eth.h_source, ifmac->addr, ETH_ALEN);
	reply->eth.h_proto = bpf_htons(ETH_P_ARP);
	reply->arp.htype = bpf_htons(ARPHRD_ETHER);
	reply->arp.ptype = bpf_htons(ETH_P_IP);
	reply->arp.hlen = ETH_ALEN;
	reply->arp.plen = 4;
	reply->arp.op = bpf_htons(ARPOP_REPLY);
	__builtin_memcpy(reply->arp.sha, ifmac->addr, ETH_ALEN);
	__builtin_memcpy(reply->arp.spa, target_ip, 4);
	__builtin_memcpy(reply->arp.tha, requester_mac, ETH_ALEN);
	__builtin_memcpy(reply->arp.tpa, requester_ip, 4);
	__builtin_memset(reply->pad, 0, sizeof(reply->pad));

	__sync_fetch_and_add(&entry->responses_sent, 1);
	return verdict_send(ifindex, xdp);
}

/* ---- IPv6 Neighbor Solicitation -------------------------------------------- */

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* Adds `len` bytes at `p` to a one's complement sum as big-endian 16-bit
 * words (RFC 1071), reading byte by byte: no `__u16 *` view of a struct or of
 * the packet, so the code is correct under strict aliasing, and the sum has
 * the same value on every host byte order. `len` is even and a compile-time
 * constant at every call. */
static __always_inline __u32 csum_add_be(__u32 sum, const __u8 *p, const int len)
{
#pragma unroll
	for (int i = 0; i < len; i += 2)
		sum += ((__u32)p[i] << 8) | p[i + 1];
	return sum;
}

/* One's complement sum of the 40-byte IPv6 pseudo header (RFC 8200 §8.1)
 * for an ICMPv6 message of `len` bytes. */
static __always_inline __u32 csum_pseudo(const __u8 *saddr, const __u8 *daddr, __u32 len)
{
	__u32 sum = 0;

	sum = csum_add_be(sum, saddr, 16);
	sum = csum_add_be(sum, daddr, 16);
	sum += len >> 16;
	sum += len & 0xffff;
	sum += IPPROTO_ICMPV6;
	return sum;
}

/* The ICMPv6 message of a solicitation, copied out of the frame and zero
 * padded (zeros add nothing to the checksum), and the state of the option
 * walk. Working on a copy keeps the checksum a straight sum over constant
 * offsets and lets the walk run in bpf_loop: the verifier checks one
 * iteration instead of every path through all of them. */
struct ns_scan {
	__u8 msg[NS_MAX_LEN];
	__u32 len;
	__u32 off;
	__u32 slla_off;
	__u32 bad;
};

/* Scratch space for one solicitation per CPU (too large for the 512-byte
 * stack). Not pinned: each loaded program has its own. A program runs to
 * completion on its CPU before the next frame there, so nothing shares it. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct ns_scan);
	__uint(max_entries, 1);
} l2_responder_scratch SEC(".maps");

/* One option (RFC 4861 §4.6): length > 0 and inside the message. The first
 * Source Link-Layer Address option counts (later ones are ignored, as Linux
 * does) and must be one unit: an Ethernet address. */
/* bpf_loop's context must live on the stack: it carries the scratch. */
struct ns_walk {
	struct ns_scan *scan;
};

static long ns_option(__u32 index, void *data)
{
	struct ns_scan *scan = ((struct ns_walk *)data)->scan;
	__u32 off = scan->off;
	__u32 opt_len;

	if (off >= scan->len)
		return 1;
	if (off > NS_MAX_LEN - 8) {
		scan->bad = 1;
		return 1;
	}
	opt_len = (__u32)scan->msg[(off + 1) & (NS_MAX_LEN - 1)] * 8;
	if (opt_len == 0 || opt_len > scan->len - off) {
		scan->bad = 1;
		return 1;
	}
	if (scan->msg[off & (NS_MAX_LEN - 1)] == ND_OPT_SOURCE_LL_ADDR && scan->slla_off == 0) {
		if (opt_len != 8) {
			scan->bad = 1;
			return 1;
		}
		scan->slla_off = off;
	}
	scan->off = off + opt_len;
	return 0;
}

static __always_inline int handle_ns(void *ctx, __u32 ifindex, const bool xdp)
{
	struct l2_responder_v6_key key = {};
	struct l2_responder_ifmac *ifmac;
	struct l2_responder_entry *entry;
	struct ip6_hdr *ip6;
	struct ethhdr *eth;
	struct nd_msg *ns;
	struct na_frame *frame;
	__u8 reply_dst[16];
	__u8 reply_mac[ETH_ALEN];
	void *data, *end;
	struct ns_walk walk = {};
	struct ns_scan *scan;
	__u32 zero = 0;
	__u32 icmp_len;
	__u32 sum;
	bool solicited_node;
	bool dad;

	if (!ctx_pull(ctx, ND_OFF + NS_MIN_LEN, xdp))
		return verdict_pass(xdp);
	data = ctx_data(ctx, xdp);
	end = ctx_data_end(ctx, xdp);
	eth = data;
	ip6 = data + IP6_OFF;
	ns = data + ND_OFF;
	if ((void *)(ns + 1) > end)
		return verdict_pass(xdp);

	/* IPv6 header: version 6, ICMPv6 directly (extension headers pass),
	 * hop limit 255 (RFC 4861 §7.1.1), a payload of NS size. */
	if ((ip6->vtc_flow[0] >> 4) != 6 || ip6->nexthdr != IPPROTO_ICMPV6 ||
	    ip6->hop_limit != NDP_HOP_LIMIT)
		return verdict_pass(xdp);
	icmp_len = bpf_ntohs(ip6->payload_len);
	if (icmp_len < NS_MIN_LEN || icmp_len > NS_MAX_LEN)
		return verdict_pass(xdp);
	if (ns->type != ND_NEIGHBOR_SOLICIT || ns->code != 0)
		return verdict_pass(xdp);

	/* Addresses: no multicast or loopback source (RFC 4291 §2.7, §2.5.3), a
	 * unicast target; to the target itself or to its solicited-node group,
	 * DAD (source ::) only to the group. */
	if (ipv6_is_multicast(ip6->saddr) || ipv6_is_loopback(ip6->saddr))
		return verdict_pass(xdp);
	if (ipv6_is_multicast(ns->target) || ipv6_is_unspecified(ns->target) ||
	    ipv6_is_loopback(ns->target))
		return verdict_pass(xdp);
	dad = ipv6_is_unspecified(ip6->saddr);
	solicited_node = ipv6_is_solicited_node_of(ip6->daddr, ns->target);
	if (!solicited_node && (dad || !ipv6_eq(ip6->daddr, ns->target)))
		return verdict_pass(xdp);

	/* Ethernet: to this interface, or to the group's multicast MAC; from
	 * another station. */
	ifmac = bpf_map_lookup_elem(&l2_responder_ifmac, &ifindex);
	if (!ifmac)
		return verdict_pass(xdp);
	if (!mac_eq(eth->h_dest, ifmac->addr) &&
	    !(solicited_node && mac_is_multicast_of(eth->h_dest, ip6->daddr)))
		return verdict_pass(xdp);
	if (!mac_is_other_station(eth->h_source, ifmac->addr))
		return verdict_pass(xdp);

	__builtin_memcpy(key.ip, ns->target, 16);
	key.ifindex = ifindex;
	entry = bpf_map_lookup_elem(&l2_responder_v6, &key);
	if (!entry || !entry_gates_open(entry))
		return verdict_pass(xdp);

	/* The whole message: the frame must hold the IPv6 payload (bytes after
	 * it are ignored, as the kernel trims them). */
	scan = bpf_map_lookup_elem(&l2_responder_scratch, &zero);
	if (!scan)
		return verdict_pass(xdp);
	__builtin_memset(scan->msg, 0, sizeof(scan->msg));
	if (!ctx_load(ctx, ND_OFF, scan->msg, icmp_len, xdp))
		return verdict_pass(xdp);
	scan->len = icmp_len;
	scan->off = NS_MIN_LEN;
	scan->slla_off = 0;
	scan->bad = 0;

	/* ICMPv6 checksum (RFC 4443 §2.3). */
	sum = csum_pseudo(ip6->saddr, ip6->daddr, icmp_len);
	/* A loop the verifier walks (128 short iterations), not an unrolled
	 * one: unrolled, its loads would overflow the 512-byte stack. */
#pragma clang loop unroll(disable)
	for (int i = 0; i < NS_MAX_LEN; i += 2)
		sum += ((__u32)scan->msg[i] << 8) | scan->msg[i + 1];
	if (csum_fold(sum) != 0xffff)
		return verdict_pass(xdp);

	/* Options (RFC 4861 §4.6): together they fill the message exactly. */
	walk.scan = scan;
	bpf_loop(NS_MAX_OPTS, ns_option, &walk, 0);
	if (scan->bad || scan->off != icmp_len)
		return verdict_pass(xdp);

	/* Where the reply goes at layer 2. DAD: all nodes, and the probe must
	 * carry no source link-layer address. Otherwise the solicitor's
	 * link-layer address option, as Linux takes it into its neighbour
	 * cache before answering; a multicast solicitation without one is not
	 * answered (Linux answers it only from an existing neighbour entry);
	 * a unicast one without it goes back to the Ethernet source. */
	if (dad) {
		if (scan->slla_off)
			return verdict_pass(xdp);
		reply_mac[0] = 0x33;
		reply_mac[1] = 0x33;
		reply_mac[2] = 0;
		reply_mac[3] = 0;
		reply_mac[4] = 0;
		reply_mac[5] = 0x01;
	} else if (scan->slla_off) {
		__u32 at = scan->slla_off + 2;

#pragma unroll
		for (int i = 0; i < ETH_ALEN; i++)
			reply_mac[i] = scan->msg[(at + i) & (NS_MAX_LEN - 1)];
		if (!mac_is_other_station(reply_mac, ifmac->addr))
			return verdict_pass(xdp);
	} else {
		if (solicited_node)
			return verdict_pass(xdp);
		__builtin_memcpy(reply_mac, eth->h_source, ETH_ALEN);
	}

	/* Solicited NA (RFC 4861 §7.2.4): from the target, to the solicitor,
	 * Solicited + Override, with the target link-layer address; for DAD to
	 * ff02::1 with Override only. Written straight into the resized frame;
	 * only the solicitor's address must be kept aside first. */
	if (dad) {
		__builtin_memset(reply_dst, 0, 16);
		reply_dst[0] = 0xff;
		reply_dst[1] = 0x02;
		reply_dst[15] = 0x01;
	} else {
		__builtin_memcpy(reply_dst, ip6->saddr, 16);
	}

	if (!ctx_resize(ctx, NA_FRAME_LEN, xdp))
		return verdict_pass(xdp);
	data = ctx_data(ctx, xdp);
	end = ctx_data_end(ctx, xdp);
	frame = data;
	if ((void *)(frame + 1) > end)
		return verdict_drop(xdp);

	__builtin_memcpy(frame->eth.h_dest, reply_mac, ETH_ALEN);
	__builtin_memcpy(frame->eth.h_source, ifmac->addr, ETH_ALEN);
	frame->eth.h_proto = bpf_htons(ETH_P_IPV6);
	frame->ip6.vtc_flow[0] = 0x60;
	frame->ip6.vtc_flow[1] = 0;
	frame->ip6.vtc_flow[2] = 0;
	frame->ip6.vtc_flow[3] = 0;
	frame->ip6.payload_len = bpf_htons(NA_LEN);
	frame->ip6.nexthdr = IPPROTO_ICMPV6;
	frame->ip6.hop_limit = NDP_HOP_LIMIT;
	__builtin_memcpy(frame->ip6.saddr, key.ip, 16);
	__builtin_memcpy(frame->ip6.daddr, reply_dst, 16);
	frame->na.nd.type = ND_NEIGHBOR_ADVERT;
	frame->na.nd.code = 0;
	frame->na.nd.csum = 0;
	frame->na.nd.flags = dad ? NA_FLAG_OVERRIDE : (NA_FLAG_SOLICITED | NA_FLAG_OVERRIDE);
	frame->na.nd.reserved[0] = 0;
	frame->na.nd.reserved[1] = 0;
	frame->na.nd.reserved[2] = 0;
	__builtin_memcpy(frame->na.nd.target, key.ip, 16);
	frame->na.opt_type = ND_OPT_TARGET_LL_ADDR;
	frame->na.opt_len = 1;
	__builtin_memcpy(frame->na.opt_mac, ifmac->addr, ETH_ALEN);
	sum = csum_pseudo(frame->ip6.saddr, frame->ip6.daddr, NA_LEN);
	sum = csum_add_be(sum, (const __u8 *)&frame->na, NA_LEN);
	frame->na.nd.csum = bpf_htons((__u16)~csum_fold(sum));

	__sync_fetch_and_add(&entry->responses_sent, 1);
	return verdict_send(ifindex, xdp);
}

/* ---- entry points ------------------------------------------------------------ */

static __always_inline int respond(void *ctx, const bool xdp)
{
	void *data = ctx_data(ctx, xdp);
	void *end = ctx_data_end(ctx, xdp);
	struct ethhdr *eth = data;
	__u32 ifindex;

	if ((void *)(eth + 1) > end)
		return verdict_pass(xdp);
	/* At TC ingress the kernel has already moved an 802.1Q tag out of the
	 * frame; such frames belong to the VLAN device, not to this one. */
	if (!xdp && ((struct __sk_buff *)ctx)->vlan_present)
		return verdict_pass(xdp);

	ifindex = ctx_ifindex(ctx, xdp);
	if (eth->h_proto == bpf_htons(ETH_P_ARP))
		return handle_arp(ctx, ifindex, xdp);
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return handle_ns(ctx, ifindex, xdp);
	return verdict_pass(xdp);
}

SEC("classifier")
int l2_responder(struct __sk_buff *skb)
{
	return respond(skb, false);
}

SEC("xdp")
int l2_responder_xdp(struct xdp_md *ctx)
{
	return respond(ctx, true);
}
