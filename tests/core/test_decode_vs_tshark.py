"""The batch decoder's fields equal tshark's, frame for frame, on every loadgen scenario."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from celltap.decode import Reason, decode_batch
from celltap.pcap import read_all
from tests.conftest import require_tool

FIELDS = [
    "frame.number", "vlan.id", "ieee8021ad.id", "ip.src", "ip.dst", "ip.id", "ip.flags.mf", "ip.frag_offset",
    "ip.len", "ip.ttl", "ipv6.src", "ipv6.dst", "ipv6.plen", "ipv6.hlim", "ipv6.fraghdr.offset",
    "ipv6.fraghdr.more", "ipv6.fraghdr.ident", "tcp.srcport", "tcp.dstport", "tcp.seq_raw", "tcp.ack_raw",
    "tcp.flags", "tcp.len", "udp.srcport", "udp.dstport", "udp.length", "sctp.srcport", "sctp.dstport",
    "icmp.type", "icmp.code", "icmpv6.type", "icmpv6.code",
]  # fmt: skip

# Frame-level oracle: no reassembly, so every field describes the frame it is printed for.
TSHARK_OPTS = [
    "-o",
    "ip.defragment:FALSE",
    "-o",
    "ipv6.defragment:FALSE",
    "-o",
    "tcp.desegment_tcp_streams:FALSE",
]


def _scenarios() -> list[str]:
    try:
        import celltap.loadgen.scenarios  # noqa: F401  (registers the scenarios)
        from celltap.loadgen.scenario import REGISTRY
    except ImportError:
        return []
    return sorted(REGISTRY)


def _num(text: str) -> int:
    return int(text, 16) if text.startswith("0x") else int(text)


def _addr(text: str) -> bytes:
    import ipaddress

    return ipaddress.ip_address(text).packed


@pytest.fixture(scope="module")
def tshark() -> str:
    return require_tool("tshark")


@pytest.mark.parametrize("scenario", _scenarios() or ["(loadgen missing)"])
def test_fields_equal_tshark(tmp_path: Path, tshark: str, scenario: str) -> None:
    if scenario == "(loadgen missing)":
        pytest.fail("loadgen scenarios could not be imported")
    pcap = tmp_path / f"{scenario}.pcap"
    argv = ["loadgen", "pcap", scenario, str(pcap), "--count", "40", "--seed", "3"]
    subprocess.run([sys.executable, "-m", "celltap.cli", *argv], check=True)
    out = subprocess.run(
        [tshark, "-r", str(pcap), *TSHARK_OPTS, "-T", "fields", "-E", "occurrence=a", "-E", "separator=|",
         *[a for f in FIELDS for a in ("-e", f)]],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    batches = read_all(str(pcap))
    assert batches, "empty capture"
    cols = [decode_batch(b) for b in batches]
    rows = [(c, i) for c in cols for i in range(len(c))]
    assert len(rows) == len(out)
    checked = 0
    for line, (c, i) in zip(out, rows, strict=True):
        t = dict(zip(FIELDS, [v.split(",") if v else [] for v in line.split("|")], strict=True))
        where = f"{scenario} frame {t['frame.number'][0]}"
        first = {k: v[0] for k, v in t.items() if v}
        # VLAN tags: tshark names an 802.1ad outer tag separately.
        tags = t["ieee8021ad.id"] + t["vlan.id"]
        assert int(c.vlan[i]) == (int(tags[0]) if tags else 0), where
        assert int(c.vlan_inner[i]) == (int(tags[1]) if len(tags) > 1 else 0), where
        if "ip.src" in first:
            assert int(c.l3[i]) == 4, where
            assert c.src[i, :4].tobytes() == _addr(first["ip.src"]), where
            assert c.dst[i, :4].tobytes() == _addr(first["ip.dst"]), where
            assert int(c.frag_id[i]) == _num(first["ip.id"]), where
            assert bool(c.frag_more[i]) == (first["ip.flags.mf"] in ("1", "True")), where
            assert int(c.frag_off[i]) == 8 * int(first["ip.frag_offset"]), where
            assert int(c.ip_len[i]) == int(first["ip.len"]), where
            assert int(c.ttl[i]) == int(first["ip.ttl"]), where
        elif "ipv6.src" in first:
            assert int(c.l3[i]) == 6, where
            assert c.src[i].tobytes() == _addr(first["ipv6.src"]), where
            assert c.dst[i].tobytes() == _addr(first["ipv6.dst"]), where
            assert int(c.ip_len[i]) == 40 + int(first["ipv6.plen"]), where
            assert int(c.ttl[i]) == int(first["ipv6.hlim"]), where
            if "ipv6.fraghdr.ident" in first:
                assert bool(c.is_frag[i]), where
                assert int(c.frag_id[i]) == _num(first["ipv6.fraghdr.ident"]), where
                assert int(c.frag_off[i]) == 8 * int(first["ipv6.fraghdr.offset"]), where
                assert bool(c.frag_more[i]) == (first["ipv6.fraghdr.more"] in ("1", "True")), where
        else:
            assert int(c.l3[i]) == 0 and int(c.status[i]) == Reason.NON_IP, where
            continue
        assert int(c.status[i]) == Reason.OK, (where, Reason(int(c.status[i])))
        for proto in ("tcp", "udp", "sctp"):
            if f"{proto}.srcport" in first:
                assert int(c.sport[i]) == int(first[f"{proto}.srcport"]), where
                assert int(c.dport[i]) == int(first[f"{proto}.dstport"]), where
        if "tcp.seq_raw" in first:
            assert int(c.l4[i]) == 6, where
            assert int(c.tcp_seq[i]) == int(first["tcp.seq_raw"]), where
            assert int(c.tcp_ack[i]) == int(first["tcp.ack_raw"]), where
            assert int(c.tcp_flags[i]) == _num(first["tcp.flags"]) & 0xFF, where
            # tshark gives no tcp.len for the first fragment of a fragmented segment.
            if "tcp.len" in first:
                assert int(c.payload_len[i]) == int(first["tcp.len"]), where
            else:
                assert c.is_frag[i], where
        elif "udp.length" in first and not c.is_frag[i]:
            assert int(c.l4[i]) == 17, where
            assert int(c.payload_len[i]) == int(first["udp.length"]) - 8, where
        for fam in ("icmp", "icmpv6"):
            if f"{fam}.type" in first:
                assert int(c.icmp_type[i]) == int(first[f"{fam}.type"]), where
                assert int(c.icmp_code[i]) == int(first[f"{fam}.code"]), where
        if c.is_frag[i] and c.frag_off[i] > 0:
            assert int(c.sport[i]) == 0 and int(c.payload_off[i]) == -1, where
        checked += 1
    assert checked > 0
    assert np.all(np.concatenate([c.status for c in cols]) <= Reason.NON_IP)


# tshark's malformed / expert checks on every scenario live with loadgen: tests/loadgen.
