"""docker/Dockerfile built for real (buildah) and run (podman): `celltap --help` and a short
`celltap demo` read-only, as the image's non-root user, with every capability dropped; and the
capabilities the incubator and a cell's AF_PACKET input need, found by running them in the image
on a veth whose other end the test feeds.

Marked `image` (a few minutes: the build installs the package from PyPI): not in the default
run; scripts/test.sh (and so CI) runs it after the suite: `pytest -m image tests/deploy/test_image.py`.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import require_root
from tests.deploy.chart import REPO
from tests.deploy.image import build_image, podman_args, podman_run, remove_image, require_image_tools

pytestmark = [pytest.mark.image, pytest.mark.timeout(2400)]

LOCKED_DOWN = ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """The celltap image, built for this session (removed afterwards; the base stays cached)."""
    require_root()
    require_image_tools()
    if os.environ.get("CELLTAP_TEST_IMAGE"):  # an image already in the test store (to iterate on tests)
        yield os.environ["CELLTAP_TEST_IMAGE"]
        return
    tag = f"localhost/celltap:test-{os.getpid()}"
    build_image(tag)
    yield tag
    remove_image(tag)


def subcommands(help_text: str) -> set[str]:
    """Subcommand names listed under COMMAND in an argparse help text."""
    return set(re.findall(r"^    (\w+) ", help_text, flags=re.MULTILINE))


def test_help_runs_read_only_non_root_without_capabilities(image: str) -> None:
    proc = podman_run(image, ["--help"], [*LOCKED_DOWN, "--network", "none"])
    assert proc.returncode == 0, proc.stderr
    host = subprocess.run(
        [sys.executable, "-m", "celltap.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert subcommands(proc.stdout) == subcommands(host.stdout)
    assert {"incubator", "cell", "analyzer", "collector", "node", "demo"} <= subcommands(proc.stdout)
    # Who runs it, with what: the image's user, no capability at all, a root file system that refuses writes.
    probe = (
        "import os\n"
        "lines = open('/proc/self/status').read().splitlines()\n"
        "caps = dict(l.split(':\\t') for l in lines if l.startswith('Cap'))\n"
        "try:\n    open('/opt/celltap/probe', 'w')\nexcept OSError as e:\n    ro = e.strerror\n"
        "print(os.getuid(), os.getgid(), caps['CapEff'].strip(), caps['CapPrm'].strip(), ro)\n"
    )
    proc = podman_run(image, ["-c", probe], [*LOCKED_DOWN, "--network", "none", "--entrypoint", "python"])
    assert proc.returncode == 0, proc.stderr
    uid, gid, eff, prm, ro = proc.stdout.split(None, 4)
    assert (uid, gid) == ("10001", "10001")
    assert int(eff, 16) == 0 and int(prm, 16) == 0
    assert ro.strip() == "Read-only file system"


def test_demo_runs_in_the_locked_down_image(image: str) -> None:
    args = ["demo", "--flows", "60", "--cells", "2", "--nodes", "1", "--seed", "7", "--json"]
    proc = podman_run(image, args, [*LOCKED_DOWN, "--network", "none"], timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    inside = json.loads(proc.stdout[: proc.stdout.rindex("}") + 1])
    # The same demo on this host's checkout: the image must run the same pipeline to the same result.
    argv = [sys.executable, "-m", "celltap.cli", *args]
    host = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert host.returncode == 0, f"the demo on the host exited {host.returncode}: {host.stderr[-3000:]}"
    here = json.loads(host.stdout[: host.stdout.rindex("}") + 1])
    assert inside["frames_fed"] > 0 and inside["ipfix_records"] > 0
    for key in ("frames_fed", "ipfix_records", "smtp_messages", "sip_calls"):
        assert inside[key] == here[key], key
    flows = {a["key"]: a["flows"] for a in inside["app_mix"]}
    assert flows == {a["key"]: a["flows"] for a in here["app_mix"]}


# --- capabilities, on a veth -------------------------------------------------------------------


def ip(*args: str) -> None:
    """Run `ip` (fail the test on error)."""
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def veth() -> Iterator[tuple[str, str, str]]:
    """(netns, host end, container end): a veth whose container end sits in a fresh netns, IPv6 off."""
    require_root()
    tag = f"{os.getpid() % 10000}{random.randrange(100):02d}"
    ns, host_end, inner = f"ctdep{tag}", f"cdh{tag}", f"cdi{tag}"
    ip("netns", "add", ns)
    try:
        ip("link", "add", host_end, "type", "veth", "peer", "name", inner)
        ip("link", "set", inner, "netns", ns)
        sysctl = ["sysctl", "-q", "-w"]
        subprocess.run([*sysctl, f"net.ipv6.conf.{host_end}.disable_ipv6=1"], check=True, timeout=30)
        subprocess.run(
            ["ip", "netns", "exec", ns, *sysctl, f"net.ipv6.conf.{inner}.disable_ipv6=1"],
            check=True,
            timeout=30,
        )
        ip("link", "set", host_end, "up")
        ip("-n", ns, "link", "set", inner, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        yield ns, host_end, inner
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def udp_frames(n: int) -> list[bytes]:
    """n crafted Ethernet/IPv4/UDP frames, one flow per frame (documentation addresses)."""
    frames = []
    for i in range(n):
        payload = b"celltap-cap-test"
        udp = struct.pack("!HHHH", 40000 + i, 5353, 8 + len(payload), 0) + payload
        iph = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(udp),
            i,
            0,
            64,
            17,
            0,
            bytes([192, 0, 2, 1]),
            bytes([198, 51, 100, 1]),
        )
        csum = sum(struct.unpack("!10H", iph))
        csum = (csum & 0xFFFF) + (csum >> 16)
        iph = iph[:10] + struct.pack("!H", ~((csum & 0xFFFF) + (csum >> 16)) & 0xFFFF) + iph[12:]
        frames.append(b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + iph + udp)
    return frames


def send_frames(dev: str, frames: list[bytes]) -> None:
    """Send raw frames out of a host interface."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((dev, 0))
        for f in frames:
            s.send(f)


def scrape_in_netns(ns: str, port: int, metric: str) -> float | None:
    """Sum of one metric's samples on 127.0.0.1:port inside the netns (None while unreachable)."""
    code = (
        "import sys, urllib.request\n"
        f"print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=2).read().decode())\n"
    )
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )
    if proc.returncode != 0:
        return None
    return sum(
        s.value for f in text_string_to_metric_families(proc.stdout) for s in f.samples if s.name == metric
    )


def start_container(image: str, ns: str, options: list[str], args: list[str]) -> str:
    """Start a detached container in the netns; returns its name."""
    name = f"celltap-captest-{os.getpid()}-{random.randrange(10**6)}"
    cmd = [
        "podman",
        *podman_args(),
        "run",
        "-d",
        "--name",
        name,
        "--ulimit",
        "nofile=4096:4096",
        "--ulimit",
        "nproc=4096:4096",
        "--network",
        f"ns:/run/netns/{ns}",
        *options,
        image,
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return name


def finish(name: str) -> tuple[int, str]:
    """Stop and remove a container; (exit code, its output)."""
    subprocess.run(["podman", *podman_args(), "stop", "-t", "5", name], capture_output=True, timeout=120)
    logs = subprocess.run(
        ["podman", *podman_args(), "logs", name], capture_output=True, text=True, timeout=60
    )
    code = subprocess.run(
        ["podman", *podman_args(), "inspect", "-f", "{{.State.ExitCode}}", name],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    subprocess.run(["podman", *podman_args(), "rm", "-f", name], capture_output=True, timeout=120)
    return int(code or -1), logs.stdout + logs.stderr


def wait_for_metric(
    ns: str, port: int, metric: str, want: float, name: str, seconds: float = 90
) -> float | None:
    """Poll a metric in the netns until it reaches `want` (or the container exits / time runs out)."""
    deadline = time.monotonic() + seconds
    value = None
    while time.monotonic() < deadline:
        value = scrape_in_netns(ns, port, metric)
        if value is not None and value >= want:
            return value
        state = subprocess.run(
            ["podman", *podman_args(), "inspect", "-f", "{{.State.Running}}", name],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
        if state == "false":
            return value
        time.sleep(0.5)
    return value


def run_capture(
    image: str, veth: tuple[str, str, str], tmp_path: Path, component: str, caps: list[str]
) -> tuple[float | None, int, str]:
    """Run the incubator or a cell capturing the veth's container end as root with only `caps`; feed it
    frames; (frames it counted, exit code, output)."""
    ns, host_end, inner = veth
    options = [
        "--read-only",
        "--user",
        "0:0",
        "--cap-drop",
        "ALL",
        *[a for c in caps for a in ("--cap-add", c)],
    ]
    if component == "incubator":
        cfg = tmp_path / "incubator.yaml"
        cfg.write_text(
            f"mode: mirror\ncapture: afpacket:{inner}\nmetrics_port: 9470\n"
            "cells:\n  - id: '0'\n    output: vxlan://127.0.0.1:4789\n"
        )
        options += ["-v", f"{cfg}:/etc/celltap/incubator.yaml:ro"]
        args, port, metric = (
            ["incubator", "--config", "/etc/celltap/incubator.yaml"],
            9470,
            "celltap_incubator_received_frames_total",
        )
    else:
        options += ["-v", f"{REPO / 'docker/config/sftap.yaml'}:/etc/celltap/sftap.yaml:ro"]
        args = [
            "cell",
            "--config",
            "/etc/celltap/sftap.yaml",
            "--input",
            f"iface:{inner}",
            "--cell-id",
            "0",
            "--home",
            "/tmp/celltap",
            "--metrics-port",
            "9471",
        ]
        port, metric = 9471, "celltap_cell_packets_total"
    name = start_container(image, ns, options, args)
    try:
        up = wait_for_metric(ns, port, metric, 0, name)
        if up is not None:
            send_frames(host_end, udp_frames(50))
            up = wait_for_metric(ns, port, metric, 50, name, seconds=30)
    finally:
        code, out = finish(name)
    return up, code, out


@pytest.mark.parametrize("component", ["incubator", "cell"])
def test_afpacket_capture_needs_net_raw_only(
    image: str, veth: tuple[str, str, str], tmp_path: Path, component: str
) -> None:
    # With NET_RAW alone (root, every other capability dropped) it captures every frame fed to the veth:
    # neither NET_ADMIN nor BPF is needed (the incubator's fanout and classic BPF filter need no
    # capability; a cell's promiscuous membership neither).
    frames, _code, out = run_capture(image, veth, tmp_path, component, ["NET_RAW"])
    assert frames == 50, out[-3000:]
    # Without it, the process stops at once with one line saying why, not a traceback.
    frames, code, out = run_capture(image, veth, tmp_path, component, [])
    assert frames is None and code != 0, out[-3000:]
    lines = out.strip().splitlines()
    assert len(lines) == 1 and re.search(r"not permitted|permission denied", lines[0]), out[-3000:]
