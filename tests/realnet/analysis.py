"""Run celltap over a test-bed capture: `celltap analyze`, by default with its built-in rules.

Theory of operation. `celltap analyze` runs what a cell runs (flow abstractor: reassembly,
classification) and every analyzer in one process, writing one JSON-lines log per kind (http.log ...
sip.log, conn.log, weird.log; docs/analyze.md). It runs with its built-in rules
(celltap/defaults/sftap.yaml: HTTP, TLS and SMTP by their first bytes, DNS and SIP by port), as an
operator would; REALNET_RULES=bed switches to the bed's port rules below (HTTP also on 80, TLS on
443/4433, SMTP on 25/587/2525), which do not classify a stream handed on after STARTTLS.
`celltap_records` returns every log's records; the adapters (tests/realnet/adapters.py) read them.
The cell alone (its text interface) is exercised by the stream comparison in tests/realnet/compare.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

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


# The built-in rules (celltap/defaults/sftap.yaml), as an operator runs `celltap analyze`; set
# REALNET_RULES=bed for the bed's own port rules above instead.
USE_BED_RULES = os.environ.get("REALNET_RULES") == "bed"


def config_args(tmp: Path) -> list[str]:
    """`--config FILE` with the bed's rules, or nothing (the built-in rules)."""
    if not USE_BED_RULES:
        return []
    config = tmp / "sftap.yaml"
    config.write_text(yaml.safe_dump(cell_config(tmp / "home")))
    return ["--config", str(config)]


def celltap_records(pcap: Path, tmp: Path) -> dict[str, list[dict]]:
    """Every analyzer's records for `pcap`: `celltap analyze` (cell + all analyzers in one process)."""
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    logs = tmp / "logs"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "celltap.cli", "analyze", str(pcap), *config_args(tmp), "-o", str(logs)],
        capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip
    (tmp / "analyze.err").write_text(proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"celltap analyze exited {proc.returncode}: {proc.stderr[-2000:]}")
    return read_logs(logs)


def read_logs(logs: Path) -> dict[str, list[dict]]:
    """The records of every log `celltap analyze` wrote into `logs` (a missing log: no records)."""
    records: dict[str, list[dict]] = {}
    for name in [*RULES, "conn", "weird"]:
        f = logs / f"{name}.log"
        records[name] = [json.loads(x) for x in f.read_text().splitlines() if x.strip()] if f.exists() else []
    return records
