"""The cluster YAML of `celltap up`: defaults load, a bad key is one error line naming it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from celltap.defaults import default_file
from celltap.launcher.spec import SpecError, load_spec, spec_from_dict
from tests.system.cluster_proc import CELLTAP, ROOT


def test_embedded_demo_cluster_loads() -> None:
    s = load_spec(default_file("demo-cluster.yaml"))
    assert s.cells == 3 and s.nodes == 2 and s.collectors == 1 and s.capture == "feed"
    assert {a.socket for a in s.analyzers} == {
        "tcp/http",
        "tcp/tls",
        "udp/dns",
        "tcp/dns",
        "tcp/smtp",
        "udp/sip",
    }
    assert s.sftap.is_file()


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ({"cels": {}}, "cels"),
        ({"cells": {"count": 0}}, "cells.count"),
        ({"cells": {"analyzers": [{"analyzer": "ftp", "socket": "tcp/ftp"}]}}, "cells.analyzers[0].analyzer"),
        ({"cells": {"analyzers": [{"analyzer": "http", "socket": "http"}]}}, "cells.analyzers[0].socket"),
        ({"registry": "zk://x"}, "registry"),
        ({"capture": "eth0"}, "capture"),
        ({"capture": "pcap:/nonexistent.pcap"}, "capture"),
        ({"replay": {"loop": 2}}, "replay.loop"),
        ({"nodes": {"count": 0}}, "nodes.count"),
    ],
)
def test_bad_key_is_named(doc: dict, key: str) -> None:
    with pytest.raises(SpecError) as exc:
        spec_from_dict(doc)
    assert str(exc.value).startswith(key), exc.value


def test_up_rejects_a_bad_config_in_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("cells: {count: 2, sftap: nope.yaml}\ncapture: afpacket:lo\n")
    p = subprocess.run(
        [*CELLTAP, "up", "--config", str(cfg)], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == ["celltap up: config error: cells.sftap: nope.yaml not found"]
