"""Every component started with its defaults listens on loopback only (docs/security.md).

Each component runs alone in a private network namespace, so `ss -l` there lists exactly its own
sockets; the test first waits until the ports it expects are bound (so it cannot pass on a process
that bound nothing), then requires every listener's address to be 127.0.0.1 or ::1. A second set of
tests shows the `--metrics-addr` / config keys really move each listener (to 0.0.0.0 here).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.security.netns import REPO, WILDCARDS, celltap_in, private_netns, stop, wait_listening

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

SFTAP = str(REPO / "celltap" / "defaults" / "sftap.yaml")
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")  # gRPC binds v4 through a v6 socket


def _pcap(tmp_path: Path) -> str:
    out = tmp_path / "dns.pcap"
    subprocess.run(
        [sys.executable, "-m", "celltap.cli", "loadgen", "pcap", "dns", str(out)],
        check=True,
        capture_output=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    return str(out)


def _commands(tmp_path: Path) -> dict[str, tuple[list[str], set[tuple[str, int]]]]:
    """component -> (celltap arguments using only defaults for addresses, (proto, port) it must bind)."""
    (tmp_path / "collector.yaml").write_text("workers: 1\n")  # listen, metrics_port, metrics_addr: defaults
    (tmp_path / "node.yaml").write_text(f"id: n1\nregistry: file://{tmp_path / 'registry'}\n")
    (tmp_path / "incubator.yaml").write_text(
        "mode: mirror\ncapture: afpacket:lo\nmetrics_port: 9470\n"
        "cells:\n  - {id: '0', output: 'vxlan://127.0.0.1:4789'}\n"
    )
    return {
        "collector": (
            ["collector", "--config", str(tmp_path / "collector.yaml")], {("udp", 4739), ("tcp", 9464)}
        ),
        "cell": (
            ["cell", "--config", SFTAP, "--home", str(tmp_path / "home"), "--input", "vxlan://:4789",
             "--metrics-port", "9471"],
            {("udp", 4789), ("tcp", 9471)},
        ),
        "analyzer": (
            ["analyzer", "http", "--socket-prefix", str(tmp_path / "http"), "--balance", "2",
             "--metrics-port", "9480"],
            {("tcp", 9480), ("tcp", 9481), ("tcp", 9482)},
        ),
        "incubator": (["incubator", "--config", str(tmp_path / "incubator.yaml")], {("tcp", 9470)}),
        "node": (["node", "--config", str(tmp_path / "node.yaml")], {("tcp", 50051), ("tcp", 8090)}),
        "loadgen-replay": (
            ["loadgen", "replay", _pcap(tmp_path), "lo", "--pps", "2", "--metrics-port", "9464"],
            {("tcp", 9464)},
        ),
    }  # fmt: skip


COMPONENTS = ["collector", "cell", "analyzer", "incubator", "node", "loadgen-replay"]


@pytest.mark.parametrize("component", COMPONENTS)
def test_defaults_listen_on_loopback_only(component: str, tmp_path: Path) -> None:
    args, want = _commands(tmp_path)[component]
    with private_netns() as ns:
        proc = celltap_in(ns, *args)
        try:
            found = wait_listening(ns, want, proc)
        finally:
            stop(proc)
    wide = [(p, a, port) for p, a, port in found if a not in LOOPBACK]
    assert not wide, f"{component} listens beyond loopback with defaults: {wide}"


# How to open each listener to other hosts, and the listener it moves.
OVERRIDES = {
    "cell": (["--metrics-addr", "0.0.0.0"], ("tcp", 9471)),
    "analyzer": (["--metrics-addr", "0.0.0.0"], ("tcp", 9481)),  # a balanced child inherits it
    "incubator": (["--metrics-addr", "0.0.0.0"], ("tcp", 9470)),
    "loadgen-replay": (["--metrics-addr", "0.0.0.0"], ("tcp", 9464)),
    "collector": (["--metrics-addr", "0.0.0.0", "--listen", "udp://0.0.0.0:4739"], ("udp", 4739)),
}


@pytest.mark.parametrize("component", sorted(OVERRIDES))
def test_address_options_open_a_listener(component: str, tmp_path: Path) -> None:
    args, want = _commands(tmp_path)[component]
    extra, moved = OVERRIDES[component]
    with private_netns() as ns:
        proc = celltap_in(ns, *args, *extra)
        try:
            found = wait_listening(ns, want, proc)
        finally:
            stop(proc)
    addrs = {a for p, a, port in found if (p, port) == moved}
    assert addrs and addrs <= set(WILDCARDS), (moved, found)
