"""Header builders against independent references: a word-by-word RFC 1071 sum, the published
CRC32c check value, and tshark's dissection of hand-built packets."""

from __future__ import annotations

import struct
from pathlib import Path

from celltap.loadgen.checksum import crc32c, internet_checksum, transport_checksum
from celltap.loadgen.fragment import even_pieces, ipv4_fragments, ipv6_fragments
from celltap.loadgen.packets import (
    ETH_IPV4,
    ETH_IPV6,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    SYN,
    TPID_8021AD,
    TPID_8021Q,
    destination_options,
    ethernet,
    hop_by_hop,
    ipv4,
    ipv4_option_record_route,
    ipv4_option_router_alert,
    ipv6,
    pad_frame,
    sctp_init_chunk,
    sctp_packet,
    segment_routing,
    tcp,
    tcp_options,
    udp,
)
from hypothesis import given
from hypothesis import strategies as st

from celltap.pcap import PcapWriter
from tests.loadgen.oracle import fields

MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
V4A, V4B = bytes((192, 0, 2, 1)), bytes((198, 51, 100, 2))
V6A, V6B = (
    bytes.fromhex("20010db8000000000000000000000001"),
    bytes.fromhex("20010db8000000000000000000000002"),
)


def reference_checksum(data: bytes) -> int:
    """RFC 1071, the slow way: add 16-bit words with end-around carry."""
    if len(data) % 2:
        data += b"\0"
    s = 0
    for (w,) in struct.iter_unpack("!H", data):
        s += w
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


@given(st.binary(max_size=3000))
def test_internet_checksum_matches_rfc1071(data: bytes) -> None:
    assert internet_checksum(data) == reference_checksum(data)


@given(st.binary(min_size=8, max_size=200))
def test_checksum_of_checksummed_data_verifies(data: bytes) -> None:
    c = internet_checksum(data + b"\0" * (len(data) % 2))
    assert reference_checksum(data + b"\0" * (len(data) % 2) + struct.pack("!H", c)) == 0


def test_crc32c_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value (RFC 3720 / reveng catalogue)
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros


def test_udp_pseudo_header_v6() -> None:
    seg = udp(V6A, V6B, 1234, 53, b"abc")
    pseudo = V6A + V6B + struct.pack("!I", len(seg)) + b"\0\0\0\x11"
    assert reference_checksum(pseudo + seg) == 0
    assert (
        transport_checksum(V6A, V6B, PROTO_UDP, seg[:6] + b"\0\0" + seg[8:])
        == struct.unpack("!H", seg[6:8])[0]
    )


def _write(path: Path, frames: list[bytes]) -> Path:
    with PcapWriter(str(path)) as w:
        for k, f in enumerate(frames):
            w.write(1_700_000_000_000_000_000 + k * 1000, f)
    return path


def test_tshark_reads_options_tags_and_extension_headers(tmp_path: Path) -> None:
    opts = tcp_options(mss=1460, sack_permitted=True, wscale=7, timestamps=(123456, 0))
    syn4 = tcp(V4A, V4B, 40000, 80, 1000, 0, SYN, options=opts)
    ip4 = ipv4(
        V4A, V4B, PROTO_TCP, syn4, ident=7, options=ipv4_option_record_route(2) + ipv4_option_router_alert()
    )
    f1 = pad_frame(ethernet(MAC_B, MAC_A, ETH_IPV4, ip4, ((TPID_8021AD, 100), (TPID_8021Q, 10))))
    syn6 = tcp(V6A, V6B, 40000, 443, 2000, 0, SYN, options=opts)
    ip6 = ipv6(
        V6A, V6B, PROTO_TCP, syn6, ext=(hop_by_hop(), destination_options(), segment_routing([V6B, V6A]))
    )
    f2 = ethernet(MAC_B, MAC_A, ETH_IPV6, ip6)
    sctp = sctp_packet(5000, 3868, 0, sctp_init_chunk(0xDEADBEEF, 65536, 10, 10, 42))
    f3 = pad_frame(ethernet(MAC_B, MAC_A, ETH_IPV4, ipv4(V4A, V4B, PROTO_SCTP, sctp)))
    pcap = _write(tmp_path / "p.pcap", [f1, f2, f3])
    rows = fields(
        pcap,
        [
            "tcp.options.mss_val",
            "tcp.option_kind",
            "tcp.options.wscale.shift",
            "tcp.options.timestamp.tsval",
            "tcp.checksum.status",
            "ip.checksum.status",
            "ip.opt.type",
            "vlan.id",
            "ieee8021ad.id",
            "ipv6.hopopts",
            "ipv6.dstopts",
            "ipv6.routing.type",
            "sctp.checksum.status",
            "sctp.chunk_type",
        ],
    )
    r1, r2, r3 = rows
    assert r1[0] == "1460" and {"2", "4", "8", "3"} <= set(r1[1].split(","))  # MSS SACK-perm TS WS
    assert r1[2:6] == ["7", "123456", "1", "1"]
    assert r1[7:9] == ["10", "100"] and "7" in r1[6].split(",")
    assert r2[0] == "1460" and r2[2:5] == ["7", "123456", "1"] and r2[9] and r2[10] and r2[11] == "4"
    assert r3[12:] == ["1", "1"]


def test_fragments_reassembled_by_tshark(tmp_path: Path) -> None:
    data = bytes(range(256)) * 16
    dg4 = udp(V4A, V4B, 5555, 7, data)
    dg6 = udp(V6A, V6B, 5555, 7, data)
    pieces = even_pieces(len(dg4), 1480)
    frames = [
        ethernet(MAC_B, MAC_A, ETH_IPV4, p)
        for p in ipv4_fragments(V4A, V4B, PROTO_UDP, dg4, 99, pieces[::-1])
    ]
    frames += [
        ethernet(MAC_B, MAC_A, ETH_IPV6, p)
        for p in ipv6_fragments(V6A, V6B, PROTO_UDP, dg6, 0x12345, even_pieces(len(dg6), 1232))
    ]
    pcap = _write(tmp_path / "f.pcap", frames)
    rows = fields(
        pcap, ["echo.data", "udp.checksum.status", "ip.fragment.count", "ipv6.fragment.count"], "udp"
    )
    assert len(rows) == 2
    for r in rows:
        assert bytes.fromhex(r[0]) == data and r[1] == "1"
    assert rows[0][2] == "3" and rows[1][3] == "4"
