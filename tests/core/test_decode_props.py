"""Scalar and batch decoders agree on well-formed, random and mutated frames; neither raises.

The encapsulated samples (PPPoE, MPLS, GRE, ERSPAN, VXLAN, and the BSD loopback, FDDI, PPP and
HDLC link types) are crafted by tests/core/frames.py; tshark checks their decode in
test_decode_linktypes_tshark.py, these tests hold the two decode paths equal on them and on
every mutation and truncation of them.
"""

from __future__ import annotations

import logging
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celltap.decode import DecodeOptions, Reason, decode_batch, decode_frame
from celltap.decode import linktypes as lt_mod
from celltap.pcap import (
    LINKTYPE_C_HDLC,
    LINKTYPE_ETHERNET,
    LINKTYPE_FDDI,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_PPP,
    LINKTYPE_PPP_ETHER,
    LINKTYPE_PPP_HDLC,
    LINKTYPE_RAW,
    FrameBatch,
)
from tests.core import frames as fr

SAMPLES = fr.sample_frames()
ENCAP = fr.encap_frames()
OUTER_ONLY = DecodeOptions(decapsulate=False)
# (link type, crafted frames) for every link type beyond Ethernet; NULL in both byte orders.
BY_LINKTYPE = [
    (LINKTYPE_ETHERNET, SAMPLES + ENCAP),
    (LINKTYPE_NULL, fr.null_frames(False, 24) + fr.null_frames(True, 30)),
    (LINKTYPE_LOOP, fr.null_frames(True, 28)),
    (LINKTYPE_FDDI, fr.fddi_frames()),
    (LINKTYPE_PPP, fr.ppp_frames()),
    (LINKTYPE_PPP_HDLC, fr.hdlc_frames()),
    (LINKTYPE_C_HDLC, fr.chdlc_frames()),
    (LINKTYPE_PPP_ETHER, fr.pppoe_link_frames()),
]
LINKTYPES = [lt for lt, _ in BY_LINKTYPE] + [LINKTYPE_RAW, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2]


def assert_agree(
    frames: list[bytes], linktype: int = LINKTYPE_ETHERNET, options: DecodeOptions | None = None
) -> None:
    """Decode `frames` both ways and compare every field of every frame."""
    opts = {} if options is None else {"options": options}
    batch = FrameBatch.from_frames(frames, linktype=linktype)
    cols = decode_batch(batch, **opts)
    for i, frame in enumerate(frames):
        d = decode_frame(frame, linktype, **opts)
        for name in cols.column_names():
            got = getattr(cols, name)[i]
            want = getattr(d, name)
            if name in ("src", "dst"):
                want = np.frombuffer(want.ljust(16, b"\0"), np.uint8)
                assert np.array_equal(got, want), (i, name, frame.hex())
            else:
                assert int(got) == int(want), (i, name, int(got), int(want), frame.hex())


def test_samples_decode_cleanly() -> None:
    statuses = [decode_frame(f).status for f in SAMPLES]
    assert statuses.count(Reason.NON_IP) == 1
    assert all(s in (Reason.OK, Reason.NON_IP) for s in statuses), statuses
    assert_agree(SAMPLES)


@pytest.mark.parametrize(("linktype", "frames"), BY_LINKTYPE)
def test_linktype_samples_agree(linktype: int, frames: list[bytes]) -> None:
    statuses = {decode_frame(f, linktype).status for f in frames}
    assert statuses <= {Reason.OK, Reason.NON_IP}, statuses
    assert Reason.OK in statuses
    assert_agree(frames, linktype)
    assert_agree(frames, linktype, OUTER_ONLY)


def test_known_fields() -> None:
    d = decode_frame(SAMPLES[0])
    assert (d.l3, d.l4, d.sport, d.dport, d.payload_len) == (4, 6, 40000, 80, 18)
    assert d.src == bytes([10, 0, 0, 1])
    qinq = decode_frame(SAMPLES[8])
    assert (qinq.vlan, qinq.vlan_inner, qinq.l3_off) == (200, 300, 22)
    later_frag = decode_frame(SAMPLES[14])
    assert later_frag.is_frag and later_frag.frag_off == 24 and later_frag.payload_off == -1
    assert later_frag.frag_id == 0xABCD and later_frag.sport == 0
    padded = decode_frame(SAMPLES[-1])
    assert padded.payload_len == 0  # Ethernet padding is not payload


def test_tunnel_option() -> None:
    """Default: the inner flow of every tunnel; with decapsulate off: the outer flow."""
    inner = fr.ipv4("192.168.1.1", "192.168.2.2", 6, fr.tcp(41000, 8080, data=b"in"))
    tunnels = [
        fr.eth(fr.ipv4("10.1.0.1", "10.1.0.2", 47, fr.gre(inner, 0x0800, key=5))),
        fr.eth(fr.ipv4("10.1.0.1", "10.1.0.2", 47, fr.gre(fr.ether_inner(inner), 0x6558))),
        fr.eth(fr.ipv4("10.1.0.1", "10.1.0.2", 47, fr.gre(fr.erspan2(fr.ether_inner(inner)), 0x88BE, seq=1))),
        fr.eth(fr.ipv4("10.1.0.1", "10.1.0.2", 17, fr.vxlan(fr.ether_inner(inner), sport=50000))),
        fr.eth(fr.ipv4("10.1.0.1", "10.1.0.2", 4, inner)),
        fr.eth(fr.ipv4("10.1.0.1", "10.1.0.2", 17, fr.geneve(fr.ether_inner(inner), sport=50000))),
    ]
    for frame in tunnels:
        d = decode_frame(frame)
        assert (d.src, d.dst, d.l4, d.sport, d.dport) == (
            bytes([192, 168, 1, 1]),
            bytes([192, 168, 2, 2]),
            6,
            41000,
            8080,
        )
        assert frame[d.payload_off : d.payload_off + d.payload_len] == b"in"
        o = decode_frame(frame, options=OUTER_ONLY)
        assert (o.src, o.dst, o.encap) == (bytes([10, 1, 0, 1]), bytes([10, 1, 0, 2]), 0)
        assert (o.l4, o.dport) in ((47, 0), (17, 4789), (4, 0), (17, 6081))
    # another VXLAN port only when configured
    other = fr.eth(fr.ipv4("10.1.0.1", "10.1.0.2", 17, fr.vxlan(fr.ether_inner(inner), dport=8472)))
    assert decode_frame(other).dport == 8472
    assert decode_frame(other, options=DecodeOptions(vxlan_ports=(4789, 8472))).dport == 8080
    assert_agree([*tunnels, other], options=DecodeOptions(vxlan_ports=(4789, 8472)))


def test_null_both_byte_orders() -> None:
    """DLT_NULL is in the capturing host's byte order: either must give the same flows."""
    for af6 in (24, 28, 30):
        le = [decode_frame(f, LINKTYPE_NULL) for f in fr.null_frames(False, af6)]
        be = [decode_frame(f, LINKTYPE_NULL) for f in fr.null_frames(True, af6)]
        assert [d.l3 for d in le] == [d.l3 for d in be] == [4, 6, 0, 4]
        assert le == be
    # DLT_LOOP is network byte order only: a little-endian family is not one
    assert decode_frame(fr.null_frames(False)[0], LINKTYPE_LOOP).status == Reason.NON_IP


def test_damage_is_counted() -> None:
    """Every truncation of every encapsulated frame decodes (both paths) to a status, never raises."""
    for linktype, frames in BY_LINKTYPE:
        cuts = [f[:n] for f in frames for n in range(len(f))]
        assert_agree(cuts, linktype)
        statuses = decode_batch(FrameBatch.from_frames(cuts, linktype=linktype)).status
        assert (statuses != Reason.OK).any()


def test_depth_and_label_limits() -> None:
    inner = fr.ipv4("192.168.1.1", "192.168.2.2", 17, fr.udp(1, 2, b"deep"))
    frame = inner
    for _ in range(6):  # GRE in IP six times: past the nesting limit
        frame = fr.ipv4("10.1.0.1", "10.1.0.2", 47, fr.gre(frame, 0x0800))
    deep = fr.eth(frame)
    assert decode_frame(deep).status == Reason.TOO_DEEP
    labels = fr.eth(fr.mpls(list(range(16, 26)), inner), 0x8847)  # ten labels
    assert decode_frame(labels).status == Reason.TOO_MANY_MPLS_LABELS
    pw = inner
    for _ in range(6):  # Ethernet pseudowire in Ethernet pseudowire ...
        pw = fr.ether_inner(fr.mpls([99], b"\0\0\0\0" + pw), 0x8847)
    deep_pw = fr.eth(pw[14:], 0x8847)
    assert decode_frame(deep_pw).status == Reason.TOO_DEEP
    # label limits count per stack: 3 outside a GRE tunnel and 6 inside it are two stacks
    two_stacks = fr.eth(
        fr.mpls(
            [1, 2, 3], fr.ipv4("10.0.0.1", "10.0.0.2", 47, fr.gre(fr.mpls([4, 5, 6, 7, 8, 9], inner), 0x8847))
        ),
        0x8847,
    )
    assert decode_frame(two_stacks).status == Reason.OK
    assert_agree([deep, labels, deep_pw, two_stacks])


def test_unsupported_linktype_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    lt_mod._warned.discard(147)
    with caplog.at_level(logging.WARNING, logger="celltap.decode"):
        for _ in range(3):
            cols = decode_batch(FrameBatch.from_frames([b"\0" * 40] * 5, linktype=147))
            assert (cols.status == Reason.UNSUPPORTED_LINKTYPE).all()
            assert decode_frame(b"\0" * 40, 147).status == Reason.UNSUPPORTED_LINKTYPE
    lines = [r.getMessage() for r in caplog.records if "linktype 147" in r.getMessage()]
    assert len(lines) == 1 and "USER0" in lines[0], lines


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=120), min_size=1, max_size=20), st.sampled_from(LINKTYPES))
def test_random_bytes_agree(frames: list[bytes], linktype: int) -> None:
    assert_agree(frames, linktype)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_frames_agree(data: st.DataObject) -> None:
    linktype, pool = data.draw(st.sampled_from(BY_LINKTYPE))
    frames = []
    for _ in range(data.draw(st.integers(1, 12))):
        frame = bytearray(data.draw(st.sampled_from(pool)))
        for _ in range(data.draw(st.integers(0, 4))):
            if not frame:
                break
            pos = data.draw(st.integers(0, len(frame) - 1))
            frame[pos] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(frame)))
        frames.append(bytes(frame[:cut] if data.draw(st.booleans()) else frame))
    assert_agree(frames, linktype)
    assert_agree(frames, linktype, OUTER_ONLY)


def _wrap(data: st.DataObject, payload: bytes) -> tuple[bytes, int]:
    """One more (crafted) encapsulation around `payload`: (bytes, ethertype announcing them)."""
    kinds = ["mpls", "pppoe", "vlan", "gre", "gretap", "vxlan", "geneve", "gre6", "ipip", "pw"]
    kind = data.draw(st.sampled_from(kinds))
    o4 = ("10.9.0.1", "10.9.0.2")
    if kind == "mpls":
        labels = data.draw(st.lists(st.integers(16, (1 << 20) - 1), min_size=1, max_size=9))
        return fr.mpls(labels, payload), 0x8847
    if kind == "pppoe":
        return fr.pppoe(payload, proto=data.draw(st.sampled_from([0x21, 0x57, 0x281]))), 0x8864
    if kind == "vlan":
        return struct.pack("!HH", data.draw(st.integers(0, 4095)), 0x0800) + payload, 0x8100
    if kind == "gre":
        proto = data.draw(st.sampled_from([0x0800, 0x86DD, 0x8847]))
        key = data.draw(st.sampled_from([None, 7]))
        return fr.ipv4(*o4, 47, fr.gre(payload, proto, key=key)), 0x0800
    if kind == "gretap":
        inner_et = data.draw(st.sampled_from([0x0800, 0x86DD, 0x8847, 0x8864]))
        return fr.ipv4(*o4, 47, fr.gre(fr.ether_inner(payload, inner_et), 0x6558)), 0x0800
    if kind == "vxlan":
        inner_et = data.draw(st.sampled_from([0x0800, 0x86DD, 0x8847, 0x8100]))
        return fr.ipv4(*o4, 17, fr.vxlan(fr.ether_inner(payload, inner_et))), 0x0800
    if kind == "geneve":
        proto = data.draw(st.sampled_from([0x6558, 0x0800, 0x86DD]))
        inner = fr.ether_inner(payload) if proto == 0x6558 else payload
        return fr.ipv4(
            *o4, 17, fr.geneve(inner, proto, options=b"\0" * data.draw(st.sampled_from([0, 4, 8])))
        ), 0x0800
    if kind == "ipip":
        return fr.ipv4(*o4, data.draw(st.sampled_from([4, 41])), payload), 0x0800
    if kind == "gre6":
        return fr.ipv6(fr.V6A, fr.V6B, 47, fr.gre(payload, 0x0800)), 0x86DD
    return fr.mpls([99], b"\0\0\0\0" + fr.ether_inner(payload, 0x0800)), 0x8847


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_nested_encapsulations_agree(data: st.DataObject) -> None:
    """Random stacks of encapsulations (the ethertypes may lie: that is damage, also compared)."""
    frames = []
    for _ in range(data.draw(st.integers(1, 8))):
        payload = data.draw(st.sampled_from(SAMPLES))[14:]
        et = 0x0800
        for _ in range(data.draw(st.integers(1, 6))):
            payload, et = _wrap(data, payload)
        frame = fr.eth(payload, et)
        if data.draw(st.booleans()):
            frame = frame[: data.draw(st.integers(0, len(frame)))]
        frames.append(frame)
    assert_agree(frames)
    assert_agree(frames, options=OUTER_ONLY)
