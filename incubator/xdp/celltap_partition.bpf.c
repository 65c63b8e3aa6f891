// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * celltap's partition in the kernel: the XDP incubator and the DiCAP socket filter.
 *
 * Theory of operation.  Both programs copy the first HDR_MAX bytes of a frame into a per-CPU
 * scratch buffer and run one parser over it (so the XDP program and the socket filter cannot
 * disagree): Ethernet, up to MAX_TAGS 802.1Q / 802.1ad / 0x9100 tags, IPv4 (options), IPv6
 * (extension headers), TCP / UDP / UDP-Lite / SCTP ports.  The parser applies celltap.decode's
 * validity rules; a frame it cannot decide exactly as the Python decoder would (damaged, tunnels
 * that are decapsulated, PPPoE / MPLS, headers past HDR_MAX, a fragment before its first) is not
 * decided here: the XDP program passes it up to the Python incubator (XDP_PASS, read by an
 * AF_PACKET socket), the socket filter keeps it for the cell's Python path.  Each such frame is
 * counted by reason in a per-CPU array.
 *
 * The flow hash is XXH64 of the canonical key (celltap.flowkey: l3, l4, smaller endpoint first),
 * seeded by the cluster seed.  The cell is `table[hash >> (64 - table_bits)]`, a BPF array (one
 * byte per bucket) the control plane computes from the ring (celltap.incubator.cells).  Live flows
 * are pinned (flow hash -> slot, deadline: idle timeout, or a short linger after FIN/RST); a pin
 * whose cell left is ignored.  The first fragment of a datagram records its slot under the
 * datagram key (v4: src, dst, protocol, id; v6: src, dst, id) for the later fragments.
 *
 * Where pins live.  Every frame of a flow must touch its pin (its deadline moves), so the pin
 * store's memory footprint is what a frame costs: an LRU hash sized for flows.max_flows spreads
 * even a few thousand live flows over a bucket array of 16 bytes per possible flow, and each
 * frame then misses the caches and the TLB twice (bucket, element).  The XDP program therefore
 * keeps pins first in `pin_sets`, a small set-associative array (PIN_WAYS pins per 64-byte set,
 * a set chosen by the hash's low bits, one spin lock per set: one cache line per frame), and only
 * the flows that find their set full of live pins in the LRU hash.  A flow has at most one live
 * pin: the set is searched first, the LRU only when the set has none, and a new pin goes to the
 * set when a way is free (empty or expired), else to the LRU.  The decisions are the LRU-only
 * ones (same slots, same deadlines, same counters); only their cost changes.  Socket filters
 * cannot take a spin lock, so the DiCAP filter keeps its pins in the LRU hash alone.
 *
 * Why not skip pins for buckets that are not moving: a pin is what remembers, at the moment a
 * bucket moves, which of its flows were live (seen within the idle timeout) and where they went.
 * A flow that had no pin when its bucket moved cannot be told from a new one (UDP has no SYN), so
 * liveness has to be recorded for every frame of every flow, moving bucket or not.
 */
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define HDR_MAX 256      /* bytes of a frame the parser may read */
#define BUF_SIZE 512     /* scratch buffer: HDR_MAX plus room for masked reads */
#define MAX_CELLS 256
#define MAX_TAGS 3       /* celltap.decode.constants.MAX_VLAN_TAGS */
#define MAX_V6_EXT 8     /* celltap.decode.constants.MAX_V6_EXT_HEADERS */
#define SLOT_NONE 0xFFFFFFFFu

/* Counter indexes: keep in step with incubator/xdp/maps.py COUNTERS. */
enum {
	C_RX = 0,
	C_RX_BYTES,
	C_REDIRECTED,
	C_KEPT,             /* socket filter: frames of this cell */
	C_OTHER_CELL,       /* socket filter: frames of another cell (not kept) */
	C_NEW_PIN,
	C_REHOMED_PIN,      /* a pin whose cell left: the flow follows the table again */
	C_FRAG_HIT,
	C_UP_UNDECODABLE,   /* damaged: the Python decoder counts it by its own reason */
	C_UP_TUNNEL,        /* decapsulation wanted: routed by the inner flow in Python */
	C_UP_L2_OTHER,      /* PPPoE, MPLS, inner Ethernet, more tags than MAX_TAGS */
	C_UP_DEEP_HEADERS,  /* headers past HDR_MAX bytes */
	C_UP_FRAG_BEFORE_FIRST,
	C_UP_NON_IP_ALL,    /* non-IP frames under non_ip: all (copied to every cell in Python) */
	C_UP_NO_OUTPUT,     /* the cell's devmap entry is missing */
	C_DROP_NON_IP_POLICY,
	C_DROP_NO_CELL,
	C_BRIDGED_TO_A,     /* inline: frames the kernel sent on to side A's peer */
	C_BRIDGED_TO_B,
	C_UP_SLOT_LIMIT,    /* a cell's slot is past the packed table's: Python decides every frame */
	C_N
};

struct config {
	__u64 seed;
	__u64 idle_ns;
	__u64 linger_ns;
	__u64 frag_ns;
	__u32 table_bits;
	__u32 nonip;        /* 0 bridge (drop, counted), 1 cell0, 2 all (up to Python) */
	__u32 cell0_slot;
	__u32 decapsulate;
	__u32 pin;
	__u32 my_slot;      /* socket filter: this cell's slot */
	__u16 vxlan_port;
	__u16 geneve_port;
	__u32 side_a;       /* inline: the two bridged interfaces (0: mirror mode) */
	__u32 side_b;
	__u32 capture;      /* the interface xdp_incubator runs on (mirror) */
	__u32 devmap_id;    /* id of cell_devs: whose redirect errors are ours */
	__u32 pin_set_mask; /* pin_sets entries - 1 (a power of two) */
	__u32 all_up;       /* socket filter: a slot past the table's (TABLE_NONE), so every frame up */
	__u32 pad;          /* 88 bytes, no hidden padding (program.py _CONFIG) */
};

struct cell {
	__u8 mac[6];
	__u8 rewrite_mac;
	__u8 alive;
	__u32 ifindex;
};

/* inline: what the ingress program tells the egress (devmap) program, in XDP metadata */
struct bcast_meta {
	__u32 slot;         /* SLOT_NONE: the frame only crosses the bridge */
	__u32 peer;         /* ifindex of the other side */
};

struct pin {
	__u32 slot;
	__u32 closing;
	__u64 expires;
};

#define PIN_WAYS 2

struct pin_way {
	__u64 hash;
	__u64 expires;      /* 0: never used */
	__u32 slot;
	__u32 closing;
};

struct pin_set {
	struct bpf_spin_lock lock;
	__u32 pad;
	struct pin_way way[PIN_WAYS];
	__u64 pad2;         /* 64 bytes: one cache line */
};

/* Live cells by slot, as bits: read under a pin set's lock (no map lookups may happen there). */
struct alive_bits {
	__u64 w[MAX_CELLS / 64];
};

struct dgram_key {
	__u8 l3;
	__u8 proto;        /* 0 for IPv6 */
	__u16 pad;
	__u32 id;
	__u8 src[16];
	__u8 dst[16];
};

struct dgram_val {
	__u32 slot;
	__u32 pad;
	__u64 expires;
};

struct out_count {
	__u64 frames;
	__u64 bytes;
};

struct scratch {
	__u8 buf[BUF_SIZE];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

/* The partition table, packed: one byte per bucket, 8 buckets per element (bucket b is byte b & 7
 * of element b >> 3), so 65 536 buckets take 64 KB.  An array of __u32 slots took 512 KB (the
 * kernel rounds array elements up to 8 bytes), a random line of which missed the caches on nearly
 * every frame.  A byte names slots 0-254; TABLE_NONE (0xFF) is a bucket with no live cell, so the
 * kernel path serves at most 255 slots (the control plane refuses more, program.TABLE_SLOTS).
 *
 * Updates: the control plane rewrites the elements that changed with one batch update.  A frame
 * that runs meanwhile may see some buckets old and some new, but never a torn bucket: a bucket is
 * one byte, written whole.  Its old and its new owner are both alive while the table changes
 * (a joining slot is alive before the table names it, a leaving one dead only after), and a live
 * flow follows its pin, not the table, so no live flow changes cell because of the update. */
#define TABLE_NONE 0xFF

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 13);   /* set to 1 << (table_bits - 3) by the loader */
	__type(key, __u32);
	__type(value, __u64);
} part_table SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_CELLS);
	__type(key, __u32);
	__type(value, struct cell);
} cells SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, MAX_CELLS);
	__type(key, __u32);
	__type(value, __u32);
} cell_devs SEC(".maps");

/* inline: both sides and every cell, each with xdp_egress; frames are broadcast and each copy
 * kept only where its metadata says (the peer, and the frame's cell) */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, MAX_CELLS + 2);
	__type(key, __u32);
	__type(value, struct bpf_devmap_val);
} bcast SEC(".maps");

/* Frames a redirect target failed to transmit (from the xdp_devmap_xmit tracepoint), and the
 * copies xdp_egress dropped on purpose (inline broadcast), by target ifindex; the control plane
 * creates the keys of its targets, so other programs' redirects on this host are not counted.
 * egress_filtered counts most copies of every inline frame: per CPU, so no line bounces. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_CELLS + 2);
	__type(key, __u32);
	__type(value, __u64);
} xmit_drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MAX_CELLS + 2);
	__type(key, __u32);
	__type(value, __u64);
} egress_filtered SEC(".maps");

/* Redirects to a cell the kernel refused after the program returned (the target cannot take
 * XDP frames, frame over its MTU, ...), by slot (the xdp_redirect_err tracepoint). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_CELLS);
	__type(key, __u32);
	__type(value, __u64);
} redirect_err SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 20);   /* flows.max_flows */
	__type(key, __u64);
	__type(value, struct pin);
} pins SEC(".maps");

/* The XDP program's first pin store (see "Where pins live"); sized by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 15);
	__type(key, __u32);
	__type(value, struct pin_set);
} pin_sets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct alive_bits);
} alive_bits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 16);   /* fragments.max_datagrams */
	__type(key, struct dgram_key);
	__type(value, struct dgram_val);
} frags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_N);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_CELLS);
	__type(key, __u32);
	__type(value, struct out_count);
} cell_out SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

static __always_inline void count(__u32 idx, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &idx);
	if (c)
		*c += n;
}

/* ---- XXH64 of the 14- and 38-byte canonical keys (celltap.flowhash) ---- */
#define P1 0x9E3779B185EBCA87ULL
#define P2 0xC2B2AE3D27D4EB4FULL
#define P3 0x165667B19E3779F9ULL
#define P4 0x85EBCA77C2B2AE63ULL
#define P5 0x27D4EB2F165667C5ULL

static __always_inline __u64 rotl64(__u64 x, int r)
{
	return (x << r) | (x >> (64 - r));
}

static __always_inline __u64 xround(__u64 acc, __u64 lane)
{
	acc += lane * P2;
	return rotl64(acc, 31) * P1;
}

static __always_inline __u64 xmerge(__u64 h, __u64 v)
{
	h ^= xround(0, v);
	return h * P1 + P4;
}

static __always_inline __u64 avalanche(__u64 h)
{
	h ^= h >> 33;
	h *= P2;
	h ^= h >> 29;
	h *= P3;
	h ^= h >> 32;
	return h;
}

static __always_inline __u64 le64(const __u8 *p)
{
	return (__u64)p[0] | ((__u64)p[1] << 8) | ((__u64)p[2] << 16) | ((__u64)p[3] << 24) |
	       ((__u64)p[4] << 32) | ((__u64)p[5] << 40) | ((__u64)p[6] << 48) | ((__u64)p[7] << 56);
}

static __always_inline __u64 le32(const __u8 *p)
{
	return (__u64)p[0] | ((__u64)p[1] << 8) | ((__u64)p[2] << 16) | ((__u64)p[3] << 24);
}

/* XXH64 of a 14-byte key given as XXH64 reads it: bytes 0-7 (little-endian), 8-11, 12, 13. */
static __always_inline __u64 xxh64_key14(__u64 k0, __u64 k8, __u64 k12, __u64 k13, __u64 seed)
{
	__u64 h = seed + P5 + 14;
	h ^= xround(0, k0);
	h = rotl64(h, 27) * P1 + P4;
	h ^= k8 * P1;
	h = rotl64(h, 23) * P2 + P3;
	h ^= k12 * P5;
	h = rotl64(h, 11) * P1;
	h ^= k13 * P5;
	h = rotl64(h, 11) * P1;
	return avalanche(h);
}

static __always_inline __u64 xxh64_key38(const __u8 *k, __u64 seed)
{
	__u64 v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
	v1 = xround(v1, le64(k));
	v2 = xround(v2, le64(k + 8));
	v3 = xround(v3, le64(k + 16));
	v4 = xround(v4, le64(k + 24));
	__u64 h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
	h = xmerge(h, v1);
	h = xmerge(h, v2);
	h = xmerge(h, v3);
	h = xmerge(h, v4);
	h += 38;
	h ^= le32(k + 32) * P1;
	h = rotl64(h, 23) * P2 + P3;
	h ^= (__u64)k[36] * P5;
	h = rotl64(h, 11) * P1;
	h ^= (__u64)k[37] * P5;
	h = rotl64(h, 11) * P1;
	return avalanche(h);
}

/* ---- the parser ---- */
enum { K_FLOW = 0, K_FRAG_LATER, K_NON_IP, K_UP };

struct parsed {
	__u64 hash;
	__u32 kind;
	__u32 reason;       /* K_UP: counter index */
	__u32 closing;      /* TCP FIN or RST */
	__u32 first_frag;   /* K_FLOW: a first fragment (record its datagram) */
	struct dgram_key dk;
};

#define B(o) (b[(o) & (BUF_SIZE - 1)])
#define U16(o) (((__u32)B(o) << 8) | B((o) + 1))
#define U32(o) (((__u32)B(o) << 24) | ((__u32)B((o) + 1) << 16) | ((__u32)B((o) + 2) << 8) | B((o) + 3))

static __always_inline int up(struct parsed *p, __u32 reason)
{
	p->kind = K_UP;
	p->reason = reason;
	return 0;
}

static __always_inline int is_v6_ext(__u32 nh)
{
	return nh == 0 || nh == 43 || nh == 44 || nh == 51 || nh == 60 || nh == 135 || nh == 139 ||
	       nh == 140;
}

static __always_inline __u32 l4_need(__u32 proto)
{
	switch (proto) {
	case 6:
		return 20;
	case 17:
	case 136:
		return 8;
	case 132:
		return 12;
	case 1:
	case 58:
		return 4;
	default:
		return 0;
	}
}

static __always_inline void put16(__u8 *k, __u32 v)
{
	k[0] = v >> 8;
	k[1] = v;
}

/* The v4 key is [4, proto, a, z] with a and z the two endpoints (address, port: 6 bytes big-endian),
 * smaller first; its XXH64 words come from a and z by byte swaps (no key in memory). */
static __always_inline void hash_v4(struct parsed *p, __u32 sport, __u32 dport, __u64 seed)
{
	const __u8 *s = p->dk.src, *d = p->dk.dst;
	__u64 sv = ((__u64)s[0] << 40) | ((__u64)s[1] << 32) | ((__u64)s[2] << 24) | ((__u64)s[3] << 16) | sport;
	__u64 dv = ((__u64)d[0] << 40) | ((__u64)d[1] << 32) | ((__u64)d[2] << 24) | ((__u64)d[3] << 16) | dport;
	__u64 a = sv, z = dv;
	if (sv > dv) {
		a = dv;
		z = sv;
	}
	__u64 k0 = __builtin_bswap64(a) | ((__u64)p->dk.proto << 8) | 4;  /* a < 2^48: bytes 2-7 */
	__u64 k8 = __builtin_bswap32((__u32)(z >> 16));
	p->hash = xxh64_key14(k0, k8, (z >> 8) & 0xFF, z & 0xFF, seed);
}

static __always_inline __u64 be64(const __u8 *p)
{
	return ((__u64)p[0] << 56) | ((__u64)p[1] << 48) | ((__u64)p[2] << 40) | ((__u64)p[3] << 32) |
	       ((__u64)p[4] << 24) | ((__u64)p[5] << 16) | ((__u64)p[6] << 8) | p[7];
}

static __always_inline void hash_v6(struct parsed *p, __u32 sport, __u32 dport, __u64 seed)
{
	__u8 key[40] = {};
	const __u8 *s = p->dk.src, *d = p->dk.dst;
	__u64 s0 = be64(s), s1 = be64(s + 8), d0 = be64(d), d1 = be64(d + 8);
	int swap = s0 > d0 || (s0 == d0 && (s1 > d1 || (s1 == d1 && sport > dport)));
	const __u8 *a = swap ? d : s, *z = swap ? s : d;
	__u32 pa = swap ? dport : sport, pz = swap ? sport : dport;
	key[0] = 6;
	key[1] = p->dk.proto;
#pragma unroll
	for (int i = 0; i < 16; i++) {
		key[2 + i] = a[i];
		key[20 + i] = z[i];
	}
	put16(key + 18, pa);
	put16(key + 36, pz);
	p->hash = xxh64_key38(key, seed);
}

/* Ports, closing flag and tunnel check of a first fragment or whole packet; then the hash. */
static __always_inline int l4(const __u8 *b, __u32 flen, __u32 l4off, __u32 end, __u32 proto,
			      __u32 is_frag, const struct config *cfg, struct parsed *p)
{
	__u32 need = l4_need(proto);
	if (l4off + need > end || l4off + need > flen)
		return up(p, C_UP_UNDECODABLE);
	if (l4off + 14 > HDR_MAX)
		return up(p, C_UP_DEEP_HEADERS);
	__u32 sport = 0, dport = 0;
	if (proto == 6 || proto == 17 || proto == 136 || proto == 132) {
		sport = U16(l4off);
		dport = U16(l4off + 2);
	}
	if (proto == 6) {
		__u32 doff = (B(l4off + 12) >> 4) * 4;
		if (doff < 20 || l4off + doff > end)
			return up(p, C_UP_UNDECODABLE);
		p->closing = (B(l4off + 13) & 0x05) != 0;
	}
	if (cfg->decapsulate && !is_frag) {
		if (proto == 47 || proto == 4 || proto == 41)
			return up(p, C_UP_TUNNEL);
		if (proto == 17 && (dport == cfg->vxlan_port || dport == cfg->geneve_port))
			return up(p, C_UP_TUNNEL);
	}
	p->kind = K_FLOW;
	p->first_frag = is_frag;
	p->dk.proto = proto;
	if (p->dk.l3 == 4)
		hash_v4(p, sport, dport, cfg->seed);
	else
		hash_v6(p, sport, dport, cfg->seed);
	if (p->dk.l3 == 6)
		p->dk.proto = 0;
	return 0;
}

static __always_inline int parse_v4(const __u8 *b, __u32 flen, __u32 off, const struct config *cfg,
				    struct parsed *p)
{
	if (flen < off + 20)
		return up(p, C_UP_UNDECODABLE);
	__u32 vb = B(off);
	if ((vb >> 4) != 4)
		return up(p, C_UP_UNDECODABLE);
	__u32 ihl = (vb & 0x0F) * 4;
	if (ihl < 20 || flen < off + ihl)
		return up(p, C_UP_UNDECODABLE);
	__u32 tot = U16(off + 2);
	if (tot < ihl || off + tot > flen)
		return up(p, C_UP_UNDECODABLE);
	__u32 ff = U16(off + 6);
	__u32 foff = (ff & 0x1FFF) * 8;
	__u32 is_frag = (ff & 0x2000) || foff;
	__u32 proto = B(off + 9);
	p->dk.l3 = 4;
	p->dk.id = U16(off + 4);
#pragma unroll
	for (int i = 0; i < 4; i++) {
		p->dk.src[i] = B(off + 12 + i);
		p->dk.dst[i] = B(off + 16 + i);
	}
	if (is_frag && foff) {
		p->dk.proto = proto;
		p->kind = K_FRAG_LATER;
		return 0;
	}
	return l4(b, flen, off + ihl, off + tot, proto, is_frag, cfg, p);
}

static __always_inline int parse_v6(const __u8 *b, __u32 flen, __u32 off, const struct config *cfg,
				    struct parsed *p)
{
	if (flen < off + 40)
		return up(p, C_UP_UNDECODABLE);
	if ((B(off) >> 4) != 6)
		return up(p, C_UP_UNDECODABLE);
	__u32 end = off + 40 + U16(off + 4);
	if (end > flen)
		return up(p, C_UP_UNDECODABLE);
	__u32 nh = B(off + 6);
	p->dk.l3 = 6;
#pragma unroll
	for (int i = 0; i < 16; i++) {
		p->dk.src[i] = B(off + 8 + i);
		p->dk.dst[i] = B(off + 24 + i);
	}
	__u32 cur = off + 40, done = 0, is_frag = 0, foff = 0;
#pragma unroll
	for (int i = 0; i < MAX_V6_EXT; i++) {
		if (done || !is_v6_ext(nh))
			break;
		if (cur + 8 > end || cur + 8 > flen)
			return up(p, C_UP_UNDECODABLE);
		if (cur + 8 > HDR_MAX)
			return up(p, C_UP_DEEP_HEADERS);
		__u32 len;
		if (nh == 44) {
			foff = U16(cur + 2) & 0xFFF8;
			p->dk.id = U32(cur + 4);
			is_frag = 1;
			done = foff > 0;
			len = 8;
		} else if (nh == 51) {
			len = (B(cur + 1) + 2) * 4;
		} else {
			len = (B(cur + 1) + 1) * 8;
		}
		nh = B(cur);
		cur += len;
	}
	if (!done && is_v6_ext(nh))
		return up(p, C_UP_UNDECODABLE);
	if (cur > end)
		return up(p, C_UP_UNDECODABLE);
	if (is_frag && foff) {
		p->dk.proto = 0;
		p->kind = K_FRAG_LATER;
		return 0;
	}
	return l4(b, flen, cur, end, nh, is_frag, cfg, p);
}

/* `tags`: VLAN tags the kernel already took out of the data (socket filters). */
static __always_inline int parse(const __u8 *b, __u32 flen, __u32 tags, const struct config *cfg,
				 struct parsed *p)
{
	if (flen < 14)
		return up(p, C_UP_UNDECODABLE);
	__u32 et = U16(12), off = 14;
#pragma unroll
	for (int i = 0; i < MAX_TAGS + 1; i++) {
		if (et != 0x8100 && et != 0x88A8 && et != 0x9100)
			break;
		if (++tags > MAX_TAGS)
			return up(p, C_UP_L2_OTHER);
		if (off + 4 > flen)
			return up(p, C_UP_UNDECODABLE);
		et = U16(off + 2);
		off += 4;
	}
	if (et == 0x0800)
		return parse_v4(b, flen, off, cfg, p);
	if (et == 0x86DD)
		return parse_v6(b, flen, off, cfg, p);
	if (et == 0x8100 || et == 0x88A8 || et == 0x9100 || et == 0x8864 || et == 0x8847 || et == 0x8848 ||
	    et == 0x6558)
		return up(p, C_UP_L2_OTHER);
	p->kind = K_NON_IP;
	return 0;
}

/* ---- the decision, shared ---- */
static __always_inline int cell_alive(__u32 slot)
{
	struct cell *c = bpf_map_lookup_elem(&cells, &slot);
	return c && c->alive;
}

static __always_inline __u64 pin_deadline(const struct config *cfg, __u32 closing, __u64 now)
{
	return now + (closing ? cfg->linger_ns : cfg->idle_ns);
}

static __always_inline int bit_alive(const struct alive_bits *a, __u32 slot)
{
	return (a->w[(slot >> 6) & (MAX_CELLS / 64 - 1)] >> (slot & 63)) & 1;
}

enum { PS_MISS = 0, PS_HIT, PS_REHOMED };

/* Look the flow up in its pin set: PS_HIT (*slot; deadline moved), PS_REHOMED (a live pin whose
 * cell left), PS_MISS (no live pin here). */
static __always_inline int set_lookup(struct pin_set *ps, const struct alive_bits *a,
				      const struct parsed *p, const struct config *cfg, __u64 now, __u32 *slot)
{
	int res = PS_MISS;
	bpf_spin_lock(&ps->lock);
#pragma unroll
	for (int i = 0; i < PIN_WAYS; i++) {
		struct pin_way *w = &ps->way[i];
		if (res != PS_MISS || w->hash != p->hash || w->expires <= now)
			continue;
		if (bit_alive(a, w->slot)) {
			if (p->closing)
				w->closing = 1;
			w->expires = pin_deadline(cfg, w->closing, now);
			*slot = w->slot;
			res = PS_HIT;
		} else {
			res = PS_REHOMED;
		}
	}
	bpf_spin_unlock(&ps->lock);
	return res;
}

/* Pin the flow to `slot` in its set: into its own stale way, else a free (empty or expired) one.
 * Returns 1 when pinned, 0 when the set is full of live pins; when another CPU pinned the flow
 * meanwhile, keeps that pin and puts its slot in *slot (returns 1, *created 0). */
static __always_inline int set_insert(struct pin_set *ps, const struct alive_bits *a,
				      const struct parsed *p, const struct config *cfg, __u64 now,
				      __u32 *slot, int *created)
{
	int pick = -1, own = 0;
	bpf_spin_lock(&ps->lock);
#pragma unroll
	for (int i = 0; i < PIN_WAYS; i++) {
		struct pin_way *w = &ps->way[i];
		if (own)
			continue;
		if (w->hash == p->hash) {
			own = 1;
			if (w->expires > now && bit_alive(a, w->slot)) {
				pick = -2;  /* pinned meanwhile */
				if (p->closing)
					w->closing = 1;
				w->expires = pin_deadline(cfg, w->closing, now);
				*slot = w->slot;
			} else {
				pick = i;
			}
		} else if (pick == -1 && w->expires <= now) {
			pick = i;
		}
	}
	if (pick >= 0) {
		struct pin_way *w = &ps->way[pick & (PIN_WAYS - 1)];
		w->hash = p->hash;
		w->slot = *slot;
		w->closing = p->closing;
		w->expires = pin_deadline(cfg, p->closing, now);
	}
	bpf_spin_unlock(&ps->lock);
	*created = pick >= 0;
	return pick != -1;
}

/* The LRU hash's pin of the flow: its slot when live with a live cell (deadline moved), else
 * SLOT_NONE; *found says whether a live pin was there (whose cell left: counted rehomed). */
static __always_inline __u32 lru_lookup(const struct parsed *p, const struct config *cfg, __u64 now,
					int *found)
{
	struct pin *pin = bpf_map_lookup_elem(&pins, &p->hash);
	*found = 0;
	if (!pin || pin->expires <= now)
		return SLOT_NONE;
	*found = 1;
	if (!cell_alive(pin->slot)) {
		count(C_REHOMED_PIN, 1);
		return SLOT_NONE;
	}
	if (p->closing)
		pin->closing = 1;
	pin->expires = pin_deadline(cfg, pin->closing, now);
	return pin->slot;
}

static __always_inline void lru_pin(const struct parsed *p, const struct config *cfg, __u64 now, __u32 slot)
{
	struct pin np = {.slot = slot, .closing = p->closing};
	np.expires = pin_deadline(cfg, p->closing, now);
	bpf_map_update_elem(&pins, &p->hash, &np, BPF_ANY);
	count(C_NEW_PIN, 1);
}

static __always_inline __u32 table_slot(const struct parsed *p, const struct config *cfg)
{
	__u32 bucket = p->hash >> (64 - (cfg->table_bits & 63));
	__u32 elem = bucket >> 3;
	__u64 *t = bpf_map_lookup_elem(&part_table, &elem);
	if (!t)
		return SLOT_NONE;
	__u32 slot = ((const __u8 *)t)[bucket & 7];
	return slot == TABLE_NONE ? SLOT_NONE : slot;
}

/* Slot of a flow (K_FLOW): its pin, else the table; SLOT_NONE when no cell is alive.  `sets`
 * (a constant): keep pins in pin_sets first (XDP), or in the LRU hash alone (socket filters). */
static __always_inline __u32 flow_slot(struct parsed *p, const struct config *cfg, __u64 now, int sets)
{
	if (!cfg->pin)
		return table_slot(p, cfg);
	__u32 zero = 0, si = (__u32)p->hash & cfg->pin_set_mask;
	struct pin_set *ps = sets ? bpf_map_lookup_elem(&pin_sets, &si) : 0;
	struct alive_bits *a = sets ? bpf_map_lookup_elem(&alive_bits, &zero) : 0;
	__u32 slot = SLOT_NONE;
	int in_lru = 0, created = 0;
	if (ps && a) {
		int r = set_lookup(ps, a, p, cfg, now, &slot);
		if (r == PS_HIT)
			return slot;
		if (r == PS_REHOMED)
			count(C_REHOMED_PIN, 1);
		else {
			slot = lru_lookup(p, cfg, now, &in_lru);
			if (slot != SLOT_NONE)
				return slot;
		}
	} else {
		slot = lru_lookup(p, cfg, now, &in_lru);
		if (slot != SLOT_NONE)
			return slot;
	}
	slot = table_slot(p, cfg);
	if (slot == SLOT_NONE)
		return SLOT_NONE;
	/* a live LRU pin whose cell left is replaced where it is: one live pin per flow */
	if (ps && a && !in_lru && set_insert(ps, a, p, cfg, now, &slot, &created)) {
		if (created)
			count(C_NEW_PIN, 1);
		return slot;
	}
	lru_pin(p, cfg, now, slot);
	return slot;
}

enum { D_SLOT = 0, D_UP, D_DROP };

/* Decide a frame: D_SLOT with *slot, D_UP (counted), or D_DROP (counted). */
static __always_inline int decide(const __u8 *b, __u32 flen, __u32 tags, __u32 *slot, int sets)
{
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return D_UP;
	if (cfg->all_up) {
		count(C_UP_SLOT_LIMIT, 1);
		return D_UP;
	}
	struct parsed p = {};
	parse(b, flen, tags, cfg, &p);
	__u64 now = bpf_ktime_get_coarse_ns(); /* timeouts are seconds: jiffies do */
	if (p.kind == K_UP) {
		count(p.reason, 1);
		return D_UP;
	}
	if (p.kind == K_NON_IP) {
		if (cfg->nonip == 0) {
			count(C_DROP_NON_IP_POLICY, 1);
			return D_DROP;
		}
		if (cfg->nonip == 2) {
			count(C_UP_NON_IP_ALL, 1);
			return D_UP;
		}
		*slot = cfg->cell0_slot;
		if (*slot == SLOT_NONE) {
			count(C_DROP_NO_CELL, 1);
			return D_DROP;
		}
		return D_SLOT;
	}
	if (p.kind == K_FRAG_LATER) {
		struct dgram_val *v = bpf_map_lookup_elem(&frags, &p.dk);
		if (v && v->expires > now && cell_alive(v->slot)) {
			count(C_FRAG_HIT, 1);
			*slot = v->slot;
			return D_SLOT;
		}
		count(C_UP_FRAG_BEFORE_FIRST, 1);
		return D_UP;
	}
	*slot = flow_slot(&p, cfg, now, sets);
	if (*slot == SLOT_NONE) {
		count(C_DROP_NO_CELL, 1);
		return D_DROP;
	}
	if (p.first_frag) {
		struct dgram_val v = {.slot = *slot, .expires = now + cfg->frag_ns};
		bpf_map_update_elem(&frags, &p.dk, &v, BPF_ANY);
	}
	return D_SLOT;
}

static __always_inline struct scratch *scratch_buf(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&scratch, &zero);
}

static __always_inline void count_out(__u32 slot, __u32 flen)
{
	count(C_REDIRECTED, 1);
	struct out_count *o = bpf_map_lookup_elem(&cell_out, &slot);
	if (o) {
		o->frames += 1;
		o->bytes += flen;
	}
}

/* inline: broadcast to the peer and the cells; xdp_egress keeps the copies that are wanted */
static __always_inline int inline_out(struct xdp_md *ctx, const struct config *cfg, __u32 slot, __u32 flen)
{
	__u32 in = ctx->ingress_ifindex;
	__u32 peer = in == cfg->side_a ? cfg->side_b : cfg->side_a;
	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(struct bcast_meta)) < 0) {
		count(C_UP_NO_OUTPUT, 1);
		return XDP_PASS;
	}
	void *data = (void *)(long)ctx->data;
	struct bcast_meta *m = (void *)(long)ctx->data_meta;
	if ((void *)(m + 1) > data)
		return XDP_PASS;
	m->slot = slot;
	m->peer = peer;
	int ret = bpf_redirect_map(&bcast, 0, BPF_F_BROADCAST | BPF_F_EXCLUDE_INGRESS);
	if (ret != XDP_REDIRECT) {
		count(C_UP_NO_OUTPUT, 1);
		return XDP_PASS;
	}
	count(in == cfg->side_a ? C_BRIDGED_TO_B : C_BRIDGED_TO_A, 1);
	if (slot != SLOT_NONE)
		count_out(slot, flen);
	return XDP_REDIRECT;
}

/* The first min(flen, HDR_MAX) bytes into the scratch buffer with plain 8-byte loads (a helper call
 * costs more than the whole copy): whole words, then the last 8 bytes of a shorter frame. */
static __always_inline void copy_head(void *data, void *data_end, __u8 *buf)
{
	__u32 flen = data_end - data;
#pragma unroll
	for (int i = 0; i < HDR_MAX / 8; i++) {
		if (data + (i + 1) * 8 > data_end)
			break;
		*(__u64 *)(buf + i * 8) = *(__u64 *)(data + i * 8);
	}
	if (flen < HDR_MAX && flen >= 8) {
		__u32 t = (flen - 8) & (HDR_MAX - 1);
		void *p = data + t;
		if (p + 8 <= data_end)
			*(__u64 *)(buf + t) = *(__u64 *)p;
	}
}

/* Packet pointers and length read afresh from the context: after copy_head's early exits the
 * verifier then holds one state, not one per frame-length class. */
static __always_inline void *pkt(struct xdp_md *ctx, int end)
{
	return (void *)(long)(end ? *(volatile __u32 *)&ctx->data_end : *(volatile __u32 *)&ctx->data);
}

SEC("xdp")
int xdp_incubator(struct xdp_md *ctx)
{
	struct scratch *s = scratch_buf();
	if (!s)
		return XDP_PASS;
	copy_head(pkt(ctx, 0), pkt(ctx, 1), s->buf);
	__u32 flen = pkt(ctx, 1) - pkt(ctx, 0);
	count(C_RX, 1);
	count(C_RX_BYTES, flen);
	__u32 slot = 0, zero = 0;
	int d = decide(s->buf, flen, 0, &slot, 1);
	if (d == D_UP)
		return XDP_PASS;  /* inline: the Python path bridges it too */
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (cfg && cfg->side_a)
		return inline_out(ctx, cfg, d == D_SLOT ? slot : SLOT_NONE, flen);
	if (d == D_DROP)
		return XDP_DROP;
	struct cell *c = bpf_map_lookup_elem(&cells, &slot);
	if (c && c->rewrite_mac) {
		void *data = pkt(ctx, 0), *data_end = pkt(ctx, 1);
		if (data + 6 > data_end)
			return XDP_PASS;
		__builtin_memcpy(data, c->mac, 6);
	}
	int ret = bpf_redirect_map(&cell_devs, slot, XDP_PASS);
	if (ret != XDP_REDIRECT) {
		count(C_UP_NO_OUTPUT, 1);
		return XDP_PASS;
	}
	count_out(slot, flen);
	return XDP_REDIRECT;
}

/* inline, per broadcast copy: keep it on the peer and on the frame's cell (MAC rewritten there) */
SEC("xdp/devmap")
int xdp_egress(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	struct bcast_meta *m = (void *)(long)ctx->data_meta;
	if ((void *)(m + 1) > data)
		return XDP_DROP;
	__u32 eg = ctx->egress_ifindex, slot = m->slot;
	if (eg == m->peer)
		return XDP_PASS;
	struct cell *c = slot == SLOT_NONE ? 0 : bpf_map_lookup_elem(&cells, &slot);
	if (!c || c->ifindex != eg) {
		__u64 *n = bpf_map_lookup_elem(&egress_filtered, &eg);
		if (n)
			*n += 1;
		return XDP_DROP;
	}
	if (c->rewrite_mac) {
		if (data + 6 > data_end)
			return XDP_DROP;
		__builtin_memcpy(data, c->mac, 6);
	}
	return XDP_PASS;
}

/* DiCAP: keep this cell's frames and every frame the kernel cannot decide (Python decides those). */
SEC("socket")
int dicap_filter(struct __sk_buff *skb)
{
	__u32 flen = skb->len;
	count(C_RX, 1);
	count(C_RX_BYTES, flen);
	struct scratch *s = scratch_buf();
	if (!s)
		return skb->len;
	__u32 n = flen < HDR_MAX ? flen : HDR_MAX;
	/* 1..HDR_MAX without a branch the verifier could lose track of; an empty frame fails */
	n = ((n - 1) & (HDR_MAX - 1)) + 1;
	if (bpf_skb_load_bytes(skb, 0, s->buf, n) < 0) {
		count(C_UP_UNDECODABLE, 1);
		return skb->len;
	}
	__u32 slot = 0, zero = 0;
	int d = decide(s->buf, flen, skb->vlan_present ? 1 : 0, &slot, 0);
	if (d == D_UP)
		return skb->len;
	if (d == D_DROP)
		return 0;
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (cfg && slot == cfg->my_slot) {
		count(C_KEPT, 1);
		return skb->len;
	}
	count(C_OTHER_CELL, 1);
	return 0;
}

/* Only the field we read; libbpf relocates its offset from the running kernel's BTF (CO-RE). */
struct net_device {
	int ifindex;
} __attribute__((preserve_access_index));

/* xdp_devmap_xmit(from_dev, to_dev, sent, drops, err): count what our targets failed to send. */
SEC("raw_tp/xdp_devmap_xmit")
int count_xmit_drops(struct bpf_raw_tracepoint_args *ctx)
{
	int drops = (int)ctx->args[3];
	if (drops <= 0)
		return 0;
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return 0;
	struct net_device *from = (void *)ctx->args[0], *to = (void *)ctx->args[1];
	__u32 fi = BPF_CORE_READ(from, ifindex);
	if (fi != cfg->capture && fi != cfg->side_a && fi != cfg->side_b)
		return 0;
	__u32 ti = BPF_CORE_READ(to, ifindex);
	__u64 *n = bpf_map_lookup_elem(&xmit_drops, &ti);
	if (n)
		__sync_fetch_and_add(n, drops);
	return 0;
}

/* xdp_redirect_err(dev, prog, tgt, err, map_type, map_id, index): a redirect through cell_devs
 * that failed; index is the slot. */
SEC("raw_tp/xdp_redirect_err")
int count_redirect_err(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg || !cfg->devmap_id || (__u32)ctx->args[5] != cfg->devmap_id)
		return 0;
	__u32 slot = (__u32)ctx->args[6];
	__u64 *n = bpf_map_lookup_elem(&redirect_err, &slot);
	if (n)
		__sync_fetch_and_add(n, 1);
	return 0;
}

/* A program that passes everything: veth peers need one to take XDP_REDIRECTed frames. */
SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

/* Benchmarks: the floor of the BPF-stats method for a redirecting program -- every frame to slot 0's
 * interface through cell_devs, as xdp_incubator's last step does, and nothing else. */
SEC("xdp")
int xdp_redirect_floor(struct xdp_md *ctx)
{
	return bpf_redirect_map(&cell_devs, 0, XDP_PASS);
}

/* Benchmarks and tests: count a cell's frames and drop them (a receiver that costs almost nothing). */
SEC("xdp")
int xdp_sink(struct xdp_md *ctx)
{
	count(C_RX, 1);
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
