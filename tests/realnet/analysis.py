"""Run celltap over a test-bed capture: `celltap cell --read` + one `celltap analyzer` process per protocol.

Theory of operation. The real path, as an operator runs it: the cell reads the pcap, classifies flows
by the rules below (ports for DNS/TLS/SMTP/SIP, the request line for HTTP) and writes each flow's
events to the analyzer's UNIX interface; each analyzer process writes JSON lines. `celltap_records`
returns every analyzer's records. When `celltap analyze` (one process, all analyzers) lands, this is
the one function to switch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.analyzers.harness import analyzer_cmd

REPO = Path(__file__).resolve().parents[2]

# analyzer -> (proto, ports or None, request-line regex or None); HTTP by port 80 and by request syntax
# (any port), the others by the test bed's ports (s_server listens on 4433, postfix also on 2525).
RULES: dict[str, list[tuple[str, str | None, str | None]]] = {
    "http": [("TCP", "80", None), ("TCP", None, r"^[-a-zA-Z]+ \S+ HTTP/1\.[01]\r?\n")],
    "dns": [("UDP", "53", None), ("TCP", "53", None)],
    "tls": [("TCP", "443,4433", None)],
    "smtp": [("TCP", "25,587,2525", None)],
    "sip": [("UDP", "5060", None), ("TCP", "5060", None)],
}


def cell_config(home: Path, fmt: str = "binary") -> dict:
    """An SF-TAP configuration sending each protocol's flows to its analyzer's interface."""
    cfg: dict = {"global": {"home": str(home), "timeout": 60}}
    for name, rules in RULES.items():
        for i, (proto, port, up) in enumerate(rules):
            rule: dict = {"proto": proto, "if": name, "format": fmt, "body": "yes", "nice": 100 if up else 10}
            if port:
                rule["port"] = port
            if up:
                rule["up"] = up
            cfg[f"{name}{i}"] = rule
    return cfg


def celltap_records(pcap: Path, tmp: Path, fmt: str = "binary") -> dict[str, list[dict]]:
    """Every analyzer's records for `pcap` (the cell and analyzers as separate processes)."""
    if tmp.exists():
        shutil.rmtree(tmp)  # analyzers append to --out: start from nothing
    tmp.mkdir(parents=True)
    home = tmp / "home"
    config = tmp / "sftap.yaml"
    config.write_text(yaml.safe_dump(cell_config(home, fmt)))
    sockets = sorted(
        {(name, f"{proto.lower()}/{name}") for name, rules in RULES.items() for proto, *_ in rules}
    )
    outs = [tmp / f"{s.replace('/', '-')}.jsonl" for _, s in sockets]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    errs = [tmp / f"{s.replace('/', '-')}.err" for _, s in sockets]
    analyzers = []
    for (name, s), o, e in zip(sockets, outs, errs, strict=True):
        with e.open("w") as fh:
            cmd = analyzer_cmd(name, str(home / s), str(o), fmt, "--exit-on-eof")
            analyzers.append(subprocess.Popen(cmd, stderr=fh, env=env))
    try:
        cell = subprocess.run(
            [sys.executable, "-m", "celltap.cli", "cell", "--config", str(config), "--read", str(pcap),
             "--wait-readers", ",".join(s for _, s in sockets), "--wait-timeout", "30"],
            capture_output=True, text=True, timeout=180, env=env,
        )  # fmt: skip
        (tmp / "cell.err").write_text(cell.stderr)
        if cell.returncode != 0:
            raise RuntimeError(f"celltap cell exited {cell.returncode}: {cell.stderr[-2000:]}")
        for a, e in zip(analyzers, errs, strict=True):
            if a.wait(90) != 0:
                raise RuntimeError(f"analyzer exited {a.returncode}: {e.read_text()[-2000:]}")
    finally:
        for a in analyzers:
            if a.poll() is None:
                a.kill()
                a.wait(5)
    records: dict[str, list[dict]] = {name: [] for name in RULES}
    for (name, _), o in zip(sockets, outs, strict=True):
        if o.exists():
            records[name] += [json.loads(line) for line in o.read_text().splitlines() if line.strip()]
    return records
