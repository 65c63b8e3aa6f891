"""Offline split: `celltap incubator --read PCAP --cells N --write-dir DIR`, checked with tshark."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

import pytest

from celltap.pcap import read_all
from celltap.ring import Ring
from tests.conftest import require_tool
from tests.incubator.oracle import expected_owner, tshark_packets

CELLTAP = [sys.executable, "-m", "celltap.cli"]
SCALE = 64  # the incubator's documented weight scale (docs/incubator.md)


def frames_of(path: str) -> list[bytes]:
    return [b.frame(i) for b in read_all(path) for i in range(len(b))]


def split(src: str, cells: int, out: str, *extra: str, stdin: bytes | None = None) -> dict:
    p = subprocess.run(
        [*CELLTAP, "incubator", "--read", src, "--cells", str(cells), "--write-dir", out, "--json", *extra],
        input=stdin,
        capture_output=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)


def ring_for(cells: int) -> Ring:
    return Ring({f"cell-{i}": SCALE for i in range(cells)})


def test_frag_scenario_every_fragment_on_its_flows_cell(tmp_path):
    tshark = require_tool("tshark")
    src = str(tmp_path / "frag.pcap")
    subprocess.run([*CELLTAP, "loadgen", "pcap", "frag", src, "--count", "90", "--seed", "3"], check=True)
    out = str(tmp_path / "out")
    summary = split(src, 4, out)
    inp = tshark_packets(src, tshark)
    assert sum(p.is_frag for p in inp) > 200
    assert {p.l3 for p in inp if p.is_frag} == {4, 6}
    # The flow of each datagram comes from its first fragment (the one that carries the ports).
    flow_of = {p.datagram: p for p in inp if p.is_frag and p.frag_off == 0}
    ring = ring_for(4)
    seen = collections.Counter()
    for cell in range(4):
        for p in tshark_packets(os.path.join(out, f"cell-{cell}.pcap"), tshark):
            head = flow_of[p.datagram] if p.is_frag else p
            want = expected_owner(ring, p.l3, head.proto, head.src, head.sport, head.dst, head.dport)
            assert want == f"cell-{cell}", (p, want)
            seen[p.is_frag] += 1
    assert seen[True] == sum(p.is_frag for p in inp)
    # Nothing lost, nothing doubled: the outputs hold exactly the input frames (duplicates included).
    outs = collections.Counter(f for c in range(4) for f in frames_of(os.path.join(out, f"cell-{c}.pcap")))
    assert outs == collections.Counter(frames_of(src))
    assert summary["received"] == summary["forwarded"] == len(frames_of(src))
    assert summary["dropped"] == {}


def test_split_balance_and_flows_whole(tmp_path):
    """Over 12k flows of minimum-size frames, cell sizes stay within 10 % of each other."""
    tshark = require_tool("tshark")
    src = str(tmp_path / "small.pcap")
    subprocess.run(
        [*CELLTAP, "loadgen", "pcap", "small", src, "--count", "120000", "--flows", "12000"], check=True
    )
    out = str(tmp_path / "out")
    summary = split(src, 4, out)
    sizes = list(summary["cells"].values())
    assert sum(sizes) == 120000
    assert max(sizes) / min(sizes) <= 1.10, sizes
    # Both directions of every flow in one file: check with tshark on one cell's output.
    ring = ring_for(4)
    pkts = tshark_packets(os.path.join(out, "cell-2.pcap"), tshark)
    assert len(pkts) == summary["cells"]["cell-2"]
    flows = collections.defaultdict(set)
    for p in pkts:
        assert expected_owner(ring, p.l3, p.proto, p.src, p.sport, p.dst, p.dport) == "cell-2"
        flows[p.flow].add(p.src)
    assert sum(len(v) == 2 for v in flows.values()) > len(flows) // 2  # both directions seen


def test_split_reads_stdin_and_matches_file_split(tmp_path):
    src = str(tmp_path / "mixed.pcap")
    subprocess.run([*CELLTAP, "loadgen", "pcap", "mixed", src], check=True)
    a = split(src, 3, str(tmp_path / "a"))
    with open(src, "rb") as f:
        b = split("-", 3, str(tmp_path / "b"), stdin=f.read())
    assert a["cells"] == b["cells"]
    for i in range(3):
        assert frames_of(str(tmp_path / "a" / f"cell-{i}.pcap")) == frames_of(
            str(tmp_path / "b" / f"cell-{i}.pcap")
        )


def test_split_counts_damaged_frames_by_reason(tmp_path):
    """Truncated IP headers are dropped and counted by reason; conservation holds."""
    from celltap.pcap import PcapWriter

    src = str(tmp_path / "bad.pcap")
    ip = bytes.fromhex("4500002800010000400600000a0000010a000002")
    tcp = bytes.fromhex("04d2005000000001000000005010ffff00000000")
    good = bytes.fromhex("020000000001020000000002" + "0800") + ip + tcp
    with PcapWriter(src) as w:
        w.write(1, good)
        w.write(2, good[:20])  # Ethernet + 6 bytes of IP
        w.write(3, b"\xff" * 12 + b"\x08\x06" + bytes(28))  # ARP -> cell 0 by default policy
    s = split(src, 2, str(tmp_path / "o"), "--non-ip", "bridge")
    assert s["received"] == 3
    assert s["forwarded"] == 1
    assert s["dropped"] == {"truncated_l3": 1, "non_ip_policy": 1}


def test_bad_input_is_one_clear_error(tmp_path):
    bad = tmp_path / "not.pcap"
    bad.write_bytes(b"hello world, not a capture")
    p = subprocess.run(
        [*CELLTAP, "incubator", "--read", str(bad), "--cells", "2", "--write-dir", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2
    assert "magic" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("cells", [1, 5])
def test_split_file_names(tmp_path, cells):
    src = str(tmp_path / "dns.pcap")
    subprocess.run([*CELLTAP, "loadgen", "pcap", "dns", src], check=True)
    split(src, cells, str(tmp_path / "o"))
    assert sorted(os.listdir(tmp_path / "o")) == sorted(f"cell-{i}.pcap" for i in range(cells))


def test_split_keeps_the_link_type_of_pcapng_and_cooked_input(tmp_path):
    """A Linux cooked (SLL) capture in pcapng splits into pcaps of the same link type."""
    from celltap.pcap import PcapngWriter

    src = str(tmp_path / "sll.pcapng")
    ip = bytes.fromhex("4500001c000100004011" + "0000" + "0a000001" + "0a000002")
    udp = bytes.fromhex("04d2003500080000")
    sll = bytes.fromhex("0000000100060200000000010000" + "0800")
    with PcapngWriter(src, linktype=113) as w:
        for i in range(20):
            w.write(i, sll + ip[:4] + i.to_bytes(2, "big") + ip[6:] + udp)
    s = split(src, 2, str(tmp_path / "o"))
    assert s["forwarded"] == 20 and s["dropped"] == {}
    tshark = require_tool("tshark")
    encaps = []
    for i in range(2):
        encaps += subprocess.run(
            [tshark, "-r", str(tmp_path / "o" / f"cell-{i}.pcap"), "-T", "fields", "-e", "frame.encap_type"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    assert encaps == ["25"] * 20  # WTAP_ENCAP_SLL: the cooked header survived
    assert sum(len(frames_of(str(tmp_path / "o" / f"cell-{i}.pcap"))) for i in range(2)) == 20
