"""Duplicate removal (global `dedup: yes`, cell/dedup.py).

The end-to-end test starts from a real capture (curl -> python's http.server over IPv4 and IPv6, dig
-> a UDP echo, tcpdump on a namespace loopback) and crafts the mirror-port case from it: every frame
followed by a second copy as a router's other port would show it (TTL / hop limit one lower, IPv4
header checksum recomputed, other MAC addresses, 15 us later).  Files made that way are labelled
"crafted".  `celltap analyze` must write the same logs for the crafted capture with dedup on as for
the real one, and count one `duplicate` per copy; with dedup off (the default) the copies change
the results, and dedup on the real capture changes nothing.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from celltap.cell.abstractor import Abstractor
from celltap.cell.dedup import Deduplicator
from celltap.cell.sftap_config import load_config

from celltap.decode import decode_batch
from celltap.pcap import PcapWriter, read_all
from celltap.pcap.batch import FrameBatch
from tests.cell.live_capture import LoopCapture
from tests.cell.wire import parse_text
from tests.conftest import require_root, require_tool

DEFAULTS = Path(__file__).resolve().parents[2] / "celltap" / "defaults" / "sftap.yaml"


def _ipv4_checksum(header: bytes) -> int:
    s = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def router_copy(frame: bytes) -> bytes:
    """The frame as seen past one router hop: new MACs, TTL / hop limit - 1, IPv4 checksum redone."""
    f = bytearray(frame)
    f[0:12] = b"\x02\xaa\xbb\xcc\xdd\x01\x02\xaa\xbb\xcc\xdd\x02"
    etype = struct.unpack_from("!H", f, 12)[0]
    if etype == 0x0800:
        ihl = (f[14] & 0x0F) * 4
        f[22] = (f[22] - 1) & 0xFF
        f[24:26] = b"\0\0"
        f[24:26] = struct.pack("!H", _ipv4_checksum(bytes(f[14 : 14 + ihl])))
    elif etype == 0x86DD:
        f[21] = (f[21] - 1) & 0xFF
    return bytes(f)


def crafted_doubled(src: Path, dst: Path) -> int:
    """Write every frame of `src` twice (the second a router copy, 15 us later); return frames of src."""
    n = 0
    with PcapWriter(str(dst), nanosecond=True) as w:
        for batch in read_all(str(src)):
            for i in range(len(batch)):
                frame, ts = batch.frame(i), int(batch.ts_ns[i])
                w.write(ts, frame)
                w.write(ts + 15_000, router_copy(frame))
                n += 1
    return n


def analyze(config: Path, pcap: Path, out: Path) -> dict[str, list[dict]]:
    """`celltap analyze` on one capture: {log name: records sorted}."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    p = subprocess.run(
        [sys.executable, "-m", "celltap.cli", "analyze", "--config", str(config), "-r", str(pcap),
         "-o", str(out)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    logs = {}
    for f in out.glob("*.log"):
        recs = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        logs[f.stem] = sorted(recs, key=lambda r: json.dumps(r, sort_keys=True))
    return logs


@pytest.fixture(scope="module")
def real_capture(tmp_path_factory) -> Path:
    require_root()
    for tool in ("tcpdump", "curl", "dig"):
        require_tool(tool)
    tmp = tmp_path_factory.mktemp("dedup")
    pcap = tmp / "real.pcap"
    (tmp / "www").mkdir()
    (tmp / "www" / "page.html").write_text("<html>" + "celltap " * 3000 + "</html>\n")
    with LoopCapture("dedup", pcap) as cap:
        for addr, port in (("127.0.0.1", 8080), ("::1", 8081)):
            www = str(tmp / "www")
            cap.start(sys.executable, "-u", "-m", "http.server", str(port), "--bind", addr, "-d", www,
                      ready=b"Serving")  # fmt: skip
        cap.udp_echo("127.0.0.1", 53)  # the default rules take DNS by port
        for url in (
            "http://127.0.0.1:8080/page.html",
            "http://[::1]:8081/page.html",
            "http://127.0.0.1:8080/x",
        ):
            assert cap.run("curl", "-sS", "-g", "-o", "/dev/null", url).returncode == 0
        cap.run("dig", "@127.0.0.1", "+tries=1", "+time=1", "celltap.test")
        cap.stop()
    return pcap


def _config(tmp: Path, dedup: bool) -> Path:
    text = DEFAULTS.read_text()
    if dedup:
        text = text.replace("global:\n", "global:\n  dedup: yes\n  dedup_window: 0.001\n", 1)
    cfg = tmp / ("dedup.yaml" if dedup else "plain.yaml")
    cfg.write_text(text)
    return cfg


def test_crafted_doubled_capture_gives_the_real_captures_results(real_capture, tmp_path):
    doubled = tmp_path / "crafted-doubled.pcap"
    n = crafted_doubled(real_capture, doubled)
    on, off = _config(tmp_path, True), _config(tmp_path, False)
    want = analyze(off, real_capture, tmp_path / "real")
    assert want.get("http") and want.get("dns") and want.get("conn"), sorted(want)
    got = analyze(on, doubled, tmp_path / "dedup")
    weird = got.pop("weird", [])
    assert sum(r["count"] for r in weird if r["name"] == "duplicate") == n
    assert all(r["name"] == "duplicate" for r in weird)
    want.pop("weird", None)
    assert got == want
    # off (the default): the copies are analyzed as traffic, so the results differ
    plain = analyze(off, doubled, tmp_path / "plain")
    plain.pop("weird", None)
    assert plain != want
    # dedup on the real capture finds nothing and changes nothing
    same = analyze(on, real_capture, tmp_path / "real-dedup")
    assert not any(r["name"] == "duplicate" for r in same.pop("weird", []))
    assert same == want


def _events(cfg_path: Path, pcap: Path, batch_frames: int | None = None) -> tuple[dict, dict]:
    a = Abstractor(load_config(str(cfg_path)))
    for batch in read_all(str(pcap)):
        if batch_frames is None:
            a.process_frames(batch)
            continue
        for lo in range(0, len(batch), batch_frames):
            a.process_frames(batch.select(np.arange(lo, min(len(batch), lo + batch_frames))))
    a.finish()
    out: dict[tuple, list] = {}
    for name, sink in a.sinks.items():
        for e in parse_text(b"".join(sink.parts)):
            out.setdefault((name, e.flow), []).append((e.event, e.sender, e.match, e.reason, e.time, e.data))
    return out, dict(a.drops)


def test_crafted_copies_across_batch_edges_are_found(real_capture, tmp_path):
    """Batches of 1..7 frames: a copy and its original often fall in different batches.  Events are
    compared flow by flow (the order between flows depends on where batches end)."""
    doubled = tmp_path / "crafted-doubled.pcap"
    n = crafted_doubled(real_capture, doubled)
    on, off = _config(tmp_path, True), _config(tmp_path, False)
    want, _ = _events(off, real_capture)
    for size in (1, 2, 7):
        got, drops = _events(on, doubled, size)
        assert drops.get("duplicate") == n, size
        assert got == want, size


def _frame(payload: bytes, ttl: int = 64, vlan: int | None = None) -> bytes:
    """A crafted Ethernet/IPv4/UDP frame (checksums filled in)."""
    udp = struct.pack("!HHHH", 1000, 53, 8 + len(payload), 0) + payload
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 7, 0, ttl, 17, 0,
                               bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])))  # fmt: skip
    ip[10:12] = struct.pack("!H", _ipv4_checksum(bytes(ip)))
    tag = b"" if vlan is None else struct.pack("!HH", 0x8100, vlan)
    return b"\x02" * 6 + b"\x04" * 6 + tag + b"\x08\x00" + bytes(ip) + udp


def test_what_counts_as_a_duplicate_crafted():
    """Crafted frames: TTL, checksum, MACs and VLAN tags are ignored; payload bytes and the window are not."""
    base = _frame(b"query-1")
    frames = [
        base,  # 0 original
        _frame(b"query-1", ttl=63),  # 1 router copy: duplicate
        _frame(b"query-1", vlan=12),  # 2 other mirror session's tag: duplicate
        _frame(b"query-2"),  # 3 one payload byte differs: kept
        base,  # 4 same bytes, 2 ms after the previous copy: outside a 1 ms window, kept
        b"\xff" * 6 + b"\x04" * 6 + b"\x88\xb5" + b"raw",  # 5 not IP: compared whole, kept
        b"\xff" * 6 + b"\x04" * 6 + b"\x88\xb5" + b"raw",  # 6 its exact copy: duplicate
    ]
    ts = [0, 10_000, 20_000, 30_000, 2_100_000, 2_200_000, 2_200_500]
    d = Deduplicator(window_ns=1_000_000)
    dup = d.duplicates(decode_batch(FrameBatch.from_frames(frames, ts)))
    assert dup.tolist() == [False, True, True, False, False, False, True]
    # the window carries over to the next batch, and ends
    later = decode_batch(FrameBatch.from_frames([base, base], [2_600_000, 9_000_000]))
    assert d.duplicates(later).tolist() == [True, False]
