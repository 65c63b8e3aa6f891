"""Capture time end to end, live: a burst with known gaps reaches the cells' readers with those gaps.

A sender in its own namespace sends UDP datagrams with precise gaps (busy-waited: 0.1 to 15 ms)
and then 300 back to back, onto a veth.  On the other end of the veth, in a second namespace:
tcpdump (nanosecond timestamps: the oracle; expected times and gaps come from its capture, read by
tshark), a cell capturing the veth directly (`iface:`), an incubator writing a `pcap:` output (its
records must hold tcpdump's times to the nanosecond), and three incubators capturing it, each
with one cell: over Geneve (the capture time in a Geneve option), over a veth with Arista
timestamp headers (`iface:...?ts=arista`), and over plain VXLAN (no room for a time: the cell
stamps its receive time).  The incubators send in batches (a TPACKET_V3 block is handed over every
10 ms), so without carried times whole runs of datagrams would share one receive time.

Checked per cell: every DATA event's `time=` (SF-TAP prints microseconds) equals tcpdump's time of
its datagram within TOL, hence the gaps too; the 300-frame burst keeps 300 distinct times where
tcpdump has them; the IPFIX record's flowStart/EndMilliseconds (decoded by tshark) equal the first
and last datagram's time.  The VXLAN cell's times are receive times: never before the capture.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.cell.runner import RawReader, wait_for
from tests.cell.test_ipfix_export import ipfix_capture
from tests.cell.wire import parse_text
from tests.conftest import require_root, require_tool
from tests.incubator.live_helpers import IncubatorProcess, NetNS, Tcpdump, no_offloads, quiet

pytestmark = pytest.mark.netns

GAPS_S = [0.0001, 0.0005, 0.002, 0.007, 0.015, 0.0003, 0.001, 0.004, 0.0002, 0.012] * 6
BURST = 300
TOL_NS = 1_000  # the cell and tcpdump read the same skb's kernel time; SF-TAP's text keeps microseconds

SENDER = textwrap.dedent(
    """
    import socket, sys, time
    gaps = [float(g) for g in sys.argv[1].split(",")]
    burst = int(sys.argv[2])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("10.77.0.1", 4000))
    dst = ("10.77.0.2", 5000)
    for i, g in enumerate(gaps):
        t = time.perf_counter() + g  # each gap at least g, however late the previous send was
        while time.perf_counter() < t:
            pass
        s.sendto(b"seq=%05d " % i + b"x" * 40, dst)
    for i in range(burst):
        s.sendto(b"burst=%05d " % i + b"y" * 40, dst)
    """
)

CELL_CONFIG = """global:
  home: {home}
  timeout: 60
  udp_timeout: 60
udp_default:
  proto: UDP
  if: default
"""


def _epoch_ns(text: str) -> int:
    whole, _, frac = text.partition(".")
    return int(whole) * 1_000_000_000 + int((frac + "000000000")[:9])


def _tcpdump_times(tshark: str, pcap: str) -> list[int]:
    out = subprocess.run(
        [tshark, "-r", pcap, "-Y", "udp.dstport == 5000", "-T", "fields", "-e", "frame.time_epoch"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [_epoch_ns(line) for line in out.split()]


class Cell:
    """`celltap cell` in a namespace, a reader on udp/default, IPFIX to a UDP socket in the namespace."""

    def __init__(self, ns: NetNS, tmp: Path, name: str, spec: str) -> None:
        self.home = tmp / f"home-{name}"
        cfg = tmp / f"{name}.yaml"
        cfg.write_text(CELL_CONFIG.format(home=self.home))
        self.ipfix = ns.call(lambda: _udp_socket())
        port = self.ipfix.getsockname()[1]
        self.messages: list[bytes] = []
        self._rx = threading.Thread(target=self._receive, daemon=True)
        self._rx.start()
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
        self.log = open(tmp / f"{name}.log", "wb")
        self.proc = ns.exec(
            sys.executable, "-m", "celltap.cli", "cell", "--config", str(cfg), "--input", spec,
            "--ipfix", f"udp://127.0.0.1:{port}", stderr=self.log, env=env,
        )  # fmt: skip
        self.reader = RawReader(self.home / "udp/default")
        self.reader.start()

    def _receive(self) -> None:
        self.ipfix.settimeout(0.5)
        while True:
            try:
                self.messages.append(self.ipfix.recv(65535))
            except TimeoutError:
                continue
            except OSError:
                return

    def data_times(self) -> list[int]:
        """`time=` of every DATA event, in microseconds (as printed)."""
        return [round(e.time * 1e6) for e in parse_text(bytes(self.reader.data)) if e.event == "DATA"]

    def log_text(self) -> str:
        """The cell's stderr (once stopped)."""
        return Path(self.log.name).read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()
        time.sleep(0.5)  # the records the cell sent at shutdown
        self.ipfix.close()


def _udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


def _ipfix_times(tshark: str, messages: list[bytes], path: Path) -> list[tuple[int, int]]:
    """(flowStartMilliseconds, flowEndMilliseconds) of each data record, as tshark decodes them."""
    ipfix_capture(messages, path)
    out = subprocess.run(
        [tshark, "-r", str(path), "-d", "udp.port==4739,cflow", "-T", "fields", "-E", "occurrence=a",
         "-E", "aggregator=;", "-e", "cflow.abstimestart", "-e", "cflow.abstimeend"],
        capture_output=True, text=True, check=True, env=dict(os.environ, TZ="UTC"),
    ).stdout  # fmt: skip
    from datetime import UTC, datetime

    def ms(text: str) -> int:
        # "Dec  2, 2026 03:12:45.123000000 UTC"
        head, _, frac = text.strip().rpartition(".")
        frac = frac.split()[0]
        dt = datetime.strptime(" ".join(head.split()), "%b %d, %Y %H:%M:%S").replace(tzinfo=UTC)
        return int(dt.timestamp()) * 1000 + int(frac[:3])

    pairs = []
    for line in out.splitlines():
        starts, _, ends = line.partition("\t")
        if starts.strip():
            pairs += [(ms(a), ms(b)) for a, b in zip(starts.split(";"), ends.split(";"), strict=True)]
    return pairs


@pytest.fixture
def bed():
    require_root()
    for tool in ("tcpdump", "ethtool"):
        require_tool(tool)
    with NetNS("tss") as snd, NetNS("tsi") as ns:
        quiet(snd)
        quiet(ns)
        snd.veth("ts-out", "ts-in", other=ns)
        ns.veth("ts-a", "ts-b")
        no_offloads(snd, "ts-out")
        for ifname in ("ts-in", "ts-a", "ts-b"):
            no_offloads(ns, ifname)
        snd.ip("addr", "add", "10.77.0.1/24", "dev", "ts-out")
        # nobody owns 10.77.0.2: the datagrams cross the veth and the receiving side only captures them
        snd.ip("neigh", "add", "10.77.0.2", "lladdr", "02:00:00:00:77:02", "dev", "ts-out")
        yield snd, ns


def test_live_frames_keep_their_capture_times_through_every_path(bed, tmp_path):
    tshark = require_tool("tshark")
    snd, ns = bed
    paths = {
        "direct": ("iface:ts-in", None),
        "geneve": ("geneve://127.0.0.1:16081", "geneve://127.0.0.1:16081"),
        "arista": ("iface:ts-b", "iface:ts-a?ts=arista"),
        "vxlan": ("vxlan://127.0.0.1:14789", "vxlan://127.0.0.1:14789"),
    }
    cells = {name: Cell(ns, tmp_path, name, spec) for name, (spec, _out) in paths.items()}
    split = tmp_path / "incubator-out.pcap"  # an incubator's pcap: output, for its record times
    outputs = [(name, out) for name, (_spec, out) in paths.items() if out is not None]
    outputs.append(("pcap", f"pcap:{split}"))
    incs = []
    try:
        for i, (name, out) in enumerate(outputs):
            d = tmp_path / f"inc-{name}"
            d.mkdir()
            cfg = {
                "mode": "mirror",
                "capture": "afpacket:ts-in",
                "cells": [{"id": name, "output": out}],
                "metrics_port": 9480 + i,
            }
            incs.append(IncubatorProcess(ns, cfg, str(d)))
        for inc in incs:
            inc.wait_ready(1)  # each has its one cell (the pcap one: a file)
        for c in cells.values():
            assert c.reader.connected.wait(20), f"cell never opened udp/default: {c.home}"
        dump = Tcpdump(ns, "ts-in", str(tmp_path / "oracle.pcap"), extra=("--time-stamp-precision=nano",))
        total = len(GAPS_S) + BURST
        p = snd.run(sys.executable, "-c", SENDER, ",".join(map(str, GAPS_S)), str(BURST), timeout=60)
        assert p.returncode == 0, p.stderr
        short = []
        for name, c in cells.items():
            try:
                wait_for(lambda c=c: len(c.data_times()) >= total, timeout=30, what=f"{name}: all datagrams")
            except AssertionError:
                short.append(name)
    finally:
        for inc in incs:
            inc.stop()
        for c in cells.values():
            c.stop()
    # a cell short of datagrams: how many it got, and its log (its input drops are named at exit)
    assert not short, "; ".join(
        f"{n}: {len(cells[n].data_times())} of {total} datagrams, log: {cells[n].log_text()!r}" for n in short
    )
    dump.stop()
    truth = _tcpdump_times(tshark, dump.path)
    assert len(truth) == total, "tcpdump missed datagrams"
    truth_us = [t // 1000 for t in truth]
    gaps = [b - a for a, b in itertools.pairwise(truth)]
    # the sender's gaps really are there (tcpdump's view), so a batched receive time could not pass
    assert sum(g > 5_000_000 for g in gaps[: len(GAPS_S)]) >= 12
    for name in ("direct", "geneve", "arista"):
        got = cells[name].data_times()
        assert len(got) == total, name
        err = max(abs(g * 1000 - t) for g, t in zip(got, truth, strict=True))
        assert err <= TOL_NS, f"{name}: a frame's time is {err} ns away from tcpdump's"
        burst = got[-BURST:]
        assert len(set(burst)) == len(set(truth_us[-BURST:])), f"{name}: the burst lost distinct times"
        records = _ipfix_times(tshark, cells[name].messages, tmp_path / f"{name}-ipfix.pcap")
        assert len(records) == 1, (name, records)
        start, end = records[0]
        assert abs(start - truth[0] // 1_000_000) <= 1, (name, start, truth[0])
        assert abs(end - truth[-1] // 1_000_000) <= 1, (name, end, truth[-1])
    # the incubator's pcap output: nanosecond records with the capture times
    assert _tcpdump_times(tshark, str(split)) == truth
    # plain VXLAN: receive times at the cell, never earlier than the capture
    got = cells["vxlan"].data_times()
    assert len(got) == total
    assert all(g * 1000 >= t - 1000 for g, t in zip(got, truth, strict=True))
    late = sorted(g * 1000 - t for g, t in zip(got, truth, strict=True))
    print(f"vxlan receive time after capture: median {late[len(late) // 2]} ns, max {late[-1]} ns")
    assert max(g * 1000 - t for g, t in zip(got, truth, strict=True)) < 2_000_000_000
