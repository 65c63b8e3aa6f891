"""`celltap loadgen` as a user runs it: list, pcap to file and stdout, pcapng, errors, speed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from celltap.loadgen.scenario import all_scenarios, get

from celltap.pcap import open_capture, read_all
from tests.conftest import require_tool


def celltap(*args: str, **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "celltap.cli", "loadgen", *args], capture_output=True, timeout=120, **kw
    )  # type: ignore[call-overload]


def test_list_names_every_scenario() -> None:
    out = celltap("list").stdout.decode()
    listed = {line.split()[0] for line in out.splitlines()}
    assert listed == {sc.name for sc in all_scenarios()}
    assert all("--count = " in line for line in out.splitlines())


def test_pcap_file_stdout_and_pcapng_agree(tmp_path: Path) -> None:
    f = tmp_path / "a.pcap"
    assert celltap("pcap", "dns", str(f), "--count", "12", "--seed", "4").returncode == 0
    stdout = celltap("pcap", "dns", "-", "--count", "12", "--seed", "4").stdout
    assert stdout == f.read_bytes()
    g = tmp_path / "a.pcapng"
    assert (
        celltap("pcap", "dns", str(g), "--count", "12", "--seed", "4", "--pcapng", "--nanosecond").returncode
        == 0
    )
    a, b = read_all(str(f)), read_all(str(g))
    assert a[0].frames_bytes() == b[0].frames_bytes()
    # microsecond pcap truncates; the pcapng keeps nanoseconds
    assert list(a[0].ts_ns) == [t - t % 1000 for t in b[0].ts_ns]
    capinfos = require_tool("capinfos")
    info = subprocess.run([capinfos, str(g)], capture_output=True, text=True, check=True).stdout
    assert "pcapng" in info and "nanoseconds" in info.lower()


def test_bad_scenario_and_flows_are_clear_errors(tmp_path: Path) -> None:
    r = celltap("pcap", "nope", str(tmp_path / "x.pcap"))
    assert r.returncode == 2 and b"unknown scenario 'nope'" in r.stderr
    r = celltap("pcap", "dns", str(tmp_path / "x.pcap"), "--flows", "3")
    assert r.returncode == 2 and b"does not take --flows" in r.stderr


def test_ipfix_subcommand_is_listed() -> None:
    r = celltap("--help")
    assert b"ipfix" in r.stdout


def test_small_generates_and_writes_100k_frames(tmp_path: Path) -> None:
    # Counts only: how fast loadgen is belongs to bench/ (a timed assertion fails on a loaded machine).
    assert sum(1 for _ in get("small").generate(1, 100_000)) == 100_000
    out = tmp_path / "s.pcap"
    assert celltap("pcap", "small", str(out), "--count", "100000").returncode == 0
    with open_capture(str(out)) as r:
        assert sum(len(b) for b in r) == 100_000
