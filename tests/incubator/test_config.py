"""Config: strict YAML schema (a bad key is one clear error line naming it); pcap-input live run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from celltap.incubator.capture.sources import netmap_available
from celltap.incubator.config import ConfigError, parse_config

CELLTAP = [sys.executable, "-m", "celltap.cli"]
BASE = {"capture": "pcap:/dev/null", "cells": [{"id": "a", "output": "pcap:/tmp/x.pcap"}]}


def run_cli(tmp_path, cfg: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run(
        [*CELLTAP, "incubator", "--config", str(path)], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ({"fragments": {"max_byts": 1}}, "fragments.max_byts"),
        ({"bogus": 1}, "bogus"),
        ({"cells": [{"id": "a", "output": "pcap:x", "wieght": 2}]}, "cells[0].wieght"),
        ({"hash_seed": "zero"}, "hash_seed"),
        ({"mode": "bridge"}, "mode"),
        ({"non_ip": "drop"}, "non_ip"),
        ({"mode": "inline"}, "peer"),
        ({"registry": {"cluster": "x"}}, "registry.url"),
        ({"partition": "ring"}, "partition"),
        ({"dicap": {"buckets_log2": 15}}, "dicap.buckets_log2"),
        ({"dicap": {"buckets_log2": 0}}, "dicap.buckets_log2"),
        ({"dicap": {"ports": "yes"}}, "dicap.ports"),
        ({"dicap": {"port": True}}, "dicap.port"),
    ],
)
def test_bad_key_is_one_clear_error(tmp_path, patch, key):
    p = run_cli(tmp_path, {**BASE, **patch})
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert key in lines[0] and "Traceback" not in p.stderr


def test_defaults_are_filled():
    cfg = parse_config(BASE)
    assert cfg["mode"] == "mirror"
    assert cfg["partition"] == "xxh64"
    assert cfg["dicap"] == {"cell": None, "output": None, "buckets_log2": 14, "ports": True}
    assert parse_config({**BASE, "partition": "dicap"})["partition"] == "dicap"
    # dicap mode computes the incubator's own partition (eBPF filter) unless told otherwise
    assert parse_config({**BASE, "mode": "dicap", "dicap": {"cell": "a"}})["partition"] == "xxh64"
    assert cfg["fragments"]["timeout_s"] == 30.0
    assert cfg["registry"] is None
    with pytest.raises(ConfigError, match="capture"):
        parse_config({"cells": []})


def test_live_run_from_a_pcap_source_writes_cells_and_conserves(tmp_path):
    """`capture: pcap:FILE` replays a capture through the live path (pinning, metrics) and exits."""
    src = str(tmp_path / "in.pcap")
    subprocess.run([*CELLTAP, "loadgen", "pcap", "http", src, "--count", "30"], check=True)
    cells = [{"id": f"c{i}", "output": f"pcap:{tmp_path}/c{i}.pcap"} for i in range(2)]
    p = run_cli(tmp_path, {"capture": f"pcap:{src}", "cells": cells})
    assert p.returncode == 0, p.stderr
    assert "conservation ok" in p.stderr
    live = sorted(os.path.getsize(f"{tmp_path}/c{i}.pcap") for i in range(2))
    assert sum(live) == os.path.getsize(src) + 24  # two pcap headers, one input header


def test_netmap_capture_reports_why_it_cannot_run(tmp_path):
    reason = netmap_available()
    if reason is None:
        pytest.skip("/dev/netmap exists here: the netmap path is exercised by the live tests instead")
    cfg = {**BASE, "capture": "netmap:eth9"}
    p = run_cli(tmp_path, cfg)
    assert p.returncode == 1
    assert "/dev/netmap" in p.stdout + p.stderr


def test_netmap_request_layout_matches_netmap_h():
    """struct nmreq is 60 bytes; NIOCREGIF = _IOWR('i', 146, struct nmreq) = 0xc03c6992 in netmap.h."""
    import struct

    from celltap.incubator.capture.netmap import (
        NIOCREGIF,
        NIOCRXSYNC,
        NMREQ_SIZE,
        NR_REG_ALL_NIC,
        regif_request,
    )

    assert NMREQ_SIZE == 60
    req = regif_request("eth0")
    assert len(req) == 60 and req[:5] == b"eth0\0"
    assert struct.unpack_from("<I", req, 16)[0] == 14  # nr_version
    assert struct.unpack_from("<I", req, 52)[0] == NR_REG_ALL_NIC  # nr_flags
    assert NIOCREGIF == 0xC03C6992
    assert NIOCRXSYNC == 0x6995


def test_netmap_capture_receives_where_the_device_exists(tmp_path):
    reason = netmap_available()
    if reason is not None:
        pytest.skip(f"netmap capture not testable here: {reason}")
    import socket
    import time

    from celltap.incubator.capture.netmap import NetmapCapture

    from tests.conftest import require_root
    from tests.incubator.live_helpers import NetNS, quiet

    require_root()
    with NetNS("nm") as ns:
        quiet(ns)
        ns.veth("n0", "n1")
        cap = ns.call(lambda: NetmapCapture("n1"))
        tx = ns.call(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0))
        tx.bind(("n0", 0))
        sent = [b"\x02" * 6 + b"\x04" * 6 + b"\x88\xb5" + bytes([i]) * 50 for i in range(50)]
        for f in sent:
            tx.send(f)
        got: list[bytes] = []
        deadline = time.time() + 5
        while len(got) < 50 and time.time() < deadline:
            if cap.wait(100):
                b = cap.read_batch()
                if b is not None:
                    got += [b.frame(i) for i in range(len(b))]
                    cap.release()
        cap.close()
    assert got == sent


def test_decapsulate_reaches_the_separator():
    from celltap.incubator.live import build_engine
    from celltap.incubator.metrics import IncubatorMetrics
    from prometheus_client import CollectorRegistry

    on = build_engine(parse_config(BASE), IncubatorMetrics(CollectorRegistry()))
    off = build_engine(parse_config({**BASE, "decapsulate": False}), IncubatorMetrics(CollectorRegistry()))
    assert on.sep.decode_options.decapsulate and not off.sep.decode_options.decapsulate
    with pytest.raises(ConfigError, match="decapsulate"):
        parse_config({**BASE, "decapsulate": "maybe"})
