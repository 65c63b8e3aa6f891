"""The `celltap analyzer` command: metrics over HTTP, clean SIGTERM, and balance mode restarting a
SIGKILLed child without losing its interface."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from tests.analyzers import traffic
from tests.analyzers.pcapgen import Conversation
from tests.analyzers.streams import event_stream


class FakeCell:
    """A listening interface that sends payloads[i] to its i-th reader and keeps the connection open."""

    def __init__(self, path: str, payloads: list[bytes]) -> None:
        self.payloads = payloads
        self.accepted = 0
        self.conns: list[socket.socket] = []
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(4)
        self.srv.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.srv.accept()
            except TimeoutError:
                continue
            payload = self.payloads[min(self.accepted, len(self.payloads) - 1)]
            self.accepted += 1
            try:
                conn.sendall(payload)
            except OSError:
                pass
            self.conns.append(conn)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        for c in self.conns:
            c.close()
        self.srv.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def _lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines()]


def _metric(text: str, name: str, labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(part in line for part in labels.split(",")):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_endpoint_and_clean_sigterm(tmp_path: Path) -> None:
    sock = str(tmp_path / "http")
    bad = Conversation("tcp", ("10.2.0.1", 40000), ("10.2.0.2", 80), [(True, b"NOT HTTP AT ALL\r\n\r\n")])
    cell = FakeCell(sock, [event_stream([bad, *traffic.http_conversations()])])
    out = tmp_path / "out.jsonl"
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celltap.cli",
            "analyzer",
            "http",
            "--socket",
            sock,
            "--out",
            str(out),
            "--metrics-port",
            str(port),
        ]
    )
    try:
        _wait(lambda: len(_lines(out)) >= 8)  # every exchange completes before the flow's DESTROYED
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert (
            _metric(body, "celltap_analyzer_parse_errors_total", 'analyzer="http",reason="bad_request_line"')
            == 1
        )
        assert _metric(body, "celltap_analyzer_records_written_total", 'analyzer="http"') == len(_lines(out))
        assert _metric(body, "celltap_analyzer_events_read_total", 'analyzer="http",event="CREATED"') == 6
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        cell.close()


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry))
    return kids


def test_balance_mode_restarts_a_killed_child(tmp_path: Path) -> None:
    prefix = str(tmp_path / "http")
    convs = traffic.http_conversations()
    # interface 0 serves flows 0-1 to its first reader and flows 2-3 to the reader that replaces it
    cell0 = FakeCell(prefix + "0", [event_stream(convs[0:2]), event_stream(convs[2:4])])
    cell1 = FakeCell(prefix + "1", [event_stream(convs[4:5])])
    out = tmp_path / "out.jsonl"
    sup = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celltap.cli",
            "analyzer",
            "http",
            "--socket-prefix",
            prefix,
            "--balance",
            "2",
            "--out",
            str(out),
        ]
    )
    try:
        _wait(lambda: len(_lines(out)) >= 5 and cell0.accepted == 1 and cell1.accepted == 1)
        kids = _children(sup.pid)
        assert len(kids) == 2
        victim = next(k for k in kids if prefix + "0" in open(f"/proc/{k}/cmdline").read().replace("\0", " "))
        os.kill(victim, signal.SIGKILL)
        _wait(lambda: cell0.accepted == 2)
        _wait(lambda: len(_lines(out)) >= 8)
        uris = sorted(r["uri"] for r in _lines(out))
        assert uris == sorted(
            ["/index.html", "/style.css", "/a", "/b", "/upload", "/upload/1", "/old", "/form"]
        )
        assert len(_children(sup.pid)) == 2 and victim not in _children(sup.pid)
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(15) == 0
        assert _children(sup.pid) == []
    finally:
        if sup.poll() is None:
            sup.kill()
        cell0.close()
        cell1.close()
