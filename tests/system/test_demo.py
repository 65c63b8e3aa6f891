"""`celltap demo` as a new user runs it: finishes in time, its summary agrees with the analyzers'
JSON files and with tshark's reading of the generated capture, and nothing is left running."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from celltap.launcher.summary import dns_names, http_hosts, read_records, tls_server_names
from tests.conftest import require_tool
from tests.system.cluster_proc import CELLTAP, ROOT, pids_alive


def tshark_set(tshark: str, pcap: Path, display_filter: str, field: str) -> set[str]:
    """Distinct values of one field over the frames matching a display filter."""
    out = subprocess.run(
        [tshark, "-r", str(pcap), "-Y", display_filter, "-T", "fields", "-e", field],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return {v for line in out.splitlines() for v in line.split(",") if v}


def component_pids(run: Path) -> list[int]:
    return [c["pid"] for c in json.loads((run / "endpoints.json").read_text())["components"]]


@pytest.mark.timeout(200)
def test_demo_summary_agrees_with_outputs_and_tshark() -> None:
    tshark = require_tool("tshark")
    run = Path(tempfile.mkdtemp(prefix="ctd-", dir="/tmp"))
    t0 = time.monotonic()
    proc = subprocess.run(
        [*CELLTAP, "demo", "--flows", "400", "--seed", "5", "--json", "--run-dir", str(run)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert elapsed < 120, f"demo took {elapsed:.0f} s"
    s = json.loads(proc.stdout)
    assert "feeding [" in proc.stderr and "100%" in proc.stderr  # the progress bar
    assert str(run / "logs") in proc.stderr and str(run / "out") in proc.stderr

    # The summary is what the analyzers wrote ...
    files = sorted((run / "out").glob("*.jsonl"))
    assert len(files) == 3 * 6
    recs = {
        kind: [r for f in files if f.name.split("-")[2] == kind for r in read_records(f)]
        for kind in ("http", "dns", "tls")
    }
    assert set(s["http_hosts"]) == http_hosts(recs["http"])
    assert set(s["dns_names"]) == dns_names(recs["dns"])
    assert set(s["tls_server_names"]) == tls_server_names(recs["tls"])
    # ... spread over every cell ...
    assert sorted(s["cells"]) == ["0", "1", "2"] and all(c["packets"] > 0 for c in s["cells"].values())
    # ... and what tshark finds in the generated capture.
    pcap = run / "traffic.pcap"
    assert set(s["http_hosts"]) == tshark_set(tshark, pcap, "http.request", "http.host")
    assert set(s["dns_names"]) == tshark_set(tshark, pcap, "dns && !mdns", "dns.qry.name") | tshark_set(
        tshark, pcap, "mdns", "dns.qry.name"
    )
    assert set(s["tls_server_names"]) == tshark_set(
        tshark, pcap, "tls.handshake.type == 1", "tls.handshake.extensions_server_name"
    )
    # one message per DATA command the clients sent (the demo's SMTP servers accept every one)
    datas = tshark_set(tshark, pcap, 'smtp.req.command == "DATA"', "frame.number")
    assert s["smtp_messages"] == len(datas) > 0
    frames = int(
        subprocess.run(["capinfos", "-c", "-M", "-T", str(pcap)], capture_output=True, text=True, check=True)
        .stdout.splitlines()[-1]
        .split("\t")[-1]
    )
    assert s["frames_fed"] == frames
    assert sum(c["packets"] for c in s["cells"].values()) == frames
    # Every flow ends in one IPFIX record, and every record reached the collector.
    assert s["ipfix_records"] == sum(c["flows"] for c in s["cells"].values())
    assert s["app_mix"] and s["top_talkers"]
    # The only non-zero drop counters are bytes no rule sends anywhere (ssh, icmp, ... by design).
    assert {m for _c, m, _v in s["drops"]} <= {"celltap_cell_unrouted_bytes_total"}
    assert not pids_alive(component_pids(run))
    shutil.rmtree(run)


@pytest.mark.timeout(120)
def test_demo_ctrl_c_stops_everything() -> None:
    run = Path(tempfile.mkdtemp(prefix="ctd-", dir="/tmp"))
    err = run / "stderr.log"
    with open(err, "wb") as fh:
        proc = subprocess.Popen(
            [*CELLTAP, "demo", "--flows", "6000", "--run-dir", str(run)],
            stdout=subprocess.DEVNULL,
            stderr=fh,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + 90
        while "feeding [" not in err.read_text(errors="replace"):
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.2)
        pids = component_pids(run)
        assert pids_alive(pids)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "stopping every process" in err.read_text()
    time.sleep(0.5)
    assert not pids_alive(pids), f"left running: {pids_alive(pids)}"
    shutil.rmtree(run)


@pytest.mark.timeout(200)
def test_demo_from_a_fresh_clone(tmp_path: Path) -> None:
    """What a new user gets: the committed tree alone (no working-tree files) runs the demo in time.

    A fresh clone has no virtualenv; `scripts/demo.sh` would create one from PyPI, which a test
    must not depend on, so the clone runs with this interpreter, its own sources first on the path."""
    git = require_tool("git")
    clone = tmp_path / "celltap"
    subprocess.run([git, "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    env = {**os.environ, "PYTHONPATH": str(clone)}
    where = subprocess.run([sys.executable, "-c", "import celltap.demo; print(celltap.demo.__file__)"],
                           capture_output=True, text=True, cwd=clone, env=env, check=True).stdout  # fmt: skip
    assert where.startswith(str(clone)), where
    run = Path(tempfile.mkdtemp(prefix="ctf-", dir="/tmp"))
    t0 = time.monotonic()
    argv = [sys.executable, "-m", "celltap.cli", "demo", "--flows", "200", "--run-dir", str(run)]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=clone, env=env, timeout=180)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert elapsed < 120, f"demo took {elapsed:.0f} s"
    for heading in ("HTTP hosts", "DNS names", "TLS SNI", "top talkers", "app mix", "drops"):
        assert heading in proc.stdout, proc.stdout
    assert not pids_alive(component_pids(run))
    shutil.rmtree(run)
