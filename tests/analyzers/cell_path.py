"""The real path: pcap -> `celltap cell --read` -> UNIX interfaces -> `celltap analyzer` processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.analyzers.harness import analyzer_cmd

# rule name -> (proto, port or None, up regex or None, down regex or None); interfaces are named
# after the analyzer so that UDP and TCP DNS land on udp/dns and tcp/dns.
RULES = {
    # Request syntax only: the analyzers' tests classify on the request; the cell's own tests cover
    # request + response rules (tests/cell/test_core.py, a POST larger than the window).
    "http": [
        (
            "TCP",
            None,
            r"^(?:[-a-zA-Z]+ (?:[^\r\n]* )?HTTP/1\.[01]|GET /\S*"
            r"|[\r\n]+[-a-zA-Z]+ (?:[^\r\n]* )?HTTP/1\.[01])\r?\n",
            None,
        )
    ],
    "dns": [("UDP", "53", None, None), ("TCP", "53", None, None)],
    "tls": [("TCP", "443", None, None)],
    "smtp": [("TCP", "25,587", None, None)],
    "sip": [("UDP", "5060", None, None), ("TCP", "5060", None, None)],
}


def cell_config(names: list[str], home: Path, fmt: str) -> dict:
    """An SF-TAP configuration with the rules that send each analyzer's traffic to its interface(s)."""
    cfg: dict = {"global": {"home": str(home), "timeout": 60}}
    for name in names:
        for i, (proto, port, up, down) in enumerate(RULES[name]):
            # port rules first, the payload-regex HTTP rule last (SF-TAP's `nice`: lower wins)
            rule: dict = {"proto": proto, "if": name, "format": fmt, "body": "yes", "nice": 100 if up else 10}
            if port:
                rule["port"] = port
            if up:
                rule["up"] = up
            if down:
                rule["down"] = down
            cfg[f"{name}{i}"] = rule
    return cfg


def cell_records_multi(names: list[str], pcap: str, tmp: Path, fmt: str) -> dict[str, list[dict]]:
    """Run the cell on `pcap` with one analyzer process per interface; return each analyzer's records."""
    home = tmp / "home"
    config = tmp / "sftap.yaml"
    config.write_text(yaml.safe_dump(cell_config(names, home, fmt)))
    sockets = sorted({(name, f"{proto.lower()}/{name}") for name in names for proto, *_ in RULES[name]})
    outs = [tmp / f"{s.replace('/', '-')}.jsonl" for _, s in sockets]
    analyzers = [
        subprocess.Popen(
            analyzer_cmd(name, str(home / s), str(o), fmt, "--exit-on-eof"), stderr=subprocess.PIPE, text=True
        )
        for (name, s), o in zip(sockets, outs, strict=True)
    ]
    try:
        cell = subprocess.run(
            [
                sys.executable,
                "-m",
                "celltap.cli",
                "cell",
                "--config",
                str(config),
                "--read",
                pcap,
                "--wait-readers",
                ",".join(s for _, s in sockets),
                "--wait-timeout",
                "30",
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert cell.returncode == 0, cell.stderr[-2000:]
        for a in analyzers:
            assert a.wait(60) == 0, a.stderr.read()
    finally:
        for a in analyzers:
            if a.poll() is None:
                a.kill()
    records: dict[str, list[dict]] = {name: [] for name in names}
    for (name, _), o in zip(sockets, outs, strict=True):
        if o.exists():
            records[name] += [json.loads(line) for line in o.read_text().splitlines()]
    return records


def cell_records(name: str, pcap: str, tmp: Path, fmt: str) -> list[dict]:
    """Run the cell on `pcap` with `name`'s analyzer(s); return their records."""
    return cell_records_multi([name], pcap, tmp, fmt)[name]
