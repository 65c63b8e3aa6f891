"""Replay onto a real veth pair inside a fresh network namespace; tcpdump on the peer is the oracle:
every frame must arrive byte-identical and in order, and refused frames must be counted."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from celltap.pcap import PcapWriter, read_all
from tests.conftest import require_root, require_tool
from tests.loadgen.oracle import write_scenario

pytestmark = pytest.mark.netns


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@pytest.fixture
def netns() -> Iterator[str]:
    """A namespace with a veth pair va <-> vb (IPv6 off so the kernel sends nothing of its own)."""
    require_root()
    require_tool("ip")
    require_tool("tcpdump")
    name = f"lgtest-{os.getpid()}-{secrets.token_hex(3)}"
    _ip("netns", "add", name)
    try:
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                name,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
            check=True,
            timeout=20,
        )
        _ip("-n", name, "link", "add", "va", "type", "veth", "peer", "name", "vb")
        _ip("-n", name, "link", "set", "va", "mtu", "9000", "up")
        _ip("-n", name, "link", "set", "vb", "mtu", "9000", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)


def frames_of(path: Path) -> list[bytes]:
    return [b.frame(i) for b in read_all(str(path)) for i in range(len(b))]


def replay_argv(ns: str, pcap: Path, *args: str) -> list[str]:
    """`celltap loadgen replay PCAP va --json ARGS` run inside namespace `ns`."""
    celltap = [sys.executable, "-m", "celltap.cli"]
    return ["ip", "netns", "exec", ns, *celltap, "loadgen", "replay", str(pcap), "va", "--json", *args]


def capture_replay(ns: str, pcap: Path, out: Path, expect: int, *replay_args: str) -> tuple[dict, int]:
    """Start tcpdump on vb for `expect` frames, replay `pcap` on va, return (replay JSON, exit code)."""
    dump = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "tcpdump",
            "-i",
            "vb",
            "-B",
            "65536",
            "-s",
            "0",
            "-U",
            "--immediate-mode",
            "-w",
            str(out),
            "-c",
            str(expect),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert dump.stderr is not None
        line = dump.stderr.readline()
        assert "listening on" in line, line
        rep = subprocess.run(
            replay_argv(ns, pcap, *replay_args),
            capture_output=True,
            text=True,
            timeout=120,
        )
        dump.wait(timeout=30)
    finally:
        if dump.poll() is None:
            dump.terminate()
            dump.wait(timeout=10)
    return json.loads(rep.stdout), rep.returncode


def test_replay_delivers_every_frame_identically(netns: str, tmp_path: Path) -> None:
    pcap = write_scenario(tmp_path / "mixed.pcap", "mixed", 40)
    sent = frames_of(pcap)
    result, rc = capture_replay(
        netns, pcap, tmp_path / "cap.pcap", 2 * len(sent), "--pps", "20000", "--loop", "2"
    )
    assert rc == 0
    assert result["frames_sent"] == 2 * len(sent) and result["send_errors_total"] == 0
    assert result["bytes_sent"] == 2 * sum(len(f) for f in sent)
    got = frames_of(tmp_path / "cap.pcap")
    assert got == sent + sent
    # 20000 pps paced once per 20 frames: the achieved rate is near the asked one.
    assert 12000 < result["pps"] < 22000, result


def test_replay_counts_frames_the_interface_refuses(netns: str, tmp_path: Path) -> None:
    _ip("-n", netns, "link", "set", "va", "mtu", "1500")
    good = write_scenario(tmp_path / "dns.pcap", "dns", 5)
    frames = frames_of(good)
    jumbo = frames[0][:14] + bytes(3000)
    pcap = tmp_path / "with-jumbo.pcap"
    with PcapWriter(str(pcap)) as w:
        for k, f in enumerate([*frames[:3], jumbo, *frames[3:]]):
            w.write(1_700_000_000_000_000_000 + k, f)
    result, rc = capture_replay(netns, pcap, tmp_path / "cap.pcap", len(frames), "--topspeed")
    assert rc == 1, "a refused frame makes the replay fail"
    assert result["send_errors"] == {"emsgsize": 1}
    assert result["frames_sent"] == len(frames)
    assert frames_of(tmp_path / "cap.pcap") == frames


def test_replay_topspeed_rate(netns: str, tmp_path: Path) -> None:
    # At top speed a veth peer's receive backlog overflows (net.core.netdev_max_backlog, global),
    # so the oracle here is the kernel's transmit counter of va rather than a capture on vb.
    pcap = write_scenario(tmp_path / "small.pcap", "small", 20000)
    rep = subprocess.run(
        replay_argv(netns, pcap, "--topspeed"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rep.returncode == 0, rep.stderr
    result = json.loads(rep.stdout)
    assert result["frames_sent"] == 20000 and result["send_errors_total"] == 0
    link = json.loads(
        subprocess.run(
            ["ip", "-n", netns, "-s", "-j", "link", "show", "va"], capture_output=True, text=True, check=True
        ).stdout
    )[0]
    assert link["stats64"]["tx"]["packets"] == 20000
    assert link["stats64"]["tx"]["bytes"] == 20000 * 60
    print(f"topspeed replay of 60-byte frames: {result['pps']:.0f} pps")


def test_replay_serves_metrics_and_stops_cleanly_on_sigterm(netns: str, tmp_path: Path) -> None:
    _ip("-n", netns, "link", "set", "lo", "up")
    pcap = write_scenario(tmp_path / "dns.pcap", "dns", 200)
    proc = subprocess.Popen(
        replay_argv(netns, pcap, "--pps", "200", "--metrics-port", "9464"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        metrics = ""
        for _ in range(50):
            time.sleep(0.1)
            r = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    netns,
                    sys.executable,
                    "-c",
                    "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9464/metrics').read().decode())",
                ],
                capture_output=True,
                text=True,
                timeout=20,
            )
            if r.returncode == 0 and "celltap_loadgen_replay_frames_total" in r.stdout:
                metrics = r.stdout
                break
        assert "celltap_loadgen_replay_frames_total" in metrics
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert 0 < result["frames_sent"] < 400, "stopped early, counted what it sent"


def test_replay_retries_enobufs_until_every_frame_is_sent(netns: str, tmp_path: Path) -> None:
    # A 10 Mbit/s token bucket with a small queue on va: at top speed the queue overflows and the
    # kernel refuses frames with ENOBUFS (a real fault, no mock). Each refusal is one qdisc drop.
    require_tool("tc")
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "tc",
            "qdisc",
            "add",
            "dev",
            "va",
            "root",
            "tbf",
            "rate",
            "10mbit",
            "burst",
            "16kb",
            "limit",
            "20kb",
        ],
        check=True,
        capture_output=True,
        timeout=20,
    )
    pcap = write_scenario(tmp_path / "small.pcap", "small", 2000)
    rep = subprocess.run(
        replay_argv(netns, pcap, "--topspeed"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rep.returncode == 0, rep.stderr
    result = json.loads(rep.stdout)
    assert result["frames_sent"] == 2000 and result["send_errors_total"] == 0
    assert result["retries"].get("enobufs", 0) > 0
    qdisc = json.loads(
        subprocess.run(
            ["ip", "netns", "exec", netns, "tc", "-s", "-j", "qdisc", "show", "dev", "va"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )[0]
    assert qdisc["drops"] == result["retries"]["enobufs"]
    link = json.loads(
        subprocess.run(
            ["ip", "-n", netns, "-s", "-j", "link", "show", "va"], capture_output=True, text=True, check=True
        ).stdout
    )[0]
    assert link["stats64"]["tx"]["packets"] == 2000
