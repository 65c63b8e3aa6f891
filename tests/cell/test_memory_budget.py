"""Issue #15 item 3: the cell's defaults fit a 4 GiB pod (cell/memory_budget.py), proved on the real process.

The flood (crafted, bench/crafted_floods.talking_flows) is 16,000 IPv6 HTTP connections that open,
exchange a request and a response and stay open: every flow ends in the costliest state a live flow
has outside the capped buffers. The real `celltap cell` runs it with the Helm chart's default
configuration three times: max_flows 1 (the baseline: the same packets, decoded and refused),
max_flows 3,000, and room for all. Its peak RSS (VmHWM) gives the real memory per flow and of the
process; the worst case of the defaults is then recomputed from those measurements.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from celltap.cell.memory_budget import FLOW_MEMORY, HEADROOM, PROCESS, plan
from celltap.cell.sftap_config import ConfigError, parse_config

from bench.crafted_floods import talking_flows, write_raw_pcap
from tests.cell.test_memory_bounds import ALLOWANCE, MiB, _peak_rss

REPO = Path(__file__).resolve().parents[2]
GiB = 1 << 30
FLOWS = 16_000
PACKETS_PER_FLOW = 5  # talking_flows: SYN, SYN-ACK, ACK, request, response
CAPPED = 3_000


def chart_sftap_config() -> dict:
    """The cell configuration the Helm chart deploys by default (values.yaml, cells.sftapConfig)."""
    values = yaml.safe_load((REPO / "helm/celltap/values.yaml").read_text())
    return yaml.safe_load(values["cells"]["sftapConfig"])


def _config(tmp: Path, max_flows: int) -> Path:
    doc = chart_sftap_config()
    doc["global"] = {**(doc.get("global") or {}), "home": str(tmp / "home"), "max_flows": max_flows}
    p = tmp / "cell.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


@pytest.fixture(scope="module")
def flow_flood(tmp_path_factory) -> dict[str, tuple[int, dict]]:
    """Peak RSS and drops of the cell on the flood at max_flows 1, CAPPED and FLOWS."""
    tmp = tmp_path_factory.mktemp("flows")
    pcap = tmp / "flows.pcap"
    write_raw_pcap(str(pcap), talking_flows(FLOWS))
    out = {}
    for label, cap in (("base", 1), ("capped", CAPPED), ("all", FLOWS)):
        d = tmp / label
        d.mkdir()
        out[label] = _peak_rss(_config(d, cap), pcap, d / "home")
    return out


def _full(drops: dict) -> int:
    return drops["packets"].get("flow_table_full", 0)


def test_flow_cap_bounds_real_memory_crafted(flow_flood):
    """At max_flows = 3,000 the peak RSS stays within baseline + 3,000 x FLOW_MEMORY + allowance, every
    packet of a refused flow is counted, and the same flood with room for all goes past that bound."""
    base, capped, everything = (flow_flood[k][0] for k in ("base", "capped", "all"))
    bound = base + CAPPED * FLOW_MEMORY + ALLOWANCE
    figures = f"peak {capped / MiB:.1f} MiB, baseline {base / MiB:.1f}, all flows {everything / MiB:.1f}"
    assert capped <= bound, figures
    assert everything > bound, "the flood is too small to prove the bound: " + figures
    # flows never end, so exactly the first max_flows are admitted and the others' packets refused
    assert _full(flow_flood["capped"][1]) == (FLOWS - CAPPED) * PACKETS_PER_FLOW
    assert _full(flow_flood["base"][1]) == (FLOWS - 1) * PACKETS_PER_FLOW
    assert _full(flow_flood["all"][1]) == 0


def test_per_unit_bounds_hold_on_the_real_process_crafted(flow_flood):
    """The figures cell/memory_budget.py plans with are bounds of what the process really takes."""
    base, everything = flow_flood["base"][0], flow_flood["all"][0]
    per_flow = (everything - base) / (FLOWS - 1)
    assert per_flow <= FLOW_MEMORY, f"{per_flow:.0f} bytes of RSS per live flow"
    assert base <= PROCESS, f"baseline {base / MiB:.1f} MiB"


@pytest.mark.parametrize("config", ["chart", "bare"])
def test_default_worst_case_fits_a_4_gib_pod_crafted(flow_flood, config):
    """The defaults' worst case, recomputed from the measured baseline and per-flow memory (not the
    planning constants), fits 4 GiB less the headroom: flows x measured + baseline + every other cap."""
    base, everything = flow_flood["base"][0], flow_flood["all"][0]
    per_flow = (everything - base) / (FLOWS - 1)
    doc = chart_sftap_config() if config == "chart" else {"tcp_default": {"if": "default", "proto": "TCP"}}
    p = plan(parse_config(doc))
    others = p.total - p.parts["flows"] - p.parts["process"]
    worst = base + p.max_flows * per_flow + others
    limit = 4 * GiB * (1 - HEADROOM)
    assert worst <= limit, (
        f"max_flows {p.max_flows:,} x {per_flow:.0f} B + baseline {base / MiB:.0f} MiB + buffers "
        f"{others / MiB:.0f} MiB = {worst / MiB:.0f} MiB > {limit / MiB:.0f} MiB"
    )


# ---------------------------------------------------------------------- the budget's arithmetic
def test_unset_caps_follow_the_budget_and_explicit_ones_stay():
    g = parse_config({"global": {"memory_budget": 1 << 30}}).glob
    assert (g.defrag_memory, g.ooo_memory, g.classify_memory, g.reader_buffer) == (
        (1 << 30) // 64,
        (1 << 30) // 16,
        (1 << 30) // 16,
        (1 << 30) // 64,
    )
    g = parse_config({"global": {"memory_budget": 1 << 30, "ooo_memory": 12345}}).glob
    assert g.ooo_memory == 12345 and g.defrag_memory == (1 << 30) // 64


@pytest.mark.parametrize("budget", [512 << 20, 1 << 30, 4 << 30, 16 << 30])
def test_derived_flow_cap_fills_the_budget_and_no_more(budget):
    doc = chart_sftap_config()
    doc["global"] = {**(doc.get("global") or {}), "memory_budget": budget}
    p = plan(parse_config(doc))
    usable = budget * (1 - HEADROOM)
    assert p.total <= usable < p.total + FLOW_MEMORY  # one more flow would not fit


def test_a_budget_too_small_for_the_buffers_is_one_error_line(tmp_path):
    doc = {"global": {"memory_budget": 1 << 28, "ooo_memory": 1 << 30}}
    with pytest.raises(ConfigError, match=r"global\.memory_budget"):
        plan(parse_config(doc))
    cfg = tmp_path / "cell.yaml"
    cfg.write_text(f"global:\n  home: {tmp_path / 'home'}\n  ooo_memory: 1073741824\ntcp_default:\n  if: d\n")
    pcap = tmp_path / "empty.pcap"
    write_raw_pcap(str(pcap), [])
    cmd = [sys.executable, "-m", "celltap.cli", "cell", "--config", str(cfg), "--read", str(pcap)]
    proc = subprocess.run([*cmd, "--memory-budget", str(1 << 28)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "global.memory_budget" in lines[0], proc.stderr


# ---------------------------------------------------------------------- a live input at full tilt
def test_a_live_vxlan_input_stays_within_its_planned_buffers_crafted(tmp_path):
    """Three seconds of 64 KB VXLAN datagrams (each a UDP datagram of one flow; crafted) sent as fast
    as a socket sends them: the live cell's peak RSS grows by no more than INPUT_MEMORY less the
    kernel's socket buffer (the rows, a batch, its decoded copies and events)."""
    import re
    import socket
    import struct
    import time

    from celltap.cell.memory_budget import INPUT_KERNEL, INPUT_MEMORY

    from bench.crafted_floods import ipv4
    from tests.cell.runner import LiveCell, wait_for
    from tests.cluster.procs import free_port

    home = tmp_path / "home"
    cfg = tmp_path / "cell.yaml"
    cfg.write_text(f"global:\n  home: {home}\nudp_default:\n  if: udp\n  proto: UDP\n")
    port = free_port()
    cell = LiveCell(cfg, home, ["--input", f"vxlan://127.0.0.1:{port}"])

    def hwm() -> int:
        text = Path(f"/proc/{cell.proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) * 1024

    udp = struct.pack(">HHHH", 4000, 5000, 8 + 64_000, 0) + bytes(64_000)
    inner = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ipv4(b"\x0a\0\0\1", b"\x0a\0\0\2", 17, udp)
    datagram = b"\x08\0\0\0\0\0\0\0" + inner  # VXLAN, VNI 0
    try:
        wait_for(lambda: cell.metrics().get('celltap_cell_flows_live{cell="0"}') is not None, what="metrics")
        time.sleep(0.5)
        idle = hwm()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 3:
                for _ in range(64):
                    s.sendto(datagram, ("127.0.0.1", port))
        time.sleep(2)
        grown = hwm() - idle
        got = cell.metrics()['celltap_cell_input_frames_total{cell="0",time="receive"}']
    finally:
        cell.stop()
    assert got > 1000, "too few datagrams reached the cell to load its input"
    assert grown <= INPUT_MEMORY - INPUT_KERNEL, f"RSS grew {grown / MiB:.0f} MiB, {got:.0f} frames"
