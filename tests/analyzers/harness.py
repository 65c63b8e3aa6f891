"""Run a real analyzer process against a real UNIX socket that serves a recorded event stream."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path


def serve_stream(path: str, payload: bytes, connections: int = 1) -> threading.Thread:
    """Listen on `path`; send `payload` to each of `connections` readers in turn, then close."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)

    def run() -> None:
        try:
            for _ in range(connections):
                conn, _ = srv.accept()
                with conn:
                    conn.sendall(payload)
        finally:
            srv.close()
            os.unlink(path)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def analyzer_cmd(name: str, sock: str, out: str, fmt: str = "text", *extra: str) -> list[str]:
    """Command line of `celltap analyzer`."""
    return [
        sys.executable,
        "-m",
        "celltap.cli",
        "analyzer",
        name,
        "--socket",
        sock,
        "--format",
        fmt,
        "--out",
        out,
        *extra,
    ]


def run_analyzer(name: str, payload: bytes, tmp: Path, fmt: str = "text") -> list[dict]:
    """Feed `payload` to `celltap analyzer NAME` over a UNIX socket and return its JSON records."""
    sock = str(tmp / f"{name}.sock")
    out = tmp / f"{name}.jsonl"
    th = serve_stream(sock, payload)
    proc = subprocess.run(
        analyzer_cmd(name, sock, str(out), fmt, "--exit-on-eof"), capture_output=True, text=True, timeout=120
    )
    th.join(10)
    assert proc.returncode == 0, proc.stderr
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines()]


def tshark_fields(pcap: str, display_filter: str, fields: list[str]) -> list[dict[str, list[str]]]:
    """tshark -T fields output as one dict per packet; multi-valued fields split on the aggregator.

    `ip.src` / `ip.dst` also cover IPv6 (taken from `ipv6.src` / `ipv6.dst` when the packet has no IPv4).
    """
    asked = fields
    fields = fields + [f.replace("ip.", "ipv6.") for f in fields if f in ("ip.src", "ip.dst")]
    cmd = [
        "tshark",
        "-r",
        pcap,
        "-n",
        "-Y",
        display_filter,
        "-T",
        "fields",
        "-E",
        "separator=\x1e",
        "-E",
        "aggregator=\x1f",
        "-E",
        "occurrence=a",
    ]
    for f in fields:
        cmd += ["-e", f]
    text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = []
    for line in text.split("\n"):
        if not line:
            continue
        values = line.split("\x1e")
        row = {f: (v.split("\x1f") if v else []) for f, v in zip(fields, values, strict=False)}
        for f in ("ip.src", "ip.dst"):
            if f in asked and not row.get(f):
                row[f] = row.get(f.replace("ip.", "ipv6."), [])
        rows.append({f: row.get(f, []) for f in asked})
    return rows
