"""Event conformance and classification on loadgen scenarios, through the real `celltap cell` process.

A plain socket reader on every interface sees, per TCP flow, CREATED, then DATA, then DESTROYED with
the reason the capture implies (tshark tells us where RSTs and FINs are); headers parse with strict
parsers of SF-TAP's text and binary formats (tests/cell/wire.py). Flows land on the interface of their
protocol: BitTorrent tracker requests on torrent_tracker (nice 90) rather than http (nice 100), DNS by
port alone.
"""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

import pytest
from celltap.cell.sftap_config import load_config

from celltap.pcap import PcapWriter
from tests.cell.runner import run_cell
from tests.cell.wire import parse_binary, parse_text
from tests.conftest import require_tool

FIXTURES = Path(__file__).parent / "fixtures"
SCENARIOS = {
    # scenario: interfaces its TCP / UDP flows must reach (balanced http0..3 count as http)
    "http": {"tcp/http"},
    "torrent_tracker": {"tcp/torrent_tracker"},
    "tls": {"tcp/tls"},
    "ssh": {"tcp/ssh"},
    "smtp": {"tcp/smtp"},
    "dns": {"udp/dns", "tcp/dns"},
    "sip": {"udp/sip"},
    "tcpfaults": None,
    "ipv6": None,
    "vlan": None,
    "frag": None,
    "mixed": None,
    "icmp": None,
    "small": None,
    "cps": {"tcp/default"},  # a GET never answered: the http rule also needs the down regex
}


def _config(tmp: Path, home: Path) -> Path:
    text = (FIXTURES / "cell_full.yaml").read_text().replace("home:    /tmp/sf-tap", f"home:    {home}")
    p = tmp / "cell.yaml"
    p.write_text(text)
    return p


def _interfaces(cfg_path: Path) -> dict[str, str]:
    """Every output interface of the config -> its format."""
    from celltap.cell.abstractor import Abstractor

    a = Abstractor(load_config(cfg_path))
    return {name: s.fmt for name, s in a.sinks.items()}


def _truth(tshark: str, pcap: Path) -> dict[tuple, str]:
    """Expected DESTROYED reason per canonical TCP flow, from tshark's view of RST and FIN."""
    out = subprocess.run(
        [
            tshark,
            "-r",
            str(pcap),
            "-Y",
            "tcp",
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "ip.src",
            "-e",
            "ipv6.src",
            "-e",
            "tcp.srcport",
            "-e",
            "ip.dst",
            "-e",
            "ipv6.dst",
            "-e",
            "tcp.dstport",
            "-e",
            "tcp.flags.reset",
            "-e",
            "tcp.flags.fin",
            "-e",
            "tcp.flags.syn",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    state: dict[tuple, dict] = {}
    for line in out.splitlines():
        s4, s6, sp, d4, d6, dp, rst, fin, syn = line.split("|")
        src = (s4 or s6).split(",")[-1]
        dst = (d4 or d6).split(",")[-1]
        a = (ipaddress.ip_address(src).packed, int(sp))
        b = (ipaddress.ip_address(dst).packed, int(dp))
        key = (a, b) if a <= b else (b, a)
        key = (
            str(ipaddress.ip_address(key[0][0])),
            key[0][1],
            str(ipaddress.ip_address(key[1][0])),
            key[1][1],
        )
        st = state.setdefault(key, {"fin": set(), "reason": None, "syn": False})
        if syn in ("1", "True"):
            st["syn"] = True
        if st["reason"]:
            continue
        if rst in ("1", "True"):
            st["reason"] = "RESET"
        elif fin in ("1", "True"):
            st["fin"].add(a)
            if len(st["fin"]) == 2:
                st["reason"] = "NORMAL"
    # midstream pickup is the default: flows whose SYN the capture lacks are reported too
    return {k: (v["reason"] or "TIMEOUT") for k, v in state.items()}


@pytest.fixture(scope="module", params=list(SCENARIOS))
def scenario_run(request, tmp_path_factory):
    import celltap.loadgen.scenarios  # noqa: F401
    from celltap.loadgen.scenario import get

    tmp = tmp_path_factory.mktemp(request.param)
    pcap = tmp / "in.pcap"
    with PcapWriter(str(pcap), nanosecond=True) as w:
        for ts, frame in get(request.param).generate(11, 25):
            w.write(ts, frame)
    home = tmp / "home"
    cfg = _config(tmp, home)
    ifaces = _interfaces(cfg)
    proc, out = run_cell(cfg, pcap, home, list(ifaces))
    assert proc.returncode == 0, proc.stderr
    events = {}
    for name, data in out.items():
        events[name] = parse_text(data) if ifaces[name] == "text" else parse_binary(data)
    return request.param, pcap, events


@pytest.mark.tshark
def test_event_sequences(scenario_run):
    tshark = require_tool("tshark")
    _name, pcap, events = scenario_run
    truth = _truth(tshark, pcap)
    seen_tcp = 0
    for iface, evs in events.items():
        per_flow: dict[tuple, list] = {}
        for e in evs:
            per_flow.setdefault(e.flow, []).append(e)
        for flow, fe in per_flow.items():
            times = [e.time for e in fe]
            assert times == sorted(times), f"{iface} {flow}: events out of time order"
            if flow[6] != "tcp":
                assert all(e.event == "DATA" for e in fe), f"{iface}: UDP/ICMP flows carry DATA only"
                continue
            seen_tcp += 1
            kinds = [e.event for e in fe]
            assert kinds[0] == "CREATED" and kinds[-1] == "DESTROYED", (
                f"{iface} {flow}: {kinds[:3]}..{kinds[-2:]}"
            )
            assert set(kinds[1:-1]) <= {"DATA"}, f"{iface} {flow}: one CREATED, one DESTROYED"
            assert fe[-1].reason == truth[flow[:4]], f"{iface} {flow}"
            rule_has_regex = iface.split("/")[1].rstrip("0123456789") in (
                "http",
                "torrent_tracker",
                "tls",
                "ssh",
                "smtp",
            )
            matches = {e.match for e in fe if e.event == "DATA"}
            if rule_has_regex:
                assert matches <= {"up", "down"} and matches, f"{iface}: regex rules report up/down"
            else:
                assert matches <= {"none"}
    assert seen_tcp == len(truth), "every TCP flow is reported exactly once"


def test_classification(scenario_run):
    name, _pcap, events = scenario_run
    expected = SCENARIOS[name]
    if expected is None:
        pytest.skip(f"{name} mixes protocols; its streams are checked by test_event_sequences")
    reached = {iface.rstrip("0123456789") for iface, evs in events.items() if evs}
    assert reached == expected, f"{name} flows went to {reached}"
    if name == "http":
        used = {iface for iface, evs in events.items() if evs}
        assert len(used) >= 2, "balance: 4 spreads flows over http0..http3"
    if name == "dns":
        udp = [e for e in events["udp/dns"] if e.event == "DATA"]
        assert udp and all(e.match == "none" for e in udp), "DNS is classified by port alone"
