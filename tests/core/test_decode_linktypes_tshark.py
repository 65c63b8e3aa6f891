"""Both decode paths against tshark on link types and encapsulations beyond plain Ethernet.

Crafted captures (tests/core/frames.py) of every link type and encapsulation the decoder follows,
one pcap per link type, are decoded by tshark and by both of our paths; per frame the innermost
IP layer tshark shows (the last `ip` / `ipv6` of frame.protocols, its occurrence of ip.src etc.)
must be ours, with its ports.  Where we deliberately stop earlier than tshark the rule is checked
against tshark's own fields, not skipped:

* an outer IP fragment is not decapsulated (its inner packet is incomplete);
* GRE of a version other than 0 is not followed (Zeek and Suricata do not either);
* UDP to port 4789 without the VXLAN I flag stays UDP (the Linux VXLAN receiver drops it);
* an inner Ethernet frame without IP is NON_IP (tshark's innermost IP is then the outer one).

The IP header an ICMP error quotes is not a layer of the frame: frame.protocols is cut after icmp.

With `decapsulate=False` the flow must be tshark's IP layer just before the first GRE / VXLAN.
Damaged copies (snapped inside a header we must read) must be flagged by tshark as short or
malformed, and must get the Reason their construction implies, in both paths.
"""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

import numpy as np
import pytest

from celltap.decode import DecodeOptions, Reason, decode_batch, decode_frame
from celltap.pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_FDDI,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_PPP,
    LINKTYPE_PPP_ETHER,
    PcapWriter,
    read_all,
)
from tests.conftest import require_tool
from tests.core import frames as fr
from tests.core.test_decode_props import BY_LINKTYPE

OUTER_ONLY = DecodeOptions(decapsulate=False)
FIELDS = [
    "frame.number", "frame.protocols", "ip.src", "ip.dst", "ip.flags.mf", "ip.frag_offset", "ipv6.src",
    "ipv6.dst", "tcp.srcport", "tcp.dstport", "udp.srcport", "udp.dstport", "gre.flags_and_version",
    "vxlan.flags", "_ws.malformed", "_ws.short",
]  # fmt: skip
# Frame-level oracle (no reassembly); the crafted pseudowire's bottom label 17 carries a control word.
TSHARK_OPTS = ["-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE", "-d", "mpls.label==17,pwethcw"]
TUNNELS = ("gre", "vxlan", "geneve")


@pytest.fixture(scope="module")
def tshark() -> str:
    return require_tool("tshark")


def tshark_rows(tshark: str, pcap: Path) -> list[dict[str, list[str]]]:
    """tshark's fields for every frame, each a list of its occurrences (outermost first)."""
    out = subprocess.run(
        [tshark, "-r", str(pcap), *TSHARK_OPTS, "-T", "fields", "-E", "occurrence=a", "-E", "separator=|",
         *[a for f in FIELDS for a in ("-e", f)]],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    rows = []
    for line in out:
        vals = line.split("|")
        row = {f: (v.split(",") if v else []) for f, v in zip(FIELDS, vals, strict=True)}
        protos = vals[1].split(":")
        for n, proto in enumerate(protos):
            if proto in ("icmp", "icmpv6"):  # what follows is a quoted packet, not a layer of the frame
                protos = protos[: n + 1]
                break
        row["protos"] = protos
        rows.append(row)
    return rows


def _nth(row: dict[str, list[str]], protos: list[str], at: int) -> int:
    """Which occurrence of its protocol the layer at protos[at] is."""
    return protos[: at + 1].count(protos[at]) - 1


def _expected_stop(row: dict[str, list[str]], decapsulate: bool) -> int:
    """Index in frame.protocols of the IP layer whose flow we must report (-1: none)."""
    protos = row["protos"]
    ips = [i for i, p in enumerate(protos) if p in ("ip", "ipv6")]
    if not ips:
        return -1
    stop = ips[-1]
    ends = [  # tunnel protocols, and an IP layer right inside another (IP in IP)
        i for i, p in enumerate(protos) if p in TUNNELS or (i in ips and i - 1 in ips)
    ]
    if not decapsulate and ends:
        return max(i for i in ips if i < ends[0])
    first = ips[0]
    if (
        protos[first] == "ip"
        and row["ip.flags.mf"]
        and (row["ip.flags.mf"][0] in ("1", "True") or int(row["ip.frag_offset"][0]) > 0)
    ):
        return first  # an outer fragment: not decapsulated
    for n, ver in enumerate(row["gre.flags_and_version"]):
        if int(ver, 16) & 0x7:
            gre_at = [i for i, p in enumerate(protos) if p == "gre"][n]
            return max(i for i in ips if i < gre_at)
    for n, flags in enumerate(row["vxlan.flags"]):
        if not int(flags, 16) & 0x0800:
            vx_at = [i for i, p in enumerate(protos) if p == "vxlan"][n]
            return max(i for i in ips if i < vx_at)
    return stop


def _innermost_non_ip(protos: list[str]) -> bool:
    """tshark shows an Ethernet frame past the last IP layer, and no IP in it."""
    ips = [i for i, p in enumerate(protos) if p in ("ip", "ipv6")]
    return bool(ips) and "eth" in protos[ips[-1] + 1 :]


@pytest.mark.parametrize(("linktype", "frames"), BY_LINKTYPE, ids=[str(lt) for lt, _ in BY_LINKTYPE])
@pytest.mark.parametrize("decapsulate", [True, False], ids=["decap", "outer"])
def test_crafted_linktypes_equal_tshark(
    tmp_path: Path, tshark: str, linktype: int, frames: list[bytes], decapsulate: bool
) -> None:
    pcap = tmp_path / f"crafted-{linktype}.pcap"
    with PcapWriter(str(pcap), linktype=linktype) as w:
        for n, frame in enumerate(frames):
            w.write(n * 1000, frame)
    rows = tshark_rows(tshark, pcap)
    (batch,) = read_all(str(pcap))
    assert batch.linktype == linktype and len(batch) == len(rows) == len(frames)
    opts = DecodeOptions(decapsulate=decapsulate)
    cols = decode_batch(batch, opts)
    checked = {"ports": 0, "ip": 0, "non-ip": 0}
    for i, row in enumerate(rows):
        if decapsulate and _innermost_non_ip(row["protos"]):
            assert int(cols.status[i]) == Reason.NON_IP, row["protos"]
            checked["non-ip"] += 1
        elif _expected_stop(row, decapsulate) < 0:
            assert int(cols.status[i]) == Reason.NON_IP and int(cols.l3[i]) == 0, row["protos"]
            checked["non-ip"] += 1
        else:
            checked[_check(cols, i, row, decapsulate)] += 1
        d = decode_frame(batch.frame(i), linktype, options=opts)
        assert (int(d.status), d.src, d.sport, d.dport) == (
            int(cols.status[i]),
            cols.src[i, : len(d.src)].tobytes(),
            int(cols.sport[i]),
            int(cols.dport[i]),
        )
    assert checked["ports"] > 0, checked


def _check(cols, i: int, row: dict[str, list[str]], decapsulate: bool) -> str:
    """Frame i against tshark's IP layer at the expected stop; returns what was compared."""
    protos = row["protos"]
    where = f"frame {row['frame.number'][0]} {':'.join(protos)}"
    stop = _expected_stop(row, decapsulate)
    fam = protos[stop]
    k = _nth(row, protos, stop)
    assert int(cols.status[i]) == Reason.OK, (where, Reason(int(cols.status[i])))
    width = 4 if fam == "ip" else 16
    assert int(cols.l3[i]) == (4 if fam == "ip" else 6), where
    assert cols.src[i, :width].tobytes() == ipaddress.ip_address(row[f"{fam}.src"][k]).packed, where
    assert cols.dst[i, :width].tobytes() == ipaddress.ip_address(row[f"{fam}.dst"][k]).packed, where
    nxt = protos[stop + 1] if stop + 1 < len(protos) else ""
    frag = bool(cols.is_frag[i])
    if nxt in ("tcp", "udp") and not frag:
        n = _nth(row, protos, stop + 1)
        assert int(cols.l4[i]) == (6 if nxt == "tcp" else 17), where
        assert int(cols.sport[i]) == int(row[f"{nxt}.srcport"][n]), where
        assert int(cols.dport[i]) == int(row[f"{nxt}.dstport"][n]), where
        return "ports"
    if nxt == "gre":
        assert int(cols.l4[i]) == 47 and int(cols.sport[i]) == 0, where
    return "ip"


def _damaged() -> list[tuple[int, bytes, int, Reason]]:
    """(link type, frame, captured bytes, reason) with the cut placed by the frame's construction."""
    inner = fr.ipv4("192.168.1.1", "192.168.2.2", 6, fr.tcp(41000, 8080, data=b"x" * 30))
    o4 = ("10.1.0.1", "10.1.0.2")
    gre_ip = fr.eth(fr.ipv4(*o4, 47, fr.gre(inner, 0x0800)))  # GRE at 34, inner IP at 38, TCP at 58
    gre_key = fr.eth(fr.ipv4(*o4, 47, fr.gre(inner, 0x0800, key=5)))  # GRE header 8 bytes
    vx = fr.eth(fr.ipv4(*o4, 17, fr.vxlan(fr.ether_inner(inner))))  # VXLAN 42, inner Ethernet 50, IP 64
    lbl = fr.eth(fr.mpls([100, 200], inner), 0x8847)  # labels at 14 and 18, IP at 22
    ppp = fr.eth(fr.pppoe(inner), 0x8864)  # PPPoE at 14, IP at 22
    e3 = fr.eth(fr.ipv4(*o4, 47, fr.gre(fr.erspan3(fr.ether_inner(inner)), 0x22EB, seq=1)))  # ERSPAN at 42
    e2 = fr.eth(fr.ipv4(*o4, 47, fr.gre(fr.erspan2(fr.ether_inner(inner)), 0x88BE, seq=1)))  # Ethernet at 50
    eth = LINKTYPE_ETHERNET
    return [
        (eth, gre_ip, 36, Reason.TRUNCATED_L4),
        (eth, gre_key, 40, Reason.TRUNCATED_L4),
        (eth, gre_ip, 48, Reason.TRUNCATED_L3),
        (eth, gre_ip, 68, Reason.TRUNCATED_L4),
        (eth, vx, 46, Reason.TRUNCATED_L4),
        (eth, vx, 56, Reason.TRUNCATED_L2),
        (eth, vx, 70, Reason.TRUNCATED_L3),
        (eth, lbl, 16, Reason.TRUNCATED_L2),
        (eth, lbl, 30, Reason.TRUNCATED_L3),
        (eth, ppp, 18, Reason.TRUNCATED_L2),
        (eth, e3, 50, Reason.TRUNCATED_L2),
        (eth, e2, 52, Reason.TRUNCATED_L2),
        (LINKTYPE_NULL, fr.null_frames(False)[0], 2, Reason.TRUNCATED_L2),
        (LINKTYPE_LOOP, fr.null_frames(True)[1], 20, Reason.TRUNCATED_L3),
        (LINKTYPE_FDDI, fr.fddi_frames()[0], 15, Reason.TRUNCATED_L2),
        (LINKTYPE_PPP, fr.ppp_frames()[0], 3, Reason.TRUNCATED_L2),
        (LINKTYPE_PPP_ETHER, fr.pppoe_link_frames()[0], 5, Reason.TRUNCATED_L2),
    ]


def test_damaged_frames_counted(tmp_path: Path, tshark: str) -> None:
    """Snapped inside a header: tshark calls it short or malformed; both paths give the reason."""
    cases = _damaged()
    for n, (linktype, frame, cut, reason) in enumerate(cases):
        pcap = tmp_path / f"damaged-{n}.pcap"
        with PcapWriter(str(pcap), linktype=linktype) as w:
            w.write(0, frame[:cut], wirelen=len(frame))
        (row,) = tshark_rows(tshark, pcap)
        assert row["_ws.short"] or row["_ws.malformed"], (n, row["protos"])
        (batch,) = read_all(str(pcap))
        cols = decode_batch(batch)
        assert Reason(int(cols.status[0])) == reason, n
        assert decode_frame(batch.frame(0), linktype, int(batch.wirelens[0])).status == reason, n
    statuses = np.array([r for *_x, r in cases])
    assert (statuses != Reason.OK).all()
